"""Images per second against the number of loader workers, for a decode-bound and a forward-bound run.

Two workloads over synthetic DICOMs, each run with workers = 0, 1, ..., --max-workers:
- decode-bound: the cheap `center` prior on RLE Lossless compressed DICOMs (1024x1024 by default,
  decoded by pydicom in Python; grounding capped at an eval size of 512), so decoding dominates;
- forward-bound: CLIP ViT-B/16 at random weights (when installed) on 1024x1024 DICOMs.

The baseline, side by side: the same runs with workers and torch's intra-op pool shrunk to cores
minus workers, what runs did before issue 22. Every configuration runs --repeats times,
round-robin (so a change in the machine's load hits every configuration alike), after one warm-up
run per workload (imports, file system cache); the median time counts. The decode share is the
serial decode time of the images over the 0-worker run.

Last lines: `before (...)`, then `loader_best_vs_0: decode-bound <x> (w workers), forward-bound <y>
(w workers)`: the images/s of the best worker count >= 1 over 0 workers for each workload.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from synthetic import best_model, install_plugin, timed_run, write_dicoms

from xbench_core import get_registry
from xbench_core.io import read_image


def run_time(registry, root: Path, model: dict, workers: int, batch: int, out: Path, cap: int | None,
             shrink: bool = False) -> float:
    """One run's seconds; `shrink`: torch's pool shrunk to cores minus workers, as runs did before
    issue 22 (the baseline)."""
    if shrink:
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)) - workers)))
        try:
            return run_time(registry, root, model, workers, batch, out, cap)
        finally:
            torch.set_num_threads(threads)
    grounding = {"grounding": {"eval_size": cap}} if cap else {}
    return timed_run(registry, root, [model], out, batch_size=batch, workers=workers, **grounding)[0]


def compress(root: Path) -> Path:
    """Every DICOM of `root` replaced by the first one, RLE Lossless compressed: pydicom decodes RLE
    in Python (about 0.5 s for 1024x1024), so decoding dominates. One image encoded for all (pydicom
    encodes in Python too, seconds per image)."""
    import pydicom
    from pydicom.uid import RLELossless

    files = sorted(root.glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    ds.compress(RLELossless)
    for f in files:
        ds.save_as(f)
    return root


def workload(label: str, registry, root: Path, model: dict, args, tmp: Path, cap: int | None) -> dict:
    n = len(list(root.glob("*.dcm")))
    run_time(registry, root, model, 0, args.batch, tmp / "warm-up", cap)  # imports, file system cache
    start = time.perf_counter()
    for f in sorted(root.glob("*.dcm")):
        read_image(f)
    decode = time.perf_counter() - start
    counts = list(range(args.max_workers + 1))
    configs = [(w, False) for w in counts] + [(w, True) for w in counts[1:]]
    times: dict[tuple[int, bool], list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for w, shrink in configs:
            times[(w, shrink)].append(run_time(registry, root, model, w, args.batch, tmp / f"run{w}", cap, shrink))
    median = {c: statistics.median(t) for c, t in times.items()}
    for w, shrink in configs:
        share = f", decode share {decode / median[(0, False)]:.0%}" if w == 0 else ""
        spread = ", ".join(f"{t:.2f}" for t in times[(w, shrink)])
        pool = " (pool shrunk, before)" if shrink else ""
        print(f"{label} workers={w}{pool}: {n / median[(w, shrink)]:.2f} img/s (median of {spread} s){share}")
    best = {s: min(counts[1:], key=lambda w: median[(w, s)]) for s in (False, True)}
    return {s: (median[(0, False)] / median[(best[s], s)], best[s]) for s in (False, True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16, help="images of each workload")
    ap.add_argument("--decode-size", type=int, default=1024, help="side of the decode-bound DICOMs")
    ap.add_argument("--max-workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--only", choices=("decode", "forward"), help="run one workload")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        install_plugin(tmp / "plugin")
        registry = get_registry(refresh=True)
        print(f"cores {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}, "
              f"load average at start {load}, {args.repeats} repeats, batch {args.batch}")
        result = {}
        if args.only != "forward":
            root = compress(write_dicoms(tmp / "large", args.images, size=args.decode_size))
            label = f"decode-bound (center, {args.decode_size}^2 RLE, eval 512)"
            result["decode-bound"] = workload(label, registry, root, {"name": "center"}, args, tmp, 512)
        if args.only != "decode":
            root = write_dicoms(tmp / "small", args.images)
            name, options = best_model(registry)
            result["forward-bound"] = workload(f"forward-bound ({name}, 1024^2)", registry, root,
                                               {"name": name, **options}, args, tmp, None)
        if load is not None:
            print(f"load average at end {os.getloadavg()}")
        before = ", ".join(f"{k} {r[True][0]:.2f} ({r[True][1]} workers)" for k, r in result.items())
        print(f"before (torch's pool shrunk by the workers): {before}")
        print("loader_best_vs_0: " + ", ".join(f"{k} {r[False][0]:.2f} ({r[False][1]} workers)" for k, r in result.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
