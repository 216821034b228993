"""Resolving the files a plugin needs: given path, environment variable, cache, download, or a clear error.

The order is fixed (ARCHITECTURE.md, section 7): the path (or Hugging Face Hub id) given in the
config or on the command line; the environment variable the plugin names; the cache under
`$XBENCH_HOME/assets/<name>/` (default `~/.cache/xbench`), and for Hub files also the user's own
Hugging Face cache; a download from the Hub or from a URL checked against its SHA-256; and
otherwise an `AssetError` that says what the file is, where it comes from and how to pass it.

`HF_HUB_OFFLINE=1` stops every network attempt, Hub and http(s) alike; `file://` URLs still work.
`XBENCH_MIRROR` (a folder, or a base URL) serves every URL download instead of its origin:
`https://HOST/PATH` is read from `$XBENCH_MIRROR/HOST/PATH`, with the same SHA-256 check (offline
clusters lay out their downloads that way; a mirror folder counts as local, also when offline).
Nothing here imports torch, and `huggingface_hub` is imported only when the Hub is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import AssetError

__all__ = ["asset_cache_path", "resolve_asset", "xbench_home"]

# Seconds a URL download may wait for the server before it is reported as failed.
DOWNLOAD_TIMEOUT_S = 60.0

# Written into a Hub snapshot folder once snapshot_download has finished, so that a folder left
# half-filled by an interrupted download is not mistaken for a cache hit.
_COMPLETE_MARKER = ".xbench-complete"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# A missing relative path such as "weights/model.pt" also has the owner/repo shape; a file
# extension tells it apart from a Hub id.
_FILE_SUFFIXES = {
    ".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pkl", ".pickle", ".npy", ".npz", ".json",
    ".txt", ".yaml", ".yml", ".csv", ".tsv", ".zip", ".tar", ".gz", ".tgz", ".onnx", ".h5",
    ".model", ".vocab",
}  # fmt: skip

_TRUE = {"1", "true", "yes", "on"}


def xbench_home() -> Path:
    """The folder XBench keeps its caches in: `$XBENCH_HOME`, default `~/.cache/xbench`."""
    return Path(os.environ.get("XBENCH_HOME") or "~/.cache/xbench").expanduser()


def _safe(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "asset"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and Path(text).suffix.lower() not in _FILE_SUFFIXES


def _url_filename(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "download"


def asset_cache_path(
    name: str,
    *,
    hub_repo: str | None = None,
    filename: str | None = None,
    url: str | None = None,
    revision: str | None = None,
    folder: bool = False,
) -> Path:
    """Where the cache keeps asset `name` (a file, or a folder when `folder` or no file is named).

    Hub assets live under `<owner>--<repo>[@revision]/` so that a Hub id given by the user never
    picks up the file of the plugin's default repository; URL assets take the URL's file name
    unless `filename` is given.
    """
    base = xbench_home() / "assets" / _safe(name)
    if hub_repo:
        base = base / (hub_repo.replace("/", "--") + (f"@{_safe(revision)}" if revision else ""))
        return base if folder or not filename else base / filename
    if url and not folder:
        return base / (filename or _url_filename(url))
    return base if folder or not filename else base / filename


@dataclass(frozen=True)
class _Wanted:
    """What is being resolved, for the search and for the messages."""

    name: str
    env: str | None
    hub_repo: str | None
    filename: str | None
    url: str | None
    sha256: str | None
    option: str | None
    folder: bool
    revision: str | None
    hint: str | None

    @property
    def kind(self) -> str:
        return "folder" if self.folder else "file"

    def origin(self) -> str:
        """Where the asset comes from, in words."""
        if self.hub_repo:
            what = f"file {self.filename} of " if self.filename and not self.folder else ""
            at = f" at revision {self.revision}" if self.revision else ""
            return f"{what}the Hugging Face Hub repository {self.hub_repo}{at}"
        if self.url:
            return f"the URL {self.url}"
        return "nowhere XBench can download from"

    def describe(self) -> str:
        """A sentence saying what the asset is and where to get it."""
        if self.hub_repo:
            text = f"{self.name} is {self.origin()}"
        elif self.url:
            text = f"{self.name} is the file at {self.url}"
        else:
            text = f"XBench cannot download {self.name} itself"
        return text + (f" ({self.hint})." if self.hint else ".")

    def how_to_pass(self) -> str:
        """The ways a user can point XBench at a local copy."""
        ways = []
        if self.option:
            ways.append(f"pass it with --set {self.option}=PATH")
        if self.env:
            ways.append(f"set the environment variable {self.env}=PATH")
        ways.append(f"put it at {self.cache_path()}")
        return ", or ".join(ways)

    def cache_path(self) -> Path:
        return asset_cache_path(
            self.name,
            hub_repo=self.hub_repo,
            filename=self.filename,
            url=self.url,
            revision=self.revision,
            folder=self.folder or (bool(self.hub_repo) and not self.filename),
        )


def resolve_asset(
    name: str,
    given: str | Path | None = None,
    *,
    env: str | None = None,
    hub_repo: str | None = None,
    filename: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    option: str | None = None,
    folder: bool = False,
    revision: str | None = None,
    hint: str | None = None,
) -> Path:
    """Find asset `name` (for messages, e.g. "MedKLIP checkpoint") and return its local path.

    Looked for in order: `given` (a path, or a Hub id "owner/repo" that replaces `hub_repo`); the
    environment variable `env` (the same two forms); the cache; a download from `hub_repo`
    (`filename` in it, or the whole repository when `folder` or no `filename`) or from `url`
    (checked against `sha256` when given). `option` (as `model.key`) and `env` appear in the error
    that says how to supply the file by hand; `hint` says where a person can get it when there is
    no download location. A given path that does not exist is an error, never skipped.
    """
    if folder and url and not hub_repo:
        raise ValueError("a URL download gives one file; folder=True needs hub_repo")
    wanted = _Wanted(name, env, hub_repo, filename, url, sha256, option, folder, revision, hint)
    user_value, origin = None, ""
    if given is not None and str(given) != "":
        user_value, origin = str(given), f"the path given for {name}"
        if option:
            origin += f" (--set {option})"
    elif env and os.environ.get(env):
        user_value, origin = os.environ[env], f"the environment variable {env}"
    if user_value is not None:
        local = Path(user_value).expanduser()
        if local.exists():
            return _check_kind(local, wanted, origin)
        if not _looks_like_hub_id(user_value):
            raise AssetError(
                f"{origin} is {user_value}, which does not exist. Fix the path. "
                + wanted.describe()
            )
        # A Hub id chosen by the user replaces the plugin's default source entirely, including
        # the revision and hash pinned for that default.
        wanted = replace(wanted, hub_repo=user_value, url=None, sha256=None, revision=None)
    cached = _from_cache(wanted)
    if cached is not None:
        return cached
    return _download(wanted)


def _check_kind(path: Path, wanted: _Wanted, origin: str) -> Path:
    if wanted.folder and not path.is_dir():
        raise AssetError(f"{origin} is {path}, a file; {wanted.name} is a folder. Pass the folder.")
    if not wanted.folder and path.is_dir():
        if wanted.filename and (path / wanted.filename).is_file():
            return (path / wanted.filename).resolve()
        if wanted.filename:
            raise AssetError(
                f"{origin} is {path}, a folder; {wanted.name} is a file ({wanted.filename}), which "
                "that folder does not hold. Pass the file, or the folder that holds it."
            )
        raise AssetError(f"{origin} is {path}, a folder; {wanted.name} is a file. Pass the file.")
    return path.resolve()


# --------------------------------------------------------------------------------------------------
# Cache


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, sha256: str | None) -> bool:
    """Whether a cached file has the expected hash; remembered in a sidecar file so that a
    multi-gigabyte checkpoint is hashed once, not on every run."""
    if not sha256:
        return True
    expected = sha256.strip().lower()
    sidecar = _sidecar(path)
    try:
        if (
            sidecar.read_text().strip() == expected
            and sidecar.stat().st_mtime >= path.stat().st_mtime
        ):
            return True
    except OSError:
        pass
    if _sha256_of(path) != expected:
        return False
    sidecar.write_text(expected + "\n")
    return True


def _from_cache(wanted: _Wanted) -> Path | None:
    target = wanted.cache_path()
    if wanted.folder or (wanted.hub_repo and not wanted.filename):
        if target.is_dir():
            # A Hub snapshot counts once complete; a folder put there by hand, once not empty.
            marker = (target / _COMPLETE_MARKER).exists()
            if marker if wanted.hub_repo else any(target.iterdir()):
                return target.resolve()
    elif target.is_file() and _verified(target, wanted.sha256):
        return target.resolve()
    if wanted.hub_repo:
        return _from_hf_cache(wanted)
    return None


def _from_hf_cache(wanted: _Wanted) -> Path | None:
    """The asset from the user's own Hugging Face cache (filled by other tools); no network."""
    import huggingface_hub

    assert wanted.hub_repo is not None

    try:
        if wanted.filename and not wanted.folder:
            found = huggingface_hub.try_to_load_from_cache(
                wanted.hub_repo, wanted.filename, revision=wanted.revision
            )
            if isinstance(found, str) and _verified(Path(found), wanted.sha256):
                return Path(found)
            return None
        return Path(
            huggingface_hub.snapshot_download(
                wanted.hub_repo, revision=wanted.revision, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - not in that cache, whatever the reason
        return None


# --------------------------------------------------------------------------------------------------
# Download


def _not_available(wanted: _Wanted, why: str) -> AssetError:
    return AssetError(
        f"{wanted.name} is not available: {why}. {wanted.describe()} "
        f"To use a local copy, {wanted.how_to_pass()}."
    )


def mirrored_url(url: str) -> str | None:
    """Where `$XBENCH_MIRROR` serves `url` (`https://HOST/PATH` -> `$XBENCH_MIRROR/HOST/PATH`, a
    `file://` URL when the mirror is a folder), or None without a mirror or for a non-http URL."""
    mirror = os.environ.get("XBENCH_MIRROR", "").strip()
    parts = urllib.parse.urlparse(url)
    if not mirror or parts.scheme.lower() not in ("http", "https"):
        return None
    tail = parts.netloc + parts.path
    if urllib.parse.urlparse(mirror).scheme.lower() in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + tail
    return (Path(mirror).expanduser().resolve() / urllib.parse.unquote(tail)).as_uri()


def _download(wanted: _Wanted) -> Path:
    if wanted.hub_repo:
        if _offline():
            raise _not_available(
                wanted, "it is not in the cache and HF_HUB_OFFLINE=1 forbids downloading it"
            )
        return _download_hub(wanted)
    if wanted.url:
        source = mirrored_url(wanted.url) or wanted.url
        scheme = urllib.parse.urlparse(source).scheme.lower()
        if _offline() and scheme != "file":
            raise _not_available(
                wanted, "it is not in the cache and HF_HUB_OFFLINE=1 forbids downloading it"
            )
        return _download_url(wanted, source)
    raise _not_available(wanted, "it was not given and is not in the cache")


def _download_failed(wanted: _Wanted, error: BaseException) -> AssetError:
    return AssetError(
        f"could not download {wanted.name} from {wanted.origin()}: {type(error).__name__}: "
        f"{error}. If this machine has no internet access, download it elsewhere and "
        f"{wanted.how_to_pass()} (and set HF_HUB_OFFLINE=1 to skip download attempts)."
    )


def _download_hub(wanted: _Wanted) -> Path:
    import huggingface_hub

    assert wanted.hub_repo is not None

    # The repository's folder in the cache; a file lands at <folder>/<filename>.
    repo_dir = asset_cache_path(
        wanted.name, hub_repo=wanted.hub_repo, revision=wanted.revision, folder=True
    )
    try:
        if wanted.filename and not wanted.folder:
            found = Path(
                huggingface_hub.hf_hub_download(
                    wanted.hub_repo, wanted.filename, revision=wanted.revision, local_dir=repo_dir
                )
            )
        else:
            found = Path(
                huggingface_hub.snapshot_download(
                    wanted.hub_repo, revision=wanted.revision, local_dir=repo_dir
                )
            )
            (found / _COMPLETE_MARKER).write_text("")
    except Exception as error:  # noqa: BLE001 - every failure is reported with its reason
        raise _download_failed(wanted, error) from error
    if found.is_file() and not _verified(found, wanted.sha256):
        found.unlink(missing_ok=True)
        raise AssetError(
            f"{wanted.name} downloaded from {wanted.origin()} does not have the expected SHA-256 "
            f"{wanted.sha256}; it was deleted. The file on the Hub may have changed."
        )
    return found.resolve()


def _download_url(wanted: _Wanted, source: str) -> Path:
    assert wanted.url is not None
    via = "" if source == wanted.url else f" (served by XBENCH_MIRROR as {_shown(source)})"
    target = wanted.cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded under a temporary name and renamed once complete and verified: an interrupted
    # download never leaves a half-written file under the final name, and concurrent processes
    # each write their own temporary file.
    handle, temporary_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    temporary = Path(temporary_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S) as response:
                total = response.headers.get("Content-Length")
                from tqdm.auto import tqdm

                with tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {wanted.name}",
                    disable=None,  # only on a terminal
                ) as progress:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        progress.update(len(chunk))
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, Exception):
            if via:
                raise AssetError(
                    f"could not read {wanted.name} from the mirror: {_shown(source)} "
                    f"({type(error).__name__}: {error}). XBENCH_MIRROR serves {wanted.url} from "
                    f"$XBENCH_MIRROR/HOST/PATH; put the file there, or {wanted.how_to_pass()}."
                ) from error
            raise _download_failed(wanted, error) from error
        raise
    got = digest.hexdigest()
    if wanted.sha256 and got != wanted.sha256.strip().lower():
        temporary.unlink(missing_ok=True)
        raise AssetError(
            f"{wanted.name} downloaded from {wanted.url}{via} has SHA-256 {got}, expected "
            f"{wanted.sha256}; the download was deleted. The file at that URL may have changed "
            f"or been corrupted in transit; to use a copy you trust, {wanted.how_to_pass()}."
        )
    os.replace(temporary, target)
    if wanted.sha256:
        _sidecar(target).write_text(got + "\n")
    return target.resolve()


def _shown(source: str) -> str:
    """A mirror location as a user would type it: a path for file:// URLs."""
    parts = urllib.parse.urlparse(source)
    return urllib.parse.unquote(parts.path) if parts.scheme == "file" else source
