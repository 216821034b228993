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
import shutil
import tempfile
import time
from pathlib import Path

from synthetic import install_plugin, write_dicoms

from xbench_core import get_registry
from xbench_core.engine.config import build_config
from xbench_core.engine.image_cache import CacheSettings, ImageCache
from xbench_core.engine.session import execute


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xbench-bench-"))
    try:
        root = write_dicoms(tmp / "data", args.images, size=args.size, png=True)
        install_plugin(tmp / "plugin")
        registry = get_registry(refresh=True)
        rates, rows = {}, {}
        warm_up = {"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": ["bench-prior-0"],
                   "limit": 2, "out": str(tmp / "warm-up"), "device": "cpu"}
        execute(build_config(warm_up, registry), registry, quiet=True)  # imports, file system cache
        for label, cache in (("no cache", None), ("cold cache", str(tmp / "cache")), ("warm cache", str(tmp / "cache"))):
            cfg = build_config({"datasets": [{"name": "bench-dicoms", "root": str(root)}], "models": ["bench-prior-0"],
                                "batch_size": 4, "workers": 0, "out": str(tmp / label.replace(" ", "-")),
                                "device": "cpu", "image_cache": cache}, registry)
            start = time.perf_counter()
            _, results = execute(cfg, registry, quiet=True)
            rates[label] = args.images / (time.perf_counter() - start)
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
