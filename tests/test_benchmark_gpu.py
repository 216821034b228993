"""benchmarks/gpu.py, the script prepared for a lent GPU, run tiny on the CPU (`--smoke`): it runs
to its last line with every part measured (CLIP and MedKLIP at random weights, full-size, so slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from xbench_core.plugins import get_registry

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke_on_cpu() -> None:
    missing = {"clip", "medklip"} - set(get_registry().models)
    if missing:
        pytest.skip(f"model plugins not installed: {', '.join(sorted(missing))}")
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"gpu: [0-9.]+ img/s end to end \(cpu\); forward/floor clip n/a, medklip n/a", lines[-1])
    text = done.stdout
    for part in ("waiting for the loader", "forward passes", "grounding statistics", "map cache",
                 "decode (one core)", "host to device, clip input"):
        assert part in text, part
    # the shares of the main process's loop add up to the whole
    shares = [float(s) for s in re.findall(r"^  .+?\s+[0-9.]+ s\s+([0-9.]+)%$", text, flags=re.M)]
    assert len(shares) == 6 and sum(shares) == pytest.approx(100, abs=0.6)
    # FLOPs counted through nn.MultiheadAttention (fused path off): ViT-B/16 at 224 is ~34 GFLOP
    clip = float(re.search(r"forward clip: [0-9.]+ ms/img, ([0-9.]+) GFLOP/img", text).group(1))
    assert 30 < clip < 40


def test_gpu_benchmark_without_a_gpu_says_so() -> None:
    """`make bench` runs every benchmark: without CUDA, gpu.py says it measured nothing and exits 0."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("gpu: not measured (no CUDA device")
