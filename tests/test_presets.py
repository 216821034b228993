"""Presets (`--preset xbench-paper`), pinned split files through the asset chain, XBENCH_MIRROR,
and `xbench inspect --preset` on the real label files."""

from __future__ import annotations

import gzip
import hashlib
import json
import urllib.parse
from pathlib import Path

import pytest

from xbench_core import presets
from xbench_core.assets import mirrored_url
from xbench_core.cli import main
from xbench_core.errors import AssetError, ConfigError
from xbench_core.testing import realdata

PAPER = presets.get("xbench-paper")


def pinned_splits() -> dict[str, dict[str, str]]:
    return {d["name"]: d["split_file"] for d in PAPER.config["datasets"] if "split_file" in d}


def mirror_from_realdata(dest: Path) -> Path:
    """A mirror folder ($XBENCH_MIRROR/HOST/PATH) laid out from ../shared/realdata/splits: MAVL's
    data/<a>/<b>.csv is splits/mavl-<a>-<b>.csv[.gz] there (the .gz ones decompressed)."""
    splits = realdata("splits")
    for pin in pinned_splits().values():
        parts = urllib.parse.urlparse(pin["url"])
        name = "mavl-" + parts.path.split("/data/", 1)[1].replace("/", "-")
        source = splits / name
        data = source.read_bytes() if source.exists() else gzip.decompress((splits / f"{name}.gz").read_bytes())
        target = dest / parts.netloc / parts.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return dest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing leaves the machine
    return tmp_path


def test_preset_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preset", "list"]) == 0
    assert "xbench-paper" in capsys.readouterr().out
    assert main(["preset", "show", "xbench-paper"]) == 0
    shown = capsys.readouterr().out
    assert shown == PAPER.text
    cfg = PAPER.config
    assert [d["name"] for d in cfg["datasets"]] == [
        "rsna-pneumonia", "siim-pneumothorax", "covid-rural", "chestx-det10", "chexlocalize",
        "vindr-cxr", "chestx-ray14-bbox",
    ]  # fmt: skip
    assert cfg["models"] == ["clip", "biomedclip", "medklip", "kad", "mavl", "carzero", "devide"]
    assert cfg["batch_size"] == 8 and cfg["grounding"]["fixed_threshold"] == 0.5
    assert PAPER.meta["paper_cases"] == 12601
    with pytest.raises(ConfigError, match="did you mean 'xbench-paper'|Did you mean 'xbench-paper'"):
        presets.get("xbench-papr")


def test_compose_user_config_over_preset() -> None:
    base = {"datasets": [{"name": "a", "split": "test", "root": "/x"}, {"name": "b"}], "batch_size": 8,
            "grounding": {"fixed_threshold": 0.5}}
    over = {"datasets": [{"name": "a", "root": "/y"}], "grounding": {"eval_size": 512}, "batch_size": 2}
    out = presets.compose(base, over)
    assert out == {"datasets": [{"name": "a", "split": "test", "root": "/y"}], "batch_size": 2,
                   "grounding": {"fixed_threshold": 0.5, "eval_size": 512}}
    assert base["datasets"][0]["root"] == "/x"  # the preset itself is untouched


def test_mirror_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://raw.githubusercontent.com/o/r/abc/data/x%20y.csv"
    monkeypatch.delenv("XBENCH_MIRROR", raising=False)
    assert mirrored_url(url) is None
    monkeypatch.setenv("XBENCH_MIRROR", str(tmp_path))
    assert mirrored_url(url) == (tmp_path / "raw.githubusercontent.com/o/r/abc/data/x y.csv").as_uri()
    monkeypatch.setenv("XBENCH_MIRROR", "https://mirror.example.org/cache/")
    assert mirrored_url(url) == "https://mirror.example.org/cache/raw.githubusercontent.com/o/r/abc/data/x%20y.csv"
    assert mirrored_url("file:///data/x.csv") is None  # local files are never redirected


