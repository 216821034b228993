"""A dataset's one entry point: `xbench run` (with and without the image cache) reads samples
through `dataset[i]`, so what a dataset's `__getitem__` adds once the image is known reaches the
records, and regions drawn on another grid than the image follow it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xbench_core import Dataset, DatasetSpec, Option, Region, Sample, hookimpl
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.testing import temporary_plugin


class _Labelled(Dataset):
    """PNGs whose boxes are drawn on a 96-px grid; `__getitem__` adds a `nodule` region (the
    image's top-left quarter), known only once the image is decoded."""

    overrides = 0

    def __init__(self, root: str) -> None:
        self.name, self.split, self.findings, self.problems = "entry", "test", ("pneumonia", "nodule"), []
        self.files = sorted(Path(root).glob("*.png"))

    def __len__(self) -> int:
        return len(self.files)

    def annotation(self, i: int) -> Sample:
        region = Region.from_boxes((96, 96), [[0, 0, 48, 96]])  # the left half, on the 96 grid
        return Sample("entry", self.files[i].stem, None, {"pneumonia": 1, "nodule": 0},
                      {"pneumonia": region}, {"path": str(self.files[i]), "size": (96, 96)})

    def __getitem__(self, index: int) -> Sample:
        sample = super().__getitem__(index)
        type(self).overrides += 1
        h, w = sample.image.shape
        sample.labels["nodule"] = 1
        sample.regions["nodule"] = Region.from_boxes((h, w), [[0, 0, w // 2, h // 2]])
        return sample


class _Plugin:
    @hookimpl
    def xbench_register_datasets(self, register: Any) -> None:
        register(DatasetSpec(name="entry", summary="PNGs with a post-decode region", factory=_Labelled,
                             findings=("pneumonia", "nodule"), options=(Option("root", "path", required=True),)))


def test_dataset_getitem_runs_under_xbench_run_with_and_without_cache(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # a resized copy: 40 x 60 images, labels drawn on 96 x 96
        Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)).save(root / f"im{i}.png")
    with temporary_plugin(_Plugin(), "entry") as registry:
        rows = []
        for out, cache in (("plain", None), ("cold", str(tmp_path / "cache")), ("warm", str(tmp_path / "cache"))):
            _Labelled.overrides = 0
            cfg = build_config({"datasets": [{"name": "entry", "root": str(root)}], "models": ["center"],
                                "out": str(tmp_path / out), "image_cache": cache, "batch_size": 2}, registry)
            store, results = execute(cfg, registry, quiet=True)
            assert _Labelled.overrides == 3  # the override ran for every image, cached or not
            records = [r for r in store.iter_records() if r.get("stats")]
            rows.append(sorted((r["finding"], r["stats"]["region_px"], r["stats"]["total_px"]) for r in records))
            nodule = next(r for r in results["rows"] if r["finding"] == "nodule")
            assert nodule["n_regions"] == 3
    # the nodule region (known after decoding) and the pneumonia box fitted from 96 x 96 to 40 x 60
    assert rows[0] == [("nodule", 20 * 30, 40 * 60)] * 3 + [("pneumonia", 40 * 30, 40 * 60)] * 3
    assert rows[0] == rows[1] == rows[2]


def test_phantom_ids_without_layouts() -> None:
    """Phantom.ids() (used by every run's plan and the report's gallery) names the annotations'
    ids without drawing them."""
    from xbench_core.builtin.phantom import Phantom

    phantom = Phantom(size=7, seed=3, resolution=64)
    assert phantom.ids() == Dataset.ids(phantom) == [phantom.annotation(i).id for i in range(7)]
