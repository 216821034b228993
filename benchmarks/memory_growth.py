"""Peak resident memory of a run with 200 and with 800 images (each in a fresh process).

Records stream to disk and full-resolution maps live only for their batch, so the peak must not
grow with the number of images. Uses the phantom (512x512) with the two baselines.

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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        small = peak(200, Path(tmp) / "a")
        large = peak(800, Path(tmp) / "b")
    print(f"peak RSS: 200 images {small / 1024:.0f} MiB, 800 images {large / 1024:.0f} MiB")
    print(f"memory_growth: {large / small:.3f}")


if __name__ == "__main__":
    main()
