"""The prepared GPU measurement: `xbench run` end to end on an accelerator, where its time goes, and
the forward pass against its arithmetic floor. One script, for the few minutes a GPU is lent.

Workload: CLIP ViT-B/16 and MedKLIP, both at random weights (the official architectures; no weights
can be downloaded), in one run (one decode per image shared by both models), bf16 autocast,
synthetic 16-bit 1024x1024 DICOMs with box regions (256 distinct files listed `--images` times in
all: decoding costs the same, writing stays short), `--workers` loader workers, batch 64, eval
frame at the original resolution.

Printed:
1. end to end: images per second of the run's loop (after a warm-up run in the same process);
2. where the main process's loop time goes, as shares: waiting for the loader (decode,
   preprocessing and region rasterizing in the workers), forward passes, maps (explainer),
   grounding statistics (`evaluate_batch`), host transfer and writing of the map cache
   (`RunStore.save_maps`), and the rest (records, scores, batching). On CUDA every timed call is
   bracketed by `torch.cuda.synchronize()`, so device work is charged to the call that queued it
   (this costs a little overlap; the images/s of step 1 come from an untimed run);
3. per image, measured alone: decode on one core, host-to-device copy of one model's input
   (pinned), so that step 2's shares can be read against them;
4. per model: forward time per image (batch 64, bf16, synchronized) against its floor, FLOPs per
   image (torch's FlopCounterMode) / the card's dense bf16 peak (known cards, or `--peak-tflops`);
5. on CUDA, `grounding_stats.py`'s batched grounding on the device against per-image calls and the
   CPU.
Meant to end within about 8 minutes on an H100 (`--images 2048`). `--smoke` runs it tiny on the
CPU (fp32, 6 images at 128 px, 2 workers) so that the script is tested without a GPU
(tests/test_benchmarks_gpu.py).

Last line: `gpu: <images/s> img/s end to end (<card>); forward/floor clip <x>, medklip <y>`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import install_plugin, write_dicoms  # noqa: E402

from xbench_core import get_registry  # noqa: E402
from xbench_core.engine.config import build_config  # noqa: E402
from xbench_core.engine.session import execute  # noqa: E402
from xbench_core.io import read_image  # noqa: E402

MODELS = {"clip": {"checkpoint": "random"}, "medklip": {"checkpoint": "random"}}
# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets
PEAKS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0),
         ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0))
DISTINCT = 256  # distinct DICOM files written


def peak_tflops(device: torch.device, given: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", given
    name = torch.cuda.get_device_name(device)
    if given is not None:
        return name, given
    return name, next((p for key, p in PEAKS if key in name), None)


def dataset_root(tmp: Path, images: int, resolution: int) -> Path:
    """DISTINCT files, listed `images` times in all under distinct ids."""
    root = write_dicoms(tmp / "data", min(images, DISTINCT), size=resolution)
    entries = json.loads((root / "labels.json").read_text())
    listed = [{**entries[i % len(entries)], "id": f"img{i:05d}"} for i in range(images)]
    (root / "labels.json").write_text(json.dumps(listed))
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Phases:
    """Wall time of the run's steps in the main process (monkeypatched for one run)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.spent, self.patches = device, defaultdict(float), []

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(self.device)
                self.spent[phase] += time.perf_counter() - start

        setattr(owner, name, timed)
        self.patches.append((owner, name, original))

    def wrap_loader(self, runner_cls: Any) -> None:
        original = runner_cls._batches
        spent = self.spent

        def loader(runner: Any, *args: Any, **kwargs: Any) -> Any:
            inner = iter(original(runner, *args, **kwargs))

            def batches() -> Any:
                while True:
                    start = time.perf_counter()
                    try:
                        batch = next(inner)
                    except StopIteration:
                        return
                    finally:
                        spent["waiting for the loader"] += time.perf_counter() - start
                    yield batch

            return batches()

        runner_cls._batches = loader
        self.patches.append((runner_cls, "_batches", original))

    def undo(self) -> None:
        for owner, name, original in reversed(self.patches):
            setattr(owner, name, original)


