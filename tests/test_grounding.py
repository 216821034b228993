"""The one-pass grounding statistics equal a naive per-threshold loop, exactly."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xbench_core.geometry import Geometry
from xbench_core.grounding import (
    THRESHOLDS,
    _stats_torch,
    grounding_stats,
    naive_counts,
    normalize,
    threshold_bins,
    to_eval_frame,
)


def _check(values: np.ndarray, region: np.ndarray) -> None:
    stats = grounding_stats(torch.from_numpy(values)[None], torch.from_numpy(region)[None])
    # the accelerator path (torch ops), run here on the CPU, must agree with the numpy path
    other = _stats_torch(torch.from_numpy(values)[None], torch.from_numpy(region)[None])
    for name in ("hits_all", "hits_region", "region_pixels", "pointing_game", "constant"):
        np.testing.assert_array_equal(getattr(stats, name).numpy(), getattr(other, name).numpy())
    np.testing.assert_allclose(stats.ebpg.numpy(), other.ebpg.numpy(), rtol=1e-12)  # summation order
    hits_all, hits_region = naive_counts(values, region)
    np.testing.assert_array_equal(stats.hits_all[0].numpy(), hits_all)
    np.testing.assert_array_equal(stats.hits_region[0].numpy(), hits_region)
    assert int(stats.region_pixels[0]) == int(region.sum())
    peak = values.max()
    ties = values == peak
    assert float(stats.pointing_game[0]) == pytest.approx((ties & region).sum() / ties.sum())
    mass = values.astype(np.float64).sum()
    expect = (values * region).sum() / mass if mass > 0 else region.mean()
    assert float(stats.ebpg[0]) == pytest.approx(expect)


# values drawn to hit the thresholds exactly, their float neighbours, and ties
_special = st.sampled_from(
    [float(t) for t in THRESHOLDS]
    + [float(np.nextafter(t, np.float32(2))) for t in THRESHOLDS]
    + [float(np.nextafter(t, np.float32(-1))) for t in THRESHOLDS[1:]]
)
_value = st.one_of(_special, st.floats(0, 1, width=32))


@settings(max_examples=1500, deadline=None)
@given(
    values=st.lists(_value, min_size=1, max_size=64),
    seed=st.integers(0, 2**31),
    fill=st.sampled_from(["random", "tiny", "full"]),
)
def test_counts_equal_naive_loop(values: list[float], seed: int, fill: str) -> None:
    arr = np.clip(np.asarray(values, np.float32), 0, 1)
    rng = np.random.default_rng(seed)
    if fill == "full":
        region = np.ones(arr.shape, bool)
    elif fill == "tiny":
        region = np.zeros(arr.shape, bool)
        region[rng.integers(arr.size)] = True
    else:
        region = rng.random(arr.shape) < 0.3
    _check(arr, region)


def test_bins_match_comparisons_at_every_threshold_neighbour() -> None:
    vals = np.concatenate(
        [THRESHOLDS, np.nextafter(THRESHOLDS, np.float32(2)), np.nextafter(THRESHOLDS, np.float32(-1))]
    ).astype(np.float32)
    vals = np.clip(vals, 0, 1)
    expect = np.array([np.flatnonzero(v >= THRESHOLDS).max() for v in vals])
    np.testing.assert_array_equal(threshold_bins(torch.from_numpy(vals)).numpy(), expect)
    np.testing.assert_array_equal(threshold_bins(vals), expect)


def test_realistic_map_and_batch() -> None:
    rng = np.random.default_rng(1)
    coarse = torch.from_numpy(rng.random((3, 14, 14), dtype=np.float32))
    big = torch.nn.functional.interpolate(coarse[None], size=(256, 256), mode="bilinear")[0]
    maps, constant = normalize(big)
    regions = torch.zeros(3, 256, 256, dtype=torch.bool)
    regions[0, 10:40, 20:90] = True
    regions[1, 100:101, 5:6] = True
    regions[2] = True
    stats = grounding_stats(maps, regions)
    for i in range(3):
        a, r = naive_counts(maps[i].numpy(), regions[i].numpy())
        np.testing.assert_array_equal(stats.hits_all[i].numpy(), a)
        np.testing.assert_array_equal(stats.hits_region[i].numpy(), r)
    assert not constant.any()
    assert stats.ebpg[2] == pytest.approx(1.0) and stats.pointing_game[2] == 1.0


def test_constant_map_is_flagged_and_uniform() -> None:
    maps, constant = normalize(torch.full((1, 8, 8), 3.0))
    assert constant.tolist() == [True] and float(maps.abs().max()) == 0.0
    region = torch.zeros(1, 8, 8, dtype=torch.bool)
    region[0, :2] = True
    stats = grounding_stats(maps, region)
    assert bool(stats.constant[0])
    assert float(stats.pointing_game[0]) == pytest.approx(0.25)
    assert float(stats.ebpg[0]) == pytest.approx(0.25)
    assert stats.hits_all[0, 0] == 64 and stats.hits_all[0, 1] == 0


def test_pointing_game_ties_fraction() -> None:
    values = np.zeros((1, 4, 4), np.float32)
    values[0, 0, 0] = values[0, 3, 3] = 1.0
    region = np.zeros((1, 4, 4), bool)
    region[0, 0, 0] = True
    stats = grounding_stats(torch.from_numpy(values), torch.from_numpy(region))
    assert float(stats.pointing_game[0]) == 0.5


def test_eval_frame_identity_and_crop_fill() -> None:
    m = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    same = to_eval_frame(m, Geometry.identity((4, 4)), (4, 4))
    torch.testing.assert_close(same, m)
    # a center crop of a wide image: columns outside the crop take the map's minimum
    geom = Geometry.shortest_side_crop((4, 8), 4, 4)
    out = to_eval_frame(m, geom, (4, 8))
    assert out.shape == (1, 4, 8)
    assert torch.all(out[0, :, :2] == 0) and torch.all(out[0, :, -2:] == 0)
    torch.testing.assert_close(out[0, :, 2:6], m[0])


def test_eval_frame_matches_bilinear_upsampling_for_squash() -> None:
    rng = np.random.default_rng(3)
    m = torch.from_numpy(rng.random((2, 7, 7), dtype=np.float32))
    geom = Geometry.squash((50, 30), (224, 224))
    out = to_eval_frame(m, geom, (50, 30))
    ref = torch.nn.functional.interpolate(m[None], size=(50, 30), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_eval_frame_matches_grid_sample_for_letterbox() -> None:
    rng = np.random.default_rng(4)
    m = torch.from_numpy(rng.random((3, 14, 14), dtype=np.float32))
    geom = Geometry.letterbox_crop((300, 180), 256, 224)
    he, we = 150, 90
    out = to_eval_frame(m, geom, (he, we))
    gy, gx = geom.sampling_grid((he, we))
    grid = torch.stack(
        [torch.from_numpy(gx).float().view(1, we).expand(he, we), torch.from_numpy(gy).float().view(he, 1).expand(he, we)], -1
    )[None]
    ref = torch.nn.functional.grid_sample(m[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    inside = torch.from_numpy((np.abs(gy)[:, None] <= 1) & (np.abs(gx)[None, :] <= 1))
    torch.testing.assert_close(out[:, inside], ref[:, inside], rtol=1e-5, atol=1e-5)
    low = m.flatten(1).amin(1)
    for f in range(3):
        assert torch.all(out[f][~inside] == low[f])


def test_numpy_and_torch_paths_agree_on_frame_and_normalization() -> None:
    rng = np.random.default_rng(5)
    raw = rng.random((2, 14, 14), dtype=np.float32)
    geom = Geometry.letterbox_crop((200, 120), 256, 224)
    a = to_eval_frame(raw, geom, (100, 60))
    b = to_eval_frame(torch.from_numpy(raw), geom, (100, 60))
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-6)
    na, ca = normalize(a.copy())
    nb, cb = normalize(torch.from_numpy(a.copy()))
    np.testing.assert_array_equal(na, nb.numpy())
    np.testing.assert_array_equal(ca, cb.numpy())
    assert na.max() == 1.0 and na.min() == 0.0


def test_fast_bin_counts_equal_exact_bins_near_every_threshold() -> None:
    from xbench_core.grounding import _bin_counts

    near = [THRESHOLDS]
    for direction in (np.float32(2), np.float32(-1)):
        step = THRESHOLDS.copy()
        for _ in range(4):  # four float32 neighbours on each side of every threshold
            step = np.nextafter(step, direction)
            near.append(step)
    rng = np.random.default_rng(9)
    vals = np.clip(np.concatenate([*near, rng.random(100_000, dtype=np.float32)]), 0, 1).astype(np.float32)
    exact = np.bincount(threshold_bins(vals), minlength=101)
    np.testing.assert_array_equal(_bin_counts(vals), exact)