def test_pinned_file_chain(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"ID,classes\na,0\n"
    url = "https://example.org/splits/test.csv"
    pin = {"url": url, "sha256": hashlib.sha256(body).hexdigest()}
    mirror = home / "mirror"
    (mirror / "example.org/splits").mkdir(parents=True)
    (mirror / "example.org/splits/test.csv").write_bytes(body)
    # no mirror, offline: a clear error with the ways to pass it
    monkeypatch.delenv("XBENCH_MIRROR", raising=False)
    with pytest.raises(AssetError, match="XBENCH_DS_SPLIT_FILE"):
        presets.pin("ds", "split_file", pin)
    monkeypatch.setenv("XBENCH_MIRROR", str(mirror))
    got = Path(presets.pin("ds", "split_file", pin))
    assert got.read_bytes() == body and str(got).startswith(str(home / "home"))  # cached copy
    # a user's --set wins over the pin; the environment variable over the cache
    entry = {"name": "ds", "split_file": pin}
    assert presets.resolve_pinned(entry, {"split_file"}) == entry
    own = home / "own.csv"
    own.write_text("ID\nb\n")
    monkeypatch.setenv("XBENCH_DS_SPLIT_FILE", str(own))
    assert presets.resolve_pinned(entry)["split_file"] == str(own.resolve())


def test_tampered_mirror_file_names_file_and_hashes(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"ID,classes\na,0\n"
    pin = {"url": "https://example.org/s/test.csv", "sha256": hashlib.sha256(body).hexdigest()}
    bad = home / "mirror/example.org/s/test.csv"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"ID,classes\na,1\n")
    monkeypatch.setenv("XBENCH_MIRROR", str(home / "mirror"))
    with pytest.raises(AssetError) as info:
        presets.pin("ds", "split_file", pin)
    text = str(info.value)
    assert str(bad) in text and pin["sha256"] in text
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in text
    bad.unlink()
    with pytest.raises(AssetError, match="from the mirror: .*test.csv"):
        presets.pin("ds", "split_file", pin)


def test_published_split_hashes_match_the_preset(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's SHA-256 of each decompressed split equals the preset's pin; each resolves."""
    mirror = mirror_from_realdata(home / "mirror")
    monkeypatch.setenv("XBENCH_MIRROR", str(mirror))
    rows = {"rsna-pneumonia": 5338, "siim-pneumothorax": 2318, "covid-rural": 46}
    for name, pin in pinned_splits().items():
        path = Path(presets.pin(name, "split_file", pin))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == pin["sha256"]
        assert len(path.read_text().splitlines()) == rows[name]  # with the header


def test_validate_preset_composes_with_set(home: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = mirror_from_realdata(home / "mirror")
    monkeypatch.setenv("XBENCH_MIRROR", str(mirror))
    args = ["validate", "--preset", "xbench-paper"]
    for name in [d["name"] for d in PAPER.config["datasets"]]:
        args += ["--set", f"{name}.root={home}"]
    args += ["--set", "clip.variant=RN50"]
    assert main(args) == 0
    cfg = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert cfg["batch_size"] == 8
    clip = next(m for m in cfg["models"] if m["name"] == "clip")
    assert clip["variant"] == "RN50"
    rsna = next(d for d in cfg["datasets"] if d["name"] == "rsna-pneumonia")
    assert Path(rsna["split_file"]).read_bytes()[:26] == b"ID,img_path,boxes,classes\n"


def test_inspect_preset_on_the_real_label_files(home: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    full = realdata("full")
    monkeypatch.setenv("XBENCH_MIRROR", str(mirror_from_realdata(home / "mirror")))
    args = [
        "inspect", "--preset", "xbench-paper", "--skip-images", "--json",
        "--set", f"rsna-pneumonia.root={full / 'rsna'}",
        "--set", f"rsna-pneumonia.label_file={full / 'rsna/stage_2_train_labels.csv.zip'}",
        "--set", f"siim-pneumothorax.root={full / 'siim'}",
        "--set", f"siim-pneumothorax.label_file={full / 'siim/train-rle.stage2-images.csv.gz'}",
        "--set", f"chestx-det10.root={full / 'chestx-det10'}",
        "--set", f"chestx-ray14-bbox.root={full / 'nih-bbox'}",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    ds = report["datasets"]
    assert (ds["rsna-pneumonia"]["images"], ds["rsna-pneumonia"]["findings"]["pneumonia"]["positive"]) == (5337, 1218)
    siim = ds["siim-pneumothorax"]
    assert (siim["images"], siim["findings"]["pneumothorax"]["positive"]) == (2264, 594)
    assert siim["problems"] == []  # 2,317 rows: repeated ids of a label-format split are no problem
    assert ds["chestx-det10"]["images"] == 542 and ds["chestx-ray14-bbox"]["images"] == 880
    assert report["cases_per_dataset"] == {"rsna-pneumonia": 5337, "siim-pneumothorax": 2264,
                                           "chestx-det10": 542, "chestx-ray14-bbox": 880}
    assert report["cases"] == 9023 and report["paper_cases"] == 12601 and report["difference"] == -3578
    assert set(report["not_counted"]) == {"covid-rural", "chexlocalize", "vindr-cxr"}
    assert "--set covid-rural.root=DIR" in report["not_counted"]["covid-rural"]
    assert ds["covid-rural"]["split_file_lists"] == 45 and "split_file_lists" not in ds["vindr-cxr"]
    assert "3,578" in report["explanation"]
