"""Host-side work per image: DICOM decoding, every model's preprocessing, what a worker pickles.

For a 1024x1024 and a 3000x2500 DICOM (16-bit, 12 bits stored, MONOCHROME2, no window):
- decode: `read_image` now and the decode before issue 22 (float64 throughout, kept below as the
  baseline), each against a bare pydicom decode (`dcmread` + `pixel_array`) of the same file;
- preprocessing: each installed model's `preprocess` (built at random weights) against a plain
  resize (Pillow bilinear of the decoded image to 224x224); before = CARZero with the area resize
  before issue 22 (float64 prefix sums, kept below and swapped in), the other models unchanged;
- transfer: the bytes a loader worker pickles for three full-resolution region masks (boolean
  arrays before, bit-packed now) and the main process's time to receive them (unpickling; then
  unpacking).
Before and after alternate; each figure is the median of --repeats.

Last line: `host_costs 3000x2500: decode <now> x bare (was <before>), preprocessing <now> x plain
resize (was <before>)`: per-image times over the bare decode and over the plain resize.
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import shutil
import statistics
import tempfile
import timeit
from pathlib import Path

import numpy as np
from synthetic import phantom_pixels, write_dicom

from xbench_core import get_registry
from xbench_core.engine.transfer import PackedMask
from xbench_core.geometry import resize
from xbench_core.io import read_image
from xbench_core.io.images import _value_range, _voi_output_range

SHAPES = {"1024x1024": (1024, 1024), "3000x2500": (3000, 2500)}


def decode_float64(path: Path) -> np.ndarray:
    """`read_dicom` before issue 22 (without a VOI transform, as these files have none)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(str(path), force=True)
    raw = ds.pixel_array
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    assert _voi_output_range(ds) is None
    lo, hi = _value_range(ds, arr)
    arr = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def area_axis_prefix_sums(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """The area resize's axis pass before issue 22 (on a float64 copy of the image)."""
    image = np.asarray(image, np.float64)
    n = image.shape[axis]
    if n == size:
        return image
    moved = np.moveaxis(image, axis, 0)
    prefix = np.empty((n + 1, *moved.shape[1:]), np.float64)
    prefix[0] = 0.0
    np.cumsum(moved, axis=0, dtype=np.float64, out=prefix[1:])
    edges = np.arange(size + 1, dtype=np.float64) * (n / size)
    edges[-1] = n
    whole = np.minimum(np.floor(edges).astype(np.int64), n - 1)
    part = (edges - whole).reshape(-1, *([1] * (moved.ndim - 1)))
    integral = prefix[whole] + part * moved[whole]
    return np.moveaxis((integral[1:] - integral[:-1]) / (n / size), 0, axis)


def median_time(repeats: int, fn, *args) -> float:
    return statistics.median(timeit.repeat(functools.partial(fn, *args), number=1, repeat=repeats))


def bare_decode(path: Path) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(str(path)).pixel_array


def receive_packed(data: bytes) -> list[np.ndarray]:
    return [p.unpack() for p in pickle.loads(data).values()]


def build_models(names: list[str] | None) -> dict[str, object]:
    registry = get_registry()
    models = {}
    for name, spec in registry.models.items():
        if (names and name not in names) or (not names and not any(o.name == "checkpoint" for o in spec.options)):
            continue  # by default the real models (the built-in baselines take no checkpoint)
        try:
            models[name] = spec.build(checkpoint="random")
        except Exception as exc:  # a plugin that cannot build here: reported, not measured
            print(f"  {name}: not built ({type(exc).__name__}: {str(exc)[:120]})")
    return models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="*", help="models to preprocess with (default: every real model installed)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: a model that reaches for the Hub fails at once
    import xbench_core.geometry as geometry

    tmp = Path(tempfile.mkdtemp(prefix="xbench-host-"))
    print(f"cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()}, {args.repeats} repeats")
    try:
        models = build_models(args.models)
        print(f"models: {', '.join(models)}")
        now_area = geometry._area_axis
        last = ""
        for label, shape in SHAPES.items():
            path = write_dicom(tmp / f"{label}.dcm", phantom_pixels(shape, np.random.default_rng(0)))
            image = read_image(path)
            assert np.array_equal(image, decode_float64(path))  # the same pixels
            r = args.repeats
            bare = median_time(r, bare_decode, path)
            before = median_time(r, decode_float64, path)
            after = median_time(r, read_image, path)
            print(f"{label} decode: bare pydicom {bare * 1e3:.1f} ms, before {before * 1e3:.1f} ms "
                  f"({before / bare:.2f}x bare), now {after * 1e3:.1f} ms ({after / bare:.2f}x bare)")
            plain = median_time(r, resize, image, (224, 224), "bilinear")
            total = {"before": 0.0, "now": 0.0}
            for name, model in models.items():
                t_now = median_time(r, model.preprocess, image)
                t_before = t_now
                if name == "carzero":
                    geometry._area_axis = area_axis_prefix_sums
                    try:
                        old = model.preprocess(image)[0]
                        t_before = median_time(r, model.preprocess, image)
                    finally:
                        geometry._area_axis = now_area
                    assert np.array_equal(np.asarray(old), np.asarray(model.preprocess(image)[0]))
                total["before"] += t_before
                total["now"] += t_now
                was = f" (before {t_before * 1e3:.1f} ms)" if name == "carzero" else ""
                print(f"{label} preprocess {name}: {t_now * 1e3:.1f} ms{was}, {t_now / plain:.1f}x plain resize")
            pre_before, pre_now = total["before"] / plain, total["now"] / plain
            print(f"{label} preprocessing, all {len(models)} models: before {total['before'] * 1e3:.0f} ms, "
                  f"now {total['now'] * 1e3:.0f} ms; plain resize {plain * 1e3:.1f} ms")
            masks = {}
            for k in range(3):
                m = np.zeros(shape, bool)
                m[200 * k : 200 * k + shape[0] // 3, 100 : 100 + shape[1] // 2] = True
                masks[f"f{k}"] = m
            sent_before = pickle.dumps(masks, protocol=pickle.HIGHEST_PROTOCOL)
            packed = {f: PackedMask(m.shape, np.packbits(m)) for f, m in masks.items()}
            sent_now = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
            assert all(np.array_equal(pickle.loads(sent_now)[f].unpack(), m) for f, m in masks.items())
            recv_before = median_time(r, pickle.loads, sent_before)
            recv_now = median_time(r, receive_packed, sent_now)
            print(f"{label} masks (3 regions): pickled {len(sent_before) / 1e6:.2f} MB before, "
                  f"{len(sent_now) / 1e6:.2f} MB now; received in {recv_before * 1e3:.1f} ms before, "
                  f"{recv_now * 1e3:.1f} ms now (unpickled and unpacked)")
            last = (f"host_costs {label}: decode {after / bare:.2f}x bare (was {before / bare:.2f}x), "
                    f"preprocessing {pre_now:.1f}x plain resize (was {pre_before:.1f}x)")
        print(f"load average at end {os.getloadavg()}")
        print(last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
