"""Images per second against the number of loader workers, for a decode-bound and a forward-bound run.

Two workloads over synthetic DICOMs, each run with workers = 0, 1, ..., --max-workers:
- decode-bound: the cheap `center` prior on RLE Lossless compressed DICOMs (1024x1024 by default,
  decoded by pydicom in Python; grounding capped at an eval size of 512), so decoding dominates;
- forward-bound: CLIP ViT-B/16 at random weights (when installed) on 1024x1024 DICOMs.

Three processes run them, side by side:
- "now": runs as they are. On the CPU the workers start after the first batch, and only when its
  decoding was at least `WORKER_SHARE` of its loop (the runner's `_cpu_batches`);
- "workers always start": `WORKER_SHARE` 0, so the workers always start, as before that rule;
- "default allocator": glibc's allocator left at its defaults (`reuse_freed_memory` off) and the
  workers always started; it also runs every worker count with torch's intra-op pool shrunk to cores
  minus workers: that is the runner before issue 22.
Every configuration runs --repeats times, round-robin over the processes (so a change in the
machine's load hits every configuration alike), after one warm-up run per workload and process
(imports, file system cache); the median time counts. The decode share is the serial decode time of
the images over the 0-worker run.

Last lines: `before issue 22 (...)`, `default allocator (...)`, `workers always start (...)`, then
`loader_best_vs_0: decode-bound <x> (w workers), forward-bound <y> (w workers)`: the images/s of the
best worker count >= 1 over 0 workers in the same process, for each workload.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import best_model, install_plugin, timed_run, write_dicoms

from xbench_core import get_registry
from xbench_core.io import read_image

VARIANTS = ("now", "workers always start", "default allocator")


def run_time(registry, root: Path, model: dict, workers: int, batch: int, out: Path, cap: int | None,
             shrink: bool = False) -> float:
    """One run's seconds; `shrink`: torch's pool shrunk to cores minus workers, as runs did before
    issue 22."""
    import torch

    threads = torch.get_num_threads()
    if shrink:
        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)) - workers)))
    grounding = {"grounding": {"eval_size": cap}} if cap else {}
    try:
        return timed_run(registry, root, [model], out, batch_size=batch, workers=workers, **grounding)[0]
    finally:
        torch.set_num_threads(threads)


def serve(variant: str, plugin: Path) -> None:
    """A measuring process: runs the JSON requests of its standard input, answers seconds."""
    from xbench_core.engine import runner

    if variant != "now":
        runner.WORKER_SHARE = 0.0
    if variant == "default allocator":
        runner.reuse_freed_memory = lambda: False
    install_plugin(plugin)
    registry = get_registry(refresh=True)
    for line in sys.stdin:
        r = json.loads(line)
        seconds = run_time(registry, Path(r["root"]), r["model"], r["workers"], r["batch"], Path(r["out"]),
                           r["cap"], r["shrink"])
        print(seconds, flush=True)


class Server:
    def __init__(self, variant: str, plugin: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", variant, str(plugin)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time(self, **request) -> float:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a measuring process failed (its error is above)")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


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


def workload(label: str, servers: dict, root: Path, model: dict, args, tmp: Path, cap: int | None) -> dict:
    n = len(list(root.glob("*.dcm")))
    request = {"root": str(root), "model": model, "batch": args.batch, "cap": cap}
    for v, server in servers.items():  # imports, file system cache
        server.time(**request, workers=0, shrink=False, out=str(tmp / f"warm-up-{v}"))
    start = time.perf_counter()
    for f in sorted(root.glob("*.dcm")):
        read_image(f)
    decode = time.perf_counter() - start
    counts = list(range(args.max_workers + 1))
    configs = [(v, w, False) for v in VARIANTS for w in counts] + [(VARIANTS[2], w, True) for w in counts[1:]]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for v, w, shrink in configs:
            out = str(tmp / f"run-{VARIANTS.index(v)}-{w}")
            times[(v, w, shrink)].append(servers[v].time(**request, workers=w, shrink=shrink, out=out))
    median = {c: statistics.median(t) for c, t in times.items()}
    for v, w, shrink in configs:
        share = f", decode share {decode / median[(v, 0, False)]:.0%}" if w == 0 else ""
        spread = ", ".join(f"{t:.2f}" for t in times[(v, w, shrink)])
        pool = ", pool shrunk: before issue 22" if shrink else ""
        print(f"{label} [{v}{pool}] workers={w}: {n / median[(v, w, shrink)]:.2f} img/s (median of {spread} s){share}")

    def best(v: str, shrink: bool) -> tuple[float, int]:
        w = min(counts[1:], key=lambda w: median[(v, w, shrink)])
        return median[(v, 0, False)] / median[(v, w, shrink)], w

    return {"now": best("now", False), "always": best(VARIANTS[1], False), "default": best(VARIANTS[2], False),
            "before": best(VARIANTS[2], True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16, help="images of each workload")
    ap.add_argument("--decode-size", type=int, default=1024, help="side of the decode-bound DICOMs")
    ap.add_argument("--max-workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--only", choices=("decode", "forward"), help="run one workload")
    ap.add_argument("--serve", nargs=2, metavar=("VARIANT", "PLUGIN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], Path(args.serve[1]))
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    servers = {}
    try:
        install_plugin(tmp / "plugin")
        registry = get_registry(refresh=True)
        servers = {v: Server(v, tmp / "plugin") for v in VARIANTS}
        print(f"cores {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}, "
              f"load average at start {load}, {args.repeats} repeats, batch {args.batch}")
        result = {}
        if args.only != "forward":
            root = compress(write_dicoms(tmp / "large", args.images, size=args.decode_size))
            label = f"decode-bound (center, {args.decode_size}^2 RLE, eval 512)"
            result["decode-bound"] = workload(label, servers, root, {"name": "center"}, args, tmp, 512)
        if args.only != "decode":
            root = write_dicoms(tmp / "small", args.images)
            name, options = best_model(registry)
            result["forward-bound"] = workload(f"forward-bound ({name}, 1024^2)", servers, root,
                                               {"name": name, **options}, args, tmp, None)
        if load is not None:
            print(f"load average at end {os.getloadavg()}")

        def line(key: str) -> str:
            return ", ".join(f"{k} {r[key][0]:.2f} ({r[key][1]} workers)" for k, r in result.items())

        print(f"before issue 22 (default allocator, torch's pool shrunk by the workers): {line('before')}")
        print(f"default allocator (reuse_freed_memory off, workers always start): {line('default')}")
        print(f"workers always start (WORKER_SHARE 0): {line('always')}")
        print(f"loader_best_vs_0: {line('now')}")
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
