"""Images per second of the data path against the number of loader workers, with the decode share.

For workers = 0, 1, 2, ... the same run (cheap center prior, so the loader is the bottleneck) over
synthetic 1024x1024 DICOMs; the decode share is the time of decoding alone (measured serially) over
the single-process run time.

Last line: `loader_speedup_max_workers: <img/s at the most workers / img/s at 0 workers>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from synthetic import install_plugin, write_dicoms

from xbench_core import get_registry
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.io import read_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--max-workers", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    try:
        root = write_dicoms(tmp / "data", args.images)
        install_plugin(tmp / "plugin")
        registry = get_registry(refresh=True)
        warm_up = {"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": ["bench-prior-0"],
                   "limit": 2, "out": str(tmp / "warm-up"), "device": "cpu"}
        execute(build_config(warm_up, registry), registry, quiet=True)  # imports, file system cache
        start = time.perf_counter()
        for f in sorted(root.glob("*.dcm")):
            read_image(f)
        decode = time.perf_counter() - start
        rates = {}
        for workers in range(0, args.max_workers + 1):
            out = tmp / f"run{workers}"
            cfg = build_config({"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": ["bench-prior-0"],
                                "batch_size": 4, "workers": workers, "out": str(out), "device": "cpu"}, registry)
            start = time.perf_counter()
            execute(cfg, registry, quiet=True)
            t = time.perf_counter() - start
            rates[workers] = args.images / t
            share = f", decode share {decode / t:.0%}" if workers == 0 else ""
            print(f"workers={workers}: {rates[workers]:.2f} img/s{share}")
        print(f"loader_speedup_max_workers: {rates[args.max_workers] / rates[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
