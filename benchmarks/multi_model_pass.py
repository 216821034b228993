"""k models in one run (one pass over the images) against k separate runs, k = 1, 2, 4.

In one run each image is decoded once and preprocessed once per model; separate runs decode it k
times. The models are cheap center priors, so that the figure shows what the shared pass saves.

Last line: `shared_pass_speedup_k4: <time of 4 separate runs / time of one 4-model run>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthetic import bench_data, timed_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    args = ap.parse_args()
    with bench_data(args.images) as (tmp, root, registry):

        def run(models: list[str], out: Path) -> float:
            return timed_run(registry, root, models, out, batch_size=8)[0]

        run(["bench-prior-0"], tmp / "warm")
        ratio = {}
        for k in (1, 2, 4):
            names = [f"bench-prior-{i}" for i in range(k)]
            shared = run(names, tmp / "shared")
            separate = sum(run([n], tmp / f"sep{n}") for n in names)
            ratio[k] = separate / shared
            print(f"k={k}: one run {shared:.2f} s, {k} separate runs {separate:.2f} s, speedup {ratio[k]:.2f}")
        print(f"shared_pass_speedup_k4: {ratio[4]:.2f}")


if __name__ == "__main__":
    main()
