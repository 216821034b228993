"""Asset resolution: precedence, cache, URL and Hub downloads, offline mode, error messages.

Nothing here reaches the internet: sockets may connect to the loopback address only, and the
Hugging Face Hub functions are replaced by fakes.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import pytest

from xbench_core.assets import asset_cache_path, resolve_asset, xbench_home
from xbench_core.errors import AssetError

NAME = "MedKLIP checkpoint"
ENV = "XBENCH_TEST_MEDKLIP"
OPTION = "medklip.checkpoint"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """A private XBENCH_HOME and HF cache, no offline flag, no non-loopback sockets, fake Hub."""
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    connects: list[Any] = []
    real_connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: Any) -> Any:
        connects.append(address)
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)

    calls: dict[str, list[Any]] = {"hub": [], "snapshot": [], "connect": connects, "unexpected": []}

    def no_hub(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the (empty) test cache")
        calls["unexpected"].append((args, kwargs))
        raise AssertionError(f"unexpected Hub download {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    return calls


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fake_hub_download(calls: list[dict[str, Any]], content: str = "hub weights") -> Any:
    def download(
        repo_id: str, filename: str, *, revision: Any = None, local_dir: Any = None
    ) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, "local_dir": Path(local_dir)})
        return str(write(Path(local_dir) / filename, content))

    return download


# --------------------------------------------------------------------------------------------------
# Precedence


def test_precedence_given_env_cache_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = write(tmp_path / "given.pth", "given")
    from_env = write(tmp_path / "env.pth", "env")
    source = write(tmp_path / "server" / "weights.pth", "downloaded")
    url = source.as_uri()
    cached = write(asset_cache_path(NAME, url=url), "cached")
    monkeypatch.setenv(ENV, str(from_env))

    def resolve(given_path: Path | None) -> Path:
        return resolve_asset(NAME, given_path, env=ENV, url=url, option=OPTION)

    assert resolve(given) == given.resolve()
    assert resolve(None) == from_env.resolve()
    monkeypatch.delenv(ENV)
    assert resolve(None) == cached.resolve()
    assert cached.read_text() == "cached"
    cached.unlink()
    assert resolve(None) == cached.resolve()
    assert cached.read_text() == "downloaded"


def test_empty_env_var_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = write(asset_cache_path(NAME, filename="ckpt.pth"), "cached")
    monkeypatch.setenv(ENV, "")
    assert resolve_asset(NAME, env=ENV, filename="ckpt.pth") == cached.resolve()


def test_given_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    write(asset_cache_path(NAME, filename="ckpt.pth"), "cached")  # never used instead
    with pytest.raises(AssetError) as caught:
        resolve_asset(NAME, tmp_path / "weights" / "ckpt.pth", filename="ckpt.pth", option=OPTION)
    message = str(caught.value)
    assert f"--set {OPTION}" in message and "does not exist" in message
    assert str(tmp_path / "weights" / "ckpt.pth") in message


def test_env_path_that_does_not_exist_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "/nowhere/ckpt.pth")
    with pytest.raises(AssetError, match=f"environment variable {ENV} is /nowhere/ckpt.pth"):
        resolve_asset(NAME, env=ENV, hub_repo="owner/repo", filename="ckpt.pth")


def test_given_folder_holding_the_file(tmp_path: Path) -> None:
    weights = write(tmp_path / "release" / "ckpt.pth", "w")
    assert resolve_asset(NAME, tmp_path / "release", filename="ckpt.pth") == weights.resolve()
    with pytest.raises(AssetError, match="a folder; MedKLIP checkpoint is a file"):
        resolve_asset(NAME, tmp_path / "release", filename="other.pth")
    with pytest.raises(AssetError, match="a file; vocab is a folder"):
        resolve_asset("vocab", weights, folder=True)
    assert resolve_asset("vocab", tmp_path / "release", folder=True) == weights.parent.resolve()


# --------------------------------------------------------------------------------------------------
# URL downloads


def test_file_url_download_with_sha256_and_cache_hit(tmp_path: Path) -> None:
    source = write(tmp_path / "server" / "ckpt.pth", "weights v1")

    path = resolve_asset(NAME, url=source.as_uri(), sha256=sha("weights v1").upper())

    assert path == asset_cache_path(NAME, url=source.as_uri()).resolve()
    assert path.is_relative_to(xbench_home()) and path.read_text() == "weights v1"
    source.unlink()  # a second resolution must not need the source
    assert resolve_asset(NAME, url=source.as_uri(), sha256=sha("weights v1")) == path


def test_cached_file_with_wrong_hash_is_downloaded_again(tmp_path: Path) -> None:
    source = write(tmp_path / "server" / "ckpt.pth", "good")
    stale = write(asset_cache_path(NAME, url=source.as_uri()), "stale")
    assert resolve_asset(NAME, url=source.as_uri(), sha256=sha("good")).read_text() == "good"
    assert stale.read_text() == "good"


def test_file_url_with_wrong_sha256_leaves_nothing(tmp_path: Path) -> None:
    source = write(tmp_path / "server" / "ckpt.pth", "tampered")
    with pytest.raises(AssetError) as caught:
        resolve_asset(NAME, url=source.as_uri(), sha256=sha("original"), option=OPTION)
    message = str(caught.value)
    assert sha("original") in message and sha("tampered") in message
    assert f"--set {OPTION}=PATH" in message
    folder = asset_cache_path(NAME, url=source.as_uri()).parent
    assert list(folder.iterdir()) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on 127.0.0.1 serving a temporary folder, shut down after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_download_correct_and_wrong_sha256(http_root: tuple[Path, str]) -> None:
    root, base = http_root
    write(root / "vocab.txt", "[PAD]\n[CLS]\n")

    path = resolve_asset("KAD vocabulary", url=f"{base}/vocab.txt", sha256=sha("[PAD]\n[CLS]\n"))
    assert path.read_text() == "[PAD]\n[CLS]\n"
    assert path == asset_cache_path("KAD vocabulary", url=f"{base}/vocab.txt").resolve()

    write(root / "other.txt", "changed upstream")
    with pytest.raises(AssetError, match="SHA-256 .* expected .*deleted"):
        resolve_asset("KAD labels", url=f"{base}/other.txt", sha256=sha("as published"))
    assert list(asset_cache_path("KAD labels", url=f"{base}/other.txt").parent.iterdir()) == []


def test_http_failure_gives_reason_and_offline_hint(http_root: tuple[Path, str]) -> None:
    _, base = http_root
    with pytest.raises(AssetError) as caught:
        resolve_asset(NAME, url=f"{base}/missing.pth", env=ENV, option=OPTION)
    message = str(caught.value)
    assert "could not download MedKLIP checkpoint" in message and "404" in message
    assert "HF_HUB_OFFLINE=1" in message and ENV in message and f"--set {OPTION}" in message


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub


def test_hub_download_into_cache_then_cache_hit(
    monkeypatch: pytest.MonkeyPatch, isolated: dict[str, list[Any]]
) -> None:
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub_download(isolated["hub"]))

    first = resolve_asset(NAME, hub_repo="owner/medklip", filename="ckpt/model.pth")
    again = resolve_asset(NAME, hub_repo="owner/medklip", filename="ckpt/model.pth")

    assert first == again and first.read_text() == "hub weights"
    assert len(isolated["hub"]) == 1
    call = isolated["hub"][0]
    assert (call["repo_id"], call["filename"]) == ("owner/medklip", "ckpt/model.pth")
    assert call["local_dir"].is_relative_to(xbench_home())
    assert first == (call["local_dir"] / "ckpt" / "model.pth").resolve()


def test_given_hub_id_replaces_the_default_repository(
    monkeypatch: pytest.MonkeyPatch, isolated: dict[str, list[Any]]
) -> None:
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub_download(isolated["hub"]))
    write(asset_cache_path(NAME, hub_repo="default/repo", filename="model.pth"), "default")

    path = resolve_asset(
        NAME, "someone/finetuned", hub_repo="default/repo", filename="model.pth", revision="abc123"
    )

    assert [c["repo_id"] for c in isolated["hub"]] == ["someone/finetuned"]
    assert path.read_text() == "hub weights"
    assert (
        resolve_asset(NAME, hub_repo="default/repo", filename="model.pth").read_text() == "default"
    )


def test_hub_file_already_in_the_users_hf_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    existing = write(tmp_path / "hf" / "model.pth", "from hf cache")
    seen: list[tuple[str, str]] = []

    def lookup(repo_id: str, filename: str, **kwargs: Any) -> str:
        seen.append((repo_id, filename))
        return str(existing)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lookup)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_asset(NAME, hub_repo="owner/repo", filename="model.pth") == existing
    assert seen == [("owner/repo", "model.pth")]


def test_hub_folder_snapshot(
    monkeypatch: pytest.MonkeyPatch, isolated: dict[str, list[Any]]
) -> None:
    def snapshot(
        repo_id: str, *, revision: Any = None, local_dir: Any = None, **kwargs: Any
    ) -> str:
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        isolated["snapshot"].append((repo_id, revision))
        write(Path(local_dir) / "config.json", "{}")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)

    folder = resolve_asset("BiomedCLIP", hub_repo="microsoft/BiomedCLIP", revision="v1.0")
    again = resolve_asset("BiomedCLIP", hub_repo="microsoft/BiomedCLIP", revision="v1.0")

    assert folder == again and (folder / "config.json").is_file()
    assert isolated["snapshot"] == [("microsoft/BiomedCLIP", "v1.0")]


def test_hub_failure_gives_reason_and_how_to_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    with pytest.raises(AssetError) as caught:
        resolve_asset(NAME, env=ENV, hub_repo="owner/repo", filename="m.pth", option=OPTION)
    message = str(caught.value)
    assert "ConnectionError: Name or service not known" in message
    assert "file m.pth of the Hugging Face Hub repository owner/repo" in message
    assert f"--set {OPTION}=PATH" in message and f"{ENV}=PATH" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_offline_gives_clear_error_without_network(
    monkeypatch: pytest.MonkeyPatch, isolated: dict[str, list[Any]], tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError) as caught:
        resolve_asset(NAME, env=ENV, hub_repo="owner/medklip", filename="m.pth", option=OPTION)
    message = str(caught.value)
    assert "HF_HUB_OFFLINE=1" in message and "owner/medklip" in message
    assert f"--set {OPTION}=PATH" in message and f"environment variable {ENV}=PATH" in message
    assert str(asset_cache_path(NAME, hub_repo="owner/medklip", filename="m.pth")) in message

    with pytest.raises(AssetError, match="HF_HUB_OFFLINE=1 forbids downloading"):
        resolve_asset(NAME, url="http://127.0.0.1:9/m.pth")
    assert isolated["unexpected"] == [] and isolated["connect"] == []

    # A file:// URL is no network access and still works offline.
    source = write(tmp_path / "mirror" / "m.pth", "local mirror")
    assert resolve_asset(NAME, url=source.as_uri()).read_text() == "local mirror"


def test_no_source_error_names_option_env_and_hint() -> None:
    with pytest.raises(AssetError) as caught:
        resolve_asset(
            "DeViDe checkpoint",
            env="XBENCH_DEVIDE",
            filename="devide.pth",
            option="devide.checkpoint",
            hint="the Google Drive link in the DeViDe README",
        )
    message = str(caught.value)
    assert message.startswith("DeViDe checkpoint is not available: it was not given")
    assert "--set devide.checkpoint=PATH" in message and "XBENCH_DEVIDE=PATH" in message
    assert "XBench cannot download DeViDe checkpoint itself (the Google Drive link" in message
    assert str(asset_cache_path("DeViDe checkpoint", filename="devide.pth")) in message


def test_cache_layout_and_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "xb"))
    assert asset_cache_path("MedKLIP checkpoint", filename="a.pth") == (
        tmp_path / "xb" / "assets" / "medklip-checkpoint" / "a.pth"
    )
    assert asset_cache_path("X", hub_repo="o/r", filename="f.bin", revision="v2") == (
        tmp_path / "xb" / "assets" / "x" / "o--r@v2" / "f.bin"
    )
    assert asset_cache_path("X", url="https://h/d/w%20v1.pt?dl=1") == (
        tmp_path / "xb" / "assets" / "x" / "w_v1.pt"
    )
    monkeypatch.delenv("XBENCH_HOME")
    assert xbench_home() == Path.home() / ".cache" / "xbench"


def test_importing_assets_imports_neither_torch_nor_the_hub() -> None:
    code = (
        "import sys, xbench_core.assets; "
        "print('torch' in sys.modules, 'huggingface_hub' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.stdout.split() == ["False", "False"]
