"""The on-disk cache of decoded images: same results, hits on the second run, keyed by content,
size-limited, robust to corrupt entries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from xbench_core import ConfigError, Dataset, DatasetSpec, Option, Region, Sample, hookimpl
from xbench_core.engine.config import build_config
from xbench_core.engine.image_cache import CacheSettings, ImageCache
from xbench_core.engine.session import execute
from xbench_core.testing import temporary_plugin


def _write_pngs(root: Path, n: int, size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16)).save(root / f"im{i}.png")
    return root


class _Pngs(Dataset):
    decodes = 0

    def __init__(self, root: str, gamma: float = 1.0) -> None:
        self.name, self.split, self.findings, self.problems = "pngs", "test", ("pneumonia",), []
        self.files = sorted(Path(root).glob("*.png"))
        self.gamma = gamma

    def __len__(self) -> int:
        return len(self.files)

    def annotation(self, i: int) -> Sample:
        region = Region.from_boxes((96, 96), [[10 + i, 20, 50, 70]])
        return Sample("pngs", self.files[i].stem, None, {"pneumonia": 1}, {"pneumonia": region},
                      {"path": str(self.files[i]), "size": (96, 96)})

    def load_image(self, sample: Sample) -> Any:
        type(self).decodes += 1
        return super().load_image(sample) ** self.gamma


class _Plugin:
    @hookimpl
    def xbench_register_datasets(self, register: Any) -> None:
        register(DatasetSpec(name="pngs", summary="16-bit PNGs", factory=_Pngs, findings=("pneumonia",),
                             options=(Option("root", "path", required=True), Option("gamma", float, 1.0))))


def _run(registry: Any, out: Path, root: Path, cache: Any, **dataset: Any) -> dict:
    cfg = build_config({"datasets": [{"name": "pngs", "root": str(root), **dataset}], "models": ["center"],
                        "out": str(out), "image_cache": cache, "batch_size": 3}, registry)
    _, results = execute(cfg, registry, quiet=True)
    return results


def test_cached_runs_equal_uncached_and_decode_nothing(tmp_path: Path) -> None:
    root = _write_pngs(tmp_path / "data", 5)
    cache = {"dir": str(tmp_path / "cache")}
    with temporary_plugin(_Plugin(), "pngs") as registry:
        _Pngs.decodes = 0
        plain = _run(registry, tmp_path / "a", root, None)
        cold = _run(registry, tmp_path / "b", root, cache)
        assert _Pngs.decodes == 10 and len(list((tmp_path / "cache").glob("*/*.npy"))) == 5
        warm = _run(registry, tmp_path / "c", root, cache)
        assert _Pngs.decodes == 10  # every image came from the cache
        moved = tmp_path / "moved"
        root.rename(moved)
        _run(registry, tmp_path / "d", moved, cache)
        assert _Pngs.decodes == 10  # keyed by content, not by path
        _run(registry, tmp_path / "e", moved, cache, gamma=2.0)
        assert _Pngs.decodes == 15  # another decoding option: other entries
    for results in (cold, warm):
        assert json.dumps(results["rows"]) == json.dumps(plain["rows"])


def test_max_side_downscales_and_is_part_of_the_identity(tmp_path: Path) -> None:
    root = _write_pngs(tmp_path / "data", 2)
    with temporary_plugin(_Plugin(), "pngs") as registry:
        results = _run(registry, tmp_path / "a", root, {"dir": str(tmp_path / "cache"), "max_side": 48})
        cfg = build_config({"datasets": [{"name": "pngs", "root": str(root)}], "models": ["center"],
                            "image_cache": {"dir": str(tmp_path / "cache"), "max_side": 48}}, registry)
        assert cfg.evaluation_identity()["image_max_side"] == 48
    stored = [np.load(p) for p in (tmp_path / "cache").glob("*/*.npy")]
    assert len(stored) == 2 and all(a.shape == (48, 48) and a.dtype == np.float32 for a in stored)
    assert all(r["n_regions"] == 2 for r in results["rows"] if r["finding"] == "pneumonia")


def test_corrupt_entries_are_decoded_again_and_the_size_limit_holds(tmp_path: Path) -> None:
    root = _write_pngs(tmp_path / "data", 6)
    ds = _Pngs(str(root))
    one = 96 * 96 * 4 + 128
    cache = ImageCache(CacheSettings(str(tmp_path / "cache"), max_gb=3.5 * one / 1024**3), ds, {})
    first = cache.load(ds.annotation(0))
    entry = next((tmp_path / "cache").glob("*/*.npy"))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated by a crash or a full disk
    again = cache.load(ds.annotation(0))
    assert np.array_equal(first, again) and cache.misses == 2
    entries = {}
    for i in (1, 2):
        cache.load(ds.annotation(i))
    for i in (0, 1, 2):
        entries[i] = cache._entry(Path(ds.annotation(i).meta["path"]))
        os.utime(entries[i], (1000 + i, 1000 + i))  # 0 is the oldest...
    cache.load(ds.annotation(0))  # ...until a hit makes it the newest
    cache.load(ds.annotation(3))  # over the budget of 3.5 entries: the least recently used goes
    assert entries[0].exists() and not entries[1].exists() and entries[2].exists()
    files = list((tmp_path / "cache").glob("*/*.npy"))
    assert sum(f.stat().st_size for f in files) <= 3.5 * one
    assert not list((tmp_path / "cache").glob("*/.*.tmp"))


@pytest.mark.parametrize("value", [{"dri": "x"}, {"max_gb": 0}, {"max_side": 3}, 5])
def test_bad_settings_are_clear_errors(value: Any) -> None:
    with pytest.raises(ConfigError, match="image_cache"):
        CacheSettings.parse(value)


def test_settings_shorthands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path))
    assert CacheSettings.parse(True) == CacheSettings(str(tmp_path / "image-cache"))
    assert CacheSettings.parse(str(tmp_path / "c")).directory == str(tmp_path / "c")
    assert CacheSettings.parse(None) is None and CacheSettings.parse(False) is None