def run(registry: Any, root: Path, out: Path, args: argparse.Namespace, limit: int | None = None,
        phases: Phases | None = None) -> float:
    """Seconds of the run's loop (Runner._run_dataset), the run itself untimed otherwise."""
    from xbench_core.engine import runner as runner_module

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config({
        "datasets": [{"name": "bench-dicoms", "root": str(root), **({"limit": limit} if limit else {})}],
        "models": [{"name": n, **o} for n, o in MODELS.items()], "batch_size": args.batch, "workers": args.workers,
        "out": str(out), "device": args.device, "precision": args.precision,
    }, registry)
    loop: list[float] = []
    original = runner_module.Runner._run_dataset

    def timed(self: Any, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            loop.append(time.perf_counter() - start)

    runner_module.Runner._run_dataset = timed
    try:
        execute(cfg, registry, quiet=True)
    finally:
        runner_module.Runner._run_dataset = original
    return sum(loop)


def shares(registry: Any, root: Path, out: Path, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    import xbench_core.grounding_batch as grounding_batch
    from xbench_core.engine import calls
    from xbench_core.engine import runner as runner_module
    from xbench_core.store import RunStore

    phases = Phases(device)
    phases.wrap(calls, "forward", "forward passes")
    phases.wrap(calls, "explain", "maps (explainer)")
    phases.wrap(grounding_batch, "evaluate_batch", "grounding statistics")
    phases.wrap(RunStore, "save_maps", "map cache (device to host, write)")
    phases.wrap_loader(runner_module.Runner)
    try:
        total = run(registry, root, out, args)
    finally:
        phases.undo()
    spent = dict(phases.spent)
    spent["rest (records, scores, batching)"] = total - sum(spent.values())
    return {"total": total, **spent}


def per_image_costs(root: Path, models: dict[str, Any], device: torch.device) -> dict[str, float]:
    files = sorted(root.glob("*.dcm"))[:16]
    start = time.perf_counter()
    for f in files:
        image = read_image(f)
    decode = (time.perf_counter() - start) / len(files)
    out = {"decode (one core)": decode}
    for name, model in models.items():
        start = time.perf_counter()
        pixels, _ = model.preprocess(image)
        out[f"preprocess {name} (one core)"] = time.perf_counter() - start
        one = torch.as_tensor(pixels, dtype=torch.float32)
        host = one[None].repeat(16, *([1] * one.dim()))
        if device.type == "cuda":
            host = host.pin_memory()
        times = []
        for _ in range(5):
            sync(device)
            start = time.perf_counter()
            host.to(device, non_blocking=True)
            sync(device)
            times.append((time.perf_counter() - start) / len(host))
        out[f"host to device, {name} input"] = statistics.median(times)
    return out


def forward_floor(name: str, model: Any, findings: list[str], args: argparse.Namespace, device: torch.device,
                  peak: float | None) -> tuple[float, float, float | None]:
    """(seconds per image of the forward pass, FLOPs per image, floor seconds per image)."""
    from torch.utils.flop_counter import FlopCounterMode

    from xbench_core.engine import calls

    image = np.random.default_rng(0).random((args.resolution, args.resolution), dtype=np.float32)
    pixels = torch.as_tensor(model.preprocess(image)[0], dtype=torch.float32)
    batch = pixels[None].repeat(args.batch, *([1] * pixels.dim())).to(device)
    queries = calls.encode_queries(model, [f for f in findings if model.supports(f)])
    # counted with nn.MultiheadAttention's fused inference path off: the counter does not see
    # inside `_native_multi_head_attention` (its projections and attention would count zero)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            calls.forward(model, batch[:1], queries, device, args.precision)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = float(counter.get_total_flops())
    for _ in range(2):  # warm-up (kernels, autotuning)
        calls.forward(model, batch, queries, device, args.precision)
    times = []
    for _ in range(args.repeat):
        sync(device)
        start = time.perf_counter()
        calls.forward(model, batch, queries, device, args.precision)
        sync(device)
        times.append((time.perf_counter() - start) / len(batch))
    per_image = statistics.median(times)
    return per_image, flops, (flops / (peak * 1e12) if peak else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the script, measures nothing")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--repeat", type=int, default=10, help="timed forward batches per model")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: known cards)")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.workers, args.batch, args.resolution = 6, 2, 4, 128
        args.device, args.precision, args.repeat = "cpu", "fp32", 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # `make bench` on a machine without one
        print("gpu: not measured (no CUDA device; --smoke checks the script on the CPU)")
        return
    card, peak = peak_tflops(device, args.peak_tflops)
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="xbench-gpu-"))
    try:
        root = dataset_root(tmp, args.images, args.resolution)
        install_plugin(tmp / "plugin")
        registry = get_registry(refresh=True)
        print(f"{card}: {args.images} DICOMs {args.resolution}^2 ({min(args.images, DISTINCT)} distinct), models "
              f"{', '.join(MODELS)} at random weights, {args.precision}, batch {args.batch}, {args.workers} workers; "
              f"setup {time.perf_counter() - began:.0f} s", flush=True)
        run(registry, root, tmp / "warm-up", args, limit=min(args.images, 2 * args.batch))
        loop = run(registry, root, tmp / "run", args)
        rate = args.images / loop
        print(f"end to end: {rate:.1f} img/s ({loop:.1f} s loop for {args.images} images, both models)", flush=True)
        parts = shares(registry, root, tmp / "timed", args, device)
        total = parts.pop("total")
        print(f"main process, timed run ({total:.1f} s loop, every step synchronized):")
        for phase, seconds in parts.items():
            print(f"  {phase:38s} {seconds:7.2f} s  {seconds / total:6.1%}")
        models = {n: registry.models[n].build(**o) for n, o in MODELS.items()}
        for m in models.values():
            m.module.to(device).eval()
        costs = per_image_costs(root, models, device)
        print("per image, measured alone:")
        for what, seconds in costs.items():
            print(f"  {what:38s} {seconds * 1e3:8.3f} ms")
        findings = list(registry.datasets["bench-dicoms"].findings or ("pneumonia", "pleural_effusion", "pneumothorax"))
        ratios = {}
        for name, model in models.items():
            seconds, flops, floor = forward_floor(name, model, findings, args, device, peak)
            ratios[name] = seconds / floor if floor else None
            against = f"floor {floor * 1e3:.3f} ms at {peak:g} TFLOP/s: {ratios[name]:.1f}x the floor" if floor else \
                "no floor (unknown peak: pass --peak-tflops)"
            print(f"forward {name}: {seconds * 1e3:.3f} ms/img, {flops / 1e9:.1f} GFLOP/img; {against}", flush=True)
        del models
        if device.type == "cuda":
            from grounding_stats import compare_batched

            compare_batched()
        print(f"total {time.perf_counter() - began:.0f} s")
        floors = ", ".join(f"{n} {r:.1f}" if r else f"{n} n/a" for n, r in ratios.items())
        print(f"gpu: {rate:.1f} img/s end to end ({card}); forward/floor {floors}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
