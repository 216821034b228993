"""`xbench run` against a bare loop over the same 1024x1024 DICOMs with the same model.

The bare loop does only the unavoidable work: build the model and its queries, decode each image,
preprocess it, and run the forward pass in batches. `xbench run` does the same plus everything a
benchmark needs (regions, maps back to the original frame, grounding statistics, records, map
cache, aggregation). Both run in this process, alternately, twice; the best of each counts.

Last line: `efficiency: <bare_time / xbench_time>` (1.0 means the harness costs nothing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from synthetic import FINDINGS, bench_data, best_model, timed_run


def bare(registry, root: Path, name: str, options: dict, batch: int) -> float:
    start = time.perf_counter()
    dataset = registry.datasets["bench-dicoms"].build(root=str(root))
    model = registry.models[name].build(**options)
    model.module.eval()
    findings = [f for f in FINDINGS if model.supports(f)]
    with torch.inference_mode():
        queries = model.encode_queries(findings)
        for lo in range(0, len(dataset), batch):
            pixels = [torch.as_tensor(model.preprocess(dataset[i].image)[0]) for i in range(lo, min(lo + batch, len(dataset)))]
            out = model.forward(torch.stack(pixels), queries)
            out.scores.cpu()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", help="model name (default clip at random weights if installed)")
    args = ap.parse_args()
    with bench_data(args.images) as (tmp, root, registry):
        if args.model:
            spec = registry.models[args.model]
            name = args.model
            options = {"checkpoint": "random"} if any(o.name == "checkpoint" for o in spec.options) else {}
        else:
            name, options = best_model(registry)
        print(f"{args.images} DICOMs 1024x1024, model {name} {options}, batch {args.batch}, CPU threads {torch.get_num_threads()}")
        times_b, times_x = [], []
        for _ in range(2):
            times_b.append(bare(registry, root, name, options, args.batch))
            model = [{"name": name, **options}]
            times_x.append(timed_run(registry, root, model, tmp / "run", batch_size=args.batch)[0])
        tb, tx = min(times_b), min(times_x)
        print(f"bare loop: {tb:.2f} s ({args.images / tb:.2f} img/s)")
        print(f"xbench:    {tx:.2f} s ({args.images / tx:.2f} img/s)")
        print(f"efficiency: {tb / tx:.3f}")


if __name__ == "__main__":
    main()
