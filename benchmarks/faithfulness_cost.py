"""Cost of the faithfulness pass relative to the native pass, measured side by side in one process.

The same phantom images and model run twice after a warm-up: the native pass alone (forward,
explainer, grounding, records) and with `faithfulness` at the given settings. Also counted: the
perturbed images the pass sends through the model per evaluated image.

Last line: `faithfulness_cost_ratio: <seconds with the pass / seconds of the native pass>`.

    python benchmarks/faithfulness_cost.py --model contrast --images 16
    python benchmarks/faithfulness_cost.py --model clip --images 8 --device cuda   # random weights
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.plugins import get_registry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="contrast")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--baseline", default="blur")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    registry = get_registry()
    model = {"name": args.model, **({"checkpoint": "random"} if args.model not in ("contrast", "random", "center") else {})}
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    faith = {"steps": args.steps, "baseline": args.baseline}

    def run(label: str, images: int, faithfulness: dict | None) -> tuple[float, dict]:
        cfg = build_config({"datasets": [{"name": "phantom", "size": images, "resolution": args.resolution}],
                            "models": [model], "out": str(tmp / label), "batch_size": args.batch_size,
                            "device": args.device, "save_maps": False, "faithfulness": faithfulness}, registry)
        start = time.perf_counter()
        _, results = execute(cfg, registry, quiet=True)
        return time.perf_counter() - start, results

    try:
        run("warm-up", 2, faith)  # imports, model build, kernels
        native, _ = run("native", args.images, None)
        with_pass, results = run("faithfulness", args.images, faith)
        mean = next(r for r in results["rows"] if r["finding"] == "__mean__")
        print(f"model {args.model}, {args.images} images, steps {args.steps}, baseline {args.baseline}")
        print(f"native pass: {native:.2f} s ({native / args.images:.3f} s/img)")
        print(f"with faithfulness: {with_pass:.2f} s ({with_pass / args.images:.3f} s/img); "
              f"(image, finding) pairs measured: {mean.get('n_faithfulness')}")
        print(f"faithfulness_cost_ratio: {with_pass / native:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
