"""k models in one run (one pass over the images) against k separate runs, k = 1, 2, 4.

In one run each image is decoded once and preprocessed once per model; separate runs decode it k
times. The models are cheap center priors, so that the figure shows what the shared pass saves.

Last line: `shared_pass_speedup_k4: <time of 4 separate runs / time of one 4-model run>`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from synthetic import install_plugin, write_dicoms

from xbench_core import get_registry
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute


def run(registry, root: Path, models: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config({"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": models,
                        "batch_size": 8, "workers": 0, "out": str(out), "device": "cpu"}, registry)
    start = time.perf_counter()
    execute(cfg, registry, quiet=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    try:
        root = write_dicoms(tmp / "data", args.images)
        install_plugin(tmp / "plugin")
        registry = get_registry(refresh=True)
        run(registry, root, ["bench-prior-0"], tmp / "warm")
        ratio = {}
        for k in (1, 2, 4):
            names = [f"bench-prior-{i}" for i in range(k)]
            shared = run(registry, root, names, tmp / "shared")
            separate = sum(run(registry, root, [n], tmp / f"sep{n}") for n in names)
            ratio[k] = separate / shared
            print(f"k={k}: one run {shared:.2f} s, {k} separate runs {separate:.2f} s, speedup {ratio[k]:.2f}")
        print(f"shared_pass_speedup_k4: {ratio[4]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
