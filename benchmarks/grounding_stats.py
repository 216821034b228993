"""One-pass grounding statistics against the naive per-threshold loop, measured in the same run.

The map: a 14x14 grid upsampled bilinearly to 1024x1024 (what every model's map becomes at a
typical original resolution), min-max normalized; the region: an ellipse of about 4% of the image.
The naive loop is the one a careful user writes: for each of the 101 thresholds, numpy
`b = m >= t; count_nonzero(b & r); count_nonzero(b)` on the same float32 array. The counts must agree
exactly. Then the whole step of a batch (`evaluate_batch`: eval-frame mapping, normalization,
statistics, extras of 16 images x 2 findings, 14x14 maps of a 224 input from 1024x1024 images) in
one call against the per-image calls the runner made before (`evaluate_maps` per image), rows
checked equal. On a GPU, also the statistics of a batch of maps on the device against the same on
the CPU, and the batched step on the device against the per-image calls on the device and the
batched step on the CPU.

Last line: `speedup: <naive_time / one_pass_time>x (one map), batched_vs_per_image: <x>x` (CPU).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from xbench_core.geometry import Geometry
from xbench_core.grounding import (
    THRESHOLDS,
    evaluate_maps,
    grounding_stats,
    naive_counts,
    normalize,
)
from xbench_core.grounding_batch import evaluate_batch


def best_of(fn, repeat: int = 15) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_case(n: int = 1, size: int = 1024, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, n, 14, 14), dtype=np.float32))
    maps = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
    maps, _ = normalize(maps)
    y, x = np.ogrid[:size, :size]
    masks = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        masks.append(((y - cy) / (0.12 * size)) ** 2 + ((x - cx) / (0.1 * size)) ** 2 <= 1)
    return maps, torch.from_numpy(np.stack(masks))


def batch_case(images: int = 16, findings: int = 2, size: int = 1024, seed: int = 1):
    """Input-frame maps [images * findings, 14, 14] and, per pair, geometry, eval size and mask."""
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.random((images * findings, 14, 14), dtype=np.float32))
    geometry = Geometry.squash((size, size), (224, 224))
    y, x = np.ogrid[:size, :size]
    masks = []
    for _ in range(images * findings):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        masks.append(((y - cy) / (0.12 * size)) ** 2 + ((x - cx) / (0.1 * size)) ** 2 <= 1)
    return maps, [geometry] * len(masks), [(size, size)] * len(masks), masks, findings


def per_image(maps, geometries, sizes, masks, findings: int) -> list:
    """The runner's former step: one `evaluate_maps` call per image (its F findings)."""
    rows = []
    for start in range(0, len(masks), findings):
        part = slice(start, start + findings)
        rows += evaluate_maps(maps[part], geometries[start], sizes[start], masks[part]).rows()
    return rows


def sync(fn):
    def run():
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    return run


def compare_batched() -> float:
    from xbench_core.metrics.bootstrap import single_threaded_blas

    with single_threaded_blas():  # as during a run
        return _compare_batched()


def _compare_batched() -> float:
    maps, geometries, sizes, masks, findings = batch_case()
    assert evaluate_batch(maps, geometries, sizes, masks) == per_image(maps, geometries, sizes, masks, findings)
    t_per_image = best_of(lambda: per_image(maps, geometries, sizes, masks, findings), repeat=5)
    t_batched = best_of(lambda: evaluate_batch(maps, geometries, sizes, masks), repeat=5)
    print(f"{len(masks)} pairs ({len(masks) // findings} images x {findings} findings, eval frame 1024x1024), cpu: "
          f"per-image calls {t_per_image * 1e3:.1f} ms, one batched call {t_batched * 1e3:.1f} ms; rows equal")
    if torch.cuda.is_available():
        gmaps = maps.cuda()
        ref = evaluate_batch(maps, geometries, sizes, masks)
        got = evaluate_batch(gmaps, geometries, sizes, masks)
        same = sum(g["hits_all"] == r["hits_all"] and g["hits_region"] == r["hits_region"] for g, r in zip(got, ref))
        g_per_image = best_of(sync(lambda: per_image(gmaps, geometries, sizes, masks, findings)), repeat=5)
        g_batched = best_of(sync(lambda: evaluate_batch(gmaps, geometries, sizes, masks)), repeat=5)
        print(f"gpu: per-image calls {g_per_image * 1e3:.1f} ms, one batched call {g_batched * 1e3:.2f} ms; "
              f"counts equal to the cpu's for {same} of {len(ref)} pairs (float32 eval-frame products on the device)")
        print(f"gpu_batched_vs_per_image: {g_per_image / g_batched:.1f}x")
        print(f"gpu_batched_vs_cpu_batched: {t_batched / g_batched:.1f}x")
    return t_per_image / t_batched


def main() -> None:
    maps, masks = make_case()
    m, r = maps[0].numpy(), masks[0].numpy()
    stats = grounding_stats(maps, masks)
    hits_all, hits_region = naive_counts(m, r)
    assert np.array_equal(stats.hits_all[0].numpy(), hits_all), "counts differ from the naive loop"
    assert np.array_equal(stats.hits_region[0].numpy(), hits_region), "region counts differ"
    print(f"map 1024x1024 from 14x14, region {r.mean():.1%}, thresholds {len(THRESHOLDS)}: counts agree exactly")
    t_naive = best_of(lambda: naive_counts(m, r))
    t_one = best_of(lambda: grounding_stats(maps, masks))
    print(f"naive loop (numpy, 101 thresholds): {t_naive * 1e3:8.2f} ms")
    print(f"one pass (cpu):                    {t_one * 1e3:8.2f} ms")
    if torch.cuda.is_available():
        batch, bmasks = make_case(n=32)
        t_cpu = best_of(lambda: grounding_stats(batch, bmasks), repeat=5)
        gb, gm = batch.cuda(), bmasks.cuda()

        def on_gpu() -> None:
            grounding_stats(gb, gm)
            torch.cuda.synchronize()

        got = grounding_stats(gb, gm)
        ref = grounding_stats(batch, bmasks)
        assert torch.equal(got.hits_all.cpu(), ref.hits_all) and torch.equal(got.hits_region.cpu(), ref.hits_region)
        t_gpu = best_of(on_gpu)
        print(f"32 maps: cpu {t_cpu * 1e3:.1f} ms, gpu {t_gpu * 1e3:.2f} ms; counts agree")
        print(f"gpu_vs_cpu_batch32: {t_cpu / t_gpu:.1f}x")
        print(f"gpu_vs_naive_per_map: {t_naive * 32 / t_gpu:.1f}x")
    batched = compare_batched()
    print(f"speedup: {t_naive / t_one:.2f}x (one map), batched_vs_per_image: {batched:.2f}x")


if __name__ == "__main__":
    main()
