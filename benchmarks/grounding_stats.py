"""One-pass grounding statistics against the naive per-threshold loop, measured in the same run.

The map: a 14x14 grid upsampled bilinearly to 1024x1024 (what every model's map becomes at a
typical original resolution), min-max normalized; the region: an ellipse of about 4% of the image.
The naive loop is the one a careful user writes: for each of the 101 thresholds, numpy
`b = m >= t; count_nonzero(b & r); count_nonzero(b)` on the same float32 array. The counts must agree
exactly. On a GPU, also the statistics of a batch of maps on the device against the same on the CPU.

Last line: `speedup: <naive_time / one_pass_time>x` (CPU, one map).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from xbench_core.grounding import THRESHOLDS, grounding_stats, naive_counts, normalize


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


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
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
    print(f"speedup: {t_naive / t_one:.2f}x")


if __name__ == "__main__":
    main()
