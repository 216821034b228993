"""Synthetic data for the benchmarks: a folder of 1024x1024 DICOMs with box regions, exposed as a
dataset plugin `bench-dicoms` (importable in this process, and in subprocesses through an entry
point written next to it)."""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

FINDINGS = ("pneumonia", "pleural_effusion", "pneumothorax")

PLUGIN = '''
from pathlib import Path
import json
import numpy as np
from xbench_core import Dataset, DatasetSpec, Option, Region, Sample, hookimpl

FINDINGS = ("pneumonia", "pleural_effusion", "pneumothorax")


class BenchDicoms(Dataset):
    def __init__(self, root, limit=None):
        self.name, self.split, self.findings, self.problems = "bench-dicoms", "test", FINDINGS, []
        self.root = Path(root)
        self.entries = json.loads((self.root / "labels.json").read_text())
        if limit:
            self.entries = self.entries[:limit]

    def __len__(self):
        return len(self.entries)

    def ids(self):
        return [e["id"] for e in self.entries]

    def annotation(self, i):
        e = self.entries[i]
        size = (e.get("size", 1024),) * 2
        regions = {f: Region.from_boxes(size, [b]) for f, b in e["boxes"].items()}
        return Sample("bench-dicoms", e["id"], None, e["labels"], regions,
                      {"path": str(self.root / e["file"]), "size": size})


def _prior(sigma):
    def build():
        from xbench_core.builtin.baselines import CenterBaseline
        return CenterBaseline(sigma=sigma)
    return build


@hookimpl
def xbench_register_models(register):
    # cheap models, so that a multi-model benchmark measures the pass over the images
    from xbench_core import ModelSpec
    for k in range(4):
        register(ModelSpec(name=f"bench-prior-{k}", summary="center prior", factory=_prior(0.2 + 0.05 * k)))


@hookimpl
def xbench_register_datasets(register):
    register(DatasetSpec(name="bench-dicoms", summary="benchmark DICOMs", factory=BenchDicoms,
                         findings=FINDINGS, options=(Option("root", "path", required=True),
                                                     Option("limit", int, None))))
'''


@functools.lru_cache(maxsize=2)
def _pattern(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return 2000 + 1000 * np.sin(x / 97.0) * np.cos(y / 131.0)


def phantom_pixels(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth 12-bit pattern with Gaussian noise, uint16."""
    return np.clip(_pattern(shape) + rng.normal(0, 200, shape), 0, 4095).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """An uncompressed 16-bit MONOCHROME2 DICOM (12 bits stored, no window) of `pixels`."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_dicoms(folder: Path, n: int, size: int = 1024, seed: int = 0, png: bool = False) -> Path:
    """n distinct 16-bit MONOCHROME2 DICOMs (or 16-bit PNGs) with labels and boxes (labels.json)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        img = phantom_pixels((size, size), rng)
        if png:
            from PIL import Image

            name = f"img{i:05d}.png"
            Image.fromarray(img * 16).save(folder / name)
        else:
            name = f"img{i:05d}.dcm"
            write_dicom(folder / name, img)
        labels, boxes = {}, {}
        for f in FINDINGS:
            labels[f] = int(rng.random() < 0.4)
            if labels[f]:
                x0, y0 = rng.uniform(100, 700, 2) * size / 1024
                w, h = rng.uniform(40, 300, 2) * size / 1024
                boxes[f] = [x0, y0, x0 + w, y0 + h]
        entries.append({"id": f"img{i:05d}", "file": name, "size": size, "labels": labels, "boxes": boxes})
    (folder / "labels.json").write_text(json.dumps(entries))
    return folder


def install_plugin(folder: Path) -> Path:
    """Write the `bench-dicoms` plugin with an entry point into `folder` and put it on sys.path.

    Subprocesses see it when `folder` is on their PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "xbench_bench_dicoms.py").write_text(textwrap.dedent(PLUGIN))
    dist = folder / "xbench_bench_dicoms-0.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xbench-bench-dicoms\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[xbench]\nbench-dicoms = xbench_bench_dicoms\n")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from xbench_core import get_registry

    get_registry(refresh=True)
    return folder


@contextlib.contextmanager
def bench_data(n: int, **options: Any) -> Iterator[tuple[Path, Path, Any]]:
    """(temporary folder, image root, registry): n images by `write_dicoms(..., **options)` and
    the `bench-dicoms` plugin installed; the folder is removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    try:
        root = write_dicoms(tmp / "data", n, **options)
        install_plugin(tmp / "plugin")
        from xbench_core import get_registry

        yield tmp, root, get_registry(refresh=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timed_run(registry: Any, root: Path, models: list, out: Path, **settings: Any) -> tuple[float, dict]:
    """Seconds and results of one run of `models` over the `bench-dicoms` folder `root` in this
    process (CPU, 0 loader workers unless `settings` say otherwise), `out` emptied first."""
    from xbench_core.engine.config import build_config
    from xbench_core.engine.session import execute

    shutil.rmtree(out, ignore_errors=True)
    data = {"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": models,
            "workers": 0, "out": str(out), "device": "cpu", **settings}
    cfg = build_config(data, registry)
    start = time.perf_counter()
    _, results = execute(cfg, registry, quiet=True)
    return time.perf_counter() - start, results


def best_model(registry: Any) -> tuple[str, dict[str, Any]]:
    """The real model the pipeline benchmark uses: CLIP ViT-B/16 at random weights if installed."""
    if "clip" in registry.models:
        return "clip", {"checkpoint": "random"}
    return "center", {}
