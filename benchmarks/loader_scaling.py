"""Images per second against the number of loader workers, for a decode-bound and a forward-bound run.

Two workloads over synthetic DICOMs, each run with workers = 0, 1, ..., --max-workers:
- decode-bound: the cheap `center` prior on large DICOMs (2048x2048 by default; grounding capped at
  an eval size of 512, so decoding dominates the main process's work);
- forward-bound: CLIP ViT-B/16 at random weights (when installed) on 1024x1024 DICOMs.

Every configuration runs --repeats times, round-robin over the worker counts (so a change in the
machine's load hits every count alike), after one warm-up run per workload (imports, file system
cache); the median time counts. The decode share is the serial decode time of the images over the
0-worker run.

Last line: `loader_best_vs_0: decode-bound <x> (w workers), forward-bound <y> (w workers)`: the
images/s of the best worker count >= 1 over 0 workers for each workload.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from synthetic import best_model, install_plugin, write_dicoms

from xbench_core import get_registry
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.io import read_image


def run_time(registry, root: Path, model: dict, workers: int, batch: int, out: Path, cap: int | None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    data = {"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": [model],
            "batch_size": batch, "workers": workers, "out": str(out), "device": "cpu"}
    if cap:
        data["grounding"] = {"eval_size": cap}
    cfg = build_config(data, registry)
    start = time.perf_counter()
    execute(cfg, registry, quiet=True)
    return time.perf_counter() - start


def workload(label: str, registry, root: Path, model: dict, args, tmp: Path, cap: int | None) -> tuple[float, int]:
    n = len(list(root.glob("*.dcm")))
    run_time(registry, root, model, 0, args.batch, tmp / "warm-up", cap)  # imports, file system cache
    start = time.perf_counter()
    for f in sorted(root.glob("*.dcm")):
        read_image(f)
    decode = time.perf_counter() - start
    counts = list(range(args.max_workers + 1))
    times: dict[int, list[float]] = {w: [] for w in counts}
    for _ in range(args.repeats):
        for w in counts:
            times[w].append(run_time(registry, root, model, w, args.batch, tmp / f"run{w}", cap))
    median = {w: statistics.median(t) for w, t in times.items()}
    for w in counts:
        share = f", decode share {decode / median[0]:.0%}" if w == 0 else ""
        spread = ", ".join(f"{t:.2f}" for t in times[w])
        print(f"{label} workers={w}: {n / median[w]:.2f} img/s (median of {spread} s){share}")
    best = min(counts[1:], key=lambda w: median[w])
    return median[0] / median[best], best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16, help="images of each workload")
    ap.add_argument("--decode-size", type=int, default=2048, help="side of the decode-bound DICOMs")
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
            root = write_dicoms(tmp / "large", args.images, size=args.decode_size)
            result["decode-bound"] = workload(f"decode-bound (center, {args.decode_size}^2, eval 512)", registry,
                                              root, {"name": "center"}, args, tmp, 512)
        if args.only != "decode":
            root = write_dicoms(tmp / "small", args.images)
            name, options = best_model(registry)
            result["forward-bound"] = workload(f"forward-bound ({name}, 1024^2)", registry, root,
                                               {"name": name, **options}, args, tmp, None)
        if load is not None:
            print(f"load average at end {os.getloadavg()}")
        print("loader_best_vs_0: " + ", ".join(f"{k} {r:.2f} ({w} workers)" for k, (r, w) in result.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
