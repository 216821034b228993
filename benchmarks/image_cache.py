"""Runs over the same images without the decoded-image cache, filling it, and reading from it.

Synthetic 2048x2048 16-bit PNGs (compressed, like the PNG releases of ChestX-ray14, ChestX-Det and
CheXpert; large compressed DICOMs behave alike) with the cheap center prior, so that the data path
dominates; 0 loader workers. Three runs of the same config: no cache, a cold cache (decode + store)
and a warm cache (read back). Results are checked equal.

Last line: `image_cache_speedup: <img/s warm / img/s without cache>`.
"""

from __future__ import annotations

import argparse
import json
import time

from synthetic import bench_data, timed_run

from xbench_core.engine.image_cache import CacheSettings, ImageCache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    with bench_data(args.images, size=args.size, png=True) as (tmp, root, registry):
        rates, rows = {}, {}
        models = ["bench-prior-0"]
        timed_run(registry, root, models, tmp / "warm-up", limit=2)  # imports, file system cache
        for label, cache in (("no cache", None), ("cold cache", str(tmp / "cache")), ("warm cache", str(tmp / "cache"))):
            out = tmp / label.replace(" ", "-")
            seconds, results = timed_run(registry, root, models, out, batch_size=4, image_cache=cache)
            rates[label] = args.images / seconds
            rows[label] = json.dumps(results["rows"])
            print(f"{label}: {rates[label]:.2f} img/s")
        assert rows["warm cache"] == rows["no cache"] == rows["cold cache"], "cached results differ"
        # the step itself: decode vs cache hit (content hash + read), per image
        spec = registry.datasets["bench-dicoms"]
        dataset = spec.build(root=str(root))
        cache = ImageCache.for_dataset(CacheSettings(str(tmp / "cache")), dataset, spec, {"root": str(root)})
        samples = [dataset.annotation(i) for i in range(len(dataset))]
        start = time.perf_counter()
        for sample in samples:
            dataset.load_image(sample)
        decode = (time.perf_counter() - start) / len(samples)
        start = time.perf_counter()
        for sample in samples:
            cache.load(sample)
        hit = (time.perf_counter() - start) / len(samples)
        assert cache.hits == len(samples)
        print(f"per image: decode {decode * 1000:.0f} ms, cache hit {hit * 1000:.0f} ms ({decode / hit:.1f}x)")
        size = sum(p.stat().st_size for p in (tmp / "cache").glob("*/*.npy")) / 2**20
        print(f"cache: {size:.0f} MiB for {args.images} images; results equal with and without it")
        print(f"image_cache_speedup: {rates['warm cache'] / rates['no cache']:.2f}")


if __name__ == "__main__":
    main()
