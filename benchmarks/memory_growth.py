"""Peak resident memory of a run with 200 and with 800 images (each in a fresh process).

Records stream to disk and full-resolution maps live only for their batch, so the peak must not
grow with the number of images. Uses the phantom (512x512) with the two baselines.

Aggregation: a synthetic run directory of N grounded records (4 findings, one model) is aggregated
in a fresh process twice: streamed from the store (as `xbench run` and `xbench report` do) and, as
the baseline, after reading every record into one list first (how aggregation worked before).
Printed: `aggregation_memory_ratio: <streamed / materialized>` (peak RSS above the idle process).

Last line: `memory_growth: <peak_800 / peak_200>` (goal: at most 1.1).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

CODE = """
import resource, sys
from xbench_core.cli import main
main(["run", "--set", "phantom.size=" + sys.argv[1], "--out", sys.argv[2], "--quiet", "--batch-size", "8"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak(n: int, out: Path) -> int:
    done = subprocess.run([sys.executable, "-c", CODE, str(n), str(out)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


AGGREGATE = """
import resource, sys
from xbench_core.store import RunStore
from xbench_core.metrics.aggregate import aggregate
from xbench_core.engine.session import metric_functions
from xbench_core.plugins import get_registry
fns = metric_functions(get_registry(), None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
records = RunStore(sys.argv[1]).records()
if sys.argv[2] == "list":
    records = list(records)
aggregate(records, fns)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def write_records(folder: Path, images: int) -> None:
    """A run directory with `images` x 4 findings of grounded records (random 101-bin counts)."""
    import numpy as np

    from xbench_core.store import RunStore

    rng = np.random.default_rng(0)
    store = RunStore(folder)
    findings = ("f1", "f2", "f3", "f4")
    for start in range(0, images, 100):
        batch = []
        for i in range(start, min(images, start + 100)):
            for f in findings:
                total, region = 1024 * 1024, int(rng.integers(1000, 100000))
                hits_all = np.sort(rng.integers(0, total, 101))[::-1]
                hits_region = np.minimum(hits_all, np.sort(rng.integers(0, region, 101))[::-1])
                batch.append({
                    "dataset": "synthetic", "id": f"img{i:06d}", "model": "m", "explainer": "native",
                    "finding": f, "n": 4, "label": 1, "score": float(rng.random()), "error": None,
                    "stats": {"region_px": region, "total_px": total, "area_fraction": region / total,
                              "pointing_game": float(rng.integers(0, 2)), "ebpg": float(rng.random()),
                              "constant_map": False, "hits_region": hits_region.tolist(),
                              "hits_all": hits_all.tolist()},
                })
        store.append("synthetic", "m", "native", "0", batch)
    store.close()


def aggregation_peak(folder: Path, mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", AGGREGATE, str(folder), mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_records(Path(tmp) / "records", 5000)
        streamed = aggregation_peak(Path(tmp) / "records", "stream")
        listed = aggregation_peak(Path(tmp) / "records", "list")
        print(f"aggregating 20,000 grounded records: streamed +{streamed / 1024:.0f} MiB, "
              f"all records in one list first +{listed / 1024:.0f} MiB")
        print(f"aggregation_memory_ratio: {streamed / listed:.3f}")
        small = peak(200, Path(tmp) / "a")
        large = peak(800, Path(tmp) / "b")
    print(f"peak RSS: 200 images {small / 1024:.0f} MiB, 800 images {large / 1024:.0f} MiB")
    print(f"memory_growth: {large / small:.3f}")


if __name__ == "__main__":
    main()
