"""Cost of each explainer per image, relative to the native map, on the CPU (same run, same model).

The native map comes with the one forward pass the engine makes anyway, so its cost is that of
`model.forward`; each explainer is timed on the same batch, after that forward, as the engine calls
it (queries encoded under no_grad; gradient-free explainers under inference mode; gradient explainers with
gradients enabled inside). The images are the built-in phantom's (256 x 256). Times are medians over
`--repeats` runs (one run for the perturbation methods); the ratios are what to compare across
machines.

    python benchmarks/cost.py --model toy
    python benchmarks/cost.py --model clip --images 2 --repeats 1
    python benchmarks/cost.py --explainers all   # also every other installed explainer (grad-cam methods)
    python benchmarks/cost.py --model clip --images 1 --findings 1 --explainers gradcam,scorecam,ablationcam
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from xbench_core import get_registry

FINDINGS = ("nodule", "mass", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly")


def build(name: str) -> Any:
    if name == "toy":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from xbench_explainers_toys import ToyConv

        return ToyConv(detector=False, batchnorm=True)
    model = get_registry().models[name].build(checkpoint="random")
    model.module.to("cpu").eval()
    return model


def timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="toy", help="toy, or an installed model built with random weights"
    )
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--findings", type=int, default=len(FINDINGS), help="query the first N findings")
    p.add_argument(
        "--explainers",
        default="gradcam,gradcampp,rise",
        help="comma-separated explainer names, or 'all' (every installed one but native)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.model)
    findings = [f for f in FINDINGS if model.supports(f)][: args.findings]
    registry = get_registry()
    phantom = registry.datasets["phantom"].build(size=args.images, resolution=256)
    pixels = torch.stack(
        [
            torch.as_tensor(model.preprocess(phantom.load_image(phantom.annotation(i)))[0])
            for i in range(args.images)
        ]
    )
    names = (
        sorted(n for n in registry.explainers if n != "native")
        if args.explainers == "all"
        else args.explainers.split(",")
    )
    with torch.no_grad():  # ordinary tensors: usable by gradient explainers without a copy
        queries = model.encode_queries(findings)

    def forward() -> Any:
        with torch.inference_mode():
            return model.forward(pixels, queries)

    output = forward()
    native = timed(forward, args.repeats)
    print(
        f"model {args.model}: {args.images} images, {len(findings)} findings, torch threads "
        f"{torch.get_num_threads()}"
    )
    slow = {"rise", "scorecam", "ablationcam"}  # timed once, no warm-up call
    explainers = {}
    for name in names:
        spec = registry.explainers[name]
        explainer = spec.build()

        def explain(explainer: Any = explainer, needs_grad: bool = spec.needs_grad) -> Any:
            if needs_grad:
                return explainer.explain(model, pixels, queries, output)
            with torch.inference_mode():
                return explainer.explain(model, pixels, queries, output)

        if name not in slow:
            explain()  # warm-up: first-call imports (pytorch-grad-cam pulls scikit-learn, OpenCV)
        explainers[name] = explain
    print(f"{'explainer':<20} {'s/image':>9} {'x native':>9}")
    print(f"{'native':<20} {native / args.images:>9.4f} {1.0:>9.1f}")
    for name, explain in explainers.items():
        t = timed(explain, 1 if name in slow else args.repeats)
        print(f"{name:<20} {t / args.images:>9.4f} {t / native:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
