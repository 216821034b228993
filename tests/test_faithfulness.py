"""The faithfulness pass: perturbation baselines against naive implementations, its pieces against
hand-computed cases, and known answers on the phantom with the `contrast`, `random` and `center`
reference models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xbench_core.engine.config import build_config
from xbench_core.engine.faithfulness import (
    FaithfulnessSettings,
    control_region,
    input_mask,
    ranks,
    spearman,
    step_counts,
    trapezoid,
)
from xbench_core.engine.perturbation import NEIGHBOURS, linear_impute, perturb
from xbench_core.engine.session import execute
from xbench_core.errors import ConfigError
from xbench_core.geometry import Geometry
from xbench_core.metrics.aggregate import aggregate
from xbench_core.metrics.builtin import pointing_game
from xbench_core.plugins import get_registry


def _road_naive(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation written directly: one equation per removed pixel, dense solve."""
    c, h, w = img.shape
    holes = [(y, x) for y in range(h) for x in range(w) if not keep[y, x]]
    index = {p: i for i, p in enumerate(holes)}
    a = np.zeros((len(holes), len(holes)))
    b = np.zeros((len(holes), c))
    for i, (y, x) in enumerate(holes):
        for (dy, dx), wgt in NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                continue
            a[i, i] += wgt
            if keep[yy, xx]:
                b[i] += wgt * img[:, yy, xx]
            else:
                a[i, index[(yy, xx)]] -= wgt
    out = img.copy()
    sol = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(holes):
        out[:, y, x] = sol[i]
    return out


def test_linear_imputation_matches_direct_solve() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((2, 12, 15))
    keep = np.ones((12, 15), bool)
    keep[3:9, 4:11] = False
    keep[0, 0] = False  # a hole at the corner: fewer neighbours
    got = linear_impute(torch.tensor(img[None], dtype=torch.float64), torch.tensor(keep[None]), noise=0.0, tol=1e-10)
    np.testing.assert_allclose(got[0].numpy(), _road_naive(img, keep), atol=1e-6)
    noisy = linear_impute(torch.tensor(img[None]), torch.tensor(keep[None]), noise=0.5, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(noisy[0].numpy()[:, keep], img[:, keep].astype(np.float32))  # kept pixels untouched
    assert np.abs(noisy[0].numpy() - _road_naive(img, keep))[:, ~keep].std() > 0.2


def test_blur_and_mean_replace_only_removed_pixels() -> None:
    x = torch.rand(1, 3, 20, 20)
    keep = torch.zeros(1, 20, 20, dtype=torch.bool)
    keep[0, :10] = True
    for baseline in ("blur", "mean"):
        out = perturb(x, keep, baseline)
        assert torch.equal(out[:, :, :10], x[:, :, :10])
        assert not torch.equal(out[:, :, 10:], x[:, :, 10:])
    mean = perturb(x, keep, "mean")
    torch.testing.assert_close(mean[0, :, 15, 3], x[0].mean(dim=(1, 2)))


def test_curve_helpers() -> None:
    assert step_counts(10, 4) == [0, 2, 5, 8, 10]  # round half to even at 2.5 and 7.5
    assert trapezoid([1.0, 0.0]) == 0.5
    assert trapezoid([1.0, 0.5, 0.0, 0.0]) == pytest.approx((0.75 + 0.25 + 0) / 3)
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    b[:5] = b[5]  # ties
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(np.ones(4), np.ones(4)) == 1.0
    assert spearman(np.ones(4), np.arange(4.0)) is None
    r = ranks(torch.tensor([[0.1, 0.9], [0.5, 0.5]]), torch.Generator().manual_seed(0))
    assert r[0, 1] == 0 and r[0, 0] == 3 and {int(r[1, 0]), int(r[1, 1])} == {1, 2}


def test_control_region_same_shape_elsewhere() -> None:
    region = np.zeros((32, 32), bool)
    region[5:9, 3:10] = True
    mirror = control_region(region)
    assert mirror.sum() == region.sum() and not (mirror & region).any()
    assert mirror[5:9, 22:29].all()
    middle = np.zeros((32, 32), bool)
    middle[10:14, 12:20] = True  # its mirror is itself: a translation instead
    moved = control_region(middle)
    assert moved.sum() == middle.sum() and not (moved & middle).any()
    ys, xs = np.nonzero(moved)
    assert ys.max() - ys.min() == 3 and xs.max() - xs.min() == 7


def test_input_mask_follows_geometry() -> None:
    mask = np.zeros((40, 80), bool)
    mask[10:20, 40:80] = True
    geom = Geometry.squash((40, 80), (20, 20))
    got = input_mask(mask, geom, grow=0)
    assert got.shape == (20, 20)
    assert got[5:10, 10:].all() and got.sum() == 50
    grown = input_mask(mask, geom)
    assert grown[4:11, 9:].all() and grown.sum() == 7 * 11
    half = input_mask(mask[::2, ::2], geom, grow=0)  # an eval frame at half the original size
    assert np.array_equal(half, got)


def test_settings_are_validated() -> None:
    assert FaithfulnessSettings.parse(None) is None and FaithfulnessSettings.parse(False) is None
    assert FaithfulnessSettings.parse(True) == FaithfulnessSettings()
    s = FaithfulnessSettings.parse({"steps": 4, "baseline": "linear", "measures": "ablation,sanity"})
    assert s.steps == 4 and s.baseline == "linear" and s.measures == ("ablation", "sanity")
    for bad in ({"stpes": 3}, {"baseline": "zero"}, {"steps": 0}, {"measures": ["nope"]}, {"random_order": "maybe"}, 3):
        with pytest.raises(ConfigError):
            FaithfulnessSettings.parse(bad)


def _record(i: int, finding: str, faith: dict[str, Any]) -> dict[str, Any]:
    stats = {"hits_all": [100] * 101, "hits_region": [10] * 101, "region_px": 10, "total_px": 100,
             "pointing_game": float(i % 2), "ebpg": 0.1}
    return {"dataset": "d", "id": f"im{i}", "model": "m", "explainer": "native", "finding": finding, "n": 1,
            "label": 1, "score": 0.9, "stats": stats, "error": None, "faithfulness": faith}


def test_aggregation_means_intervals_and_causal_subset() -> None:
    recs = []
    for i in range(6):
        recs.append(_record(i, "a", {"ablation_drop": 0.1 * i, "ablation_control_drop": 0.0, "deletion_auc": 0.2,
                                     "causal": i % 2 == 1, "deletion_curve": [0.9, 0.1, 0.0]}))
    recs.append(_record(6, "b", {"ablation_drop": 1.0, "ablation_control_drop": 0.5, "causal": None}))
    out = aggregate(recs, {"pointing_game": pointing_game})
    rows = {r["finding"]: r for r in out["rows"]}
    a = rows["a"]
    assert a["ablation_drop"] == pytest.approx(0.25) and a["ablation_gap"] == pytest.approx(0.25)
    assert a["causal_retention"] == pytest.approx(0.5) and a["n_called_positive"] == 6
    assert a["deletion_curve"] == [0.9, 0.1, 0.0] and a["sanity_rank_corr"] is None
    lo, hi = a["ablation_drop_ci"]
    assert 0 <= lo < 0.25 < hi <= 0.5
    assert a["causal_subset"] == {"n_regions": 3, "pointing_game": 1.0}  # images 1, 3, 5
    assert rows["b"]["causal_retention"] is None and rows["b"]["ablation_gap"] == 0.5
    mean = rows["__mean__"]
    assert mean["ablation_drop"] == pytest.approx((0.25 + 1.0) / 2)
    assert mean["causal_retention"] == pytest.approx(0.5)
    assert mean["ablation_drop_ci"] is not None


@pytest.fixture(scope="module")
def phantom_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("faith") / "run"
    cfg = build_config({
        "datasets": [{"name": "phantom", "size": 24, "resolution": 128}],
        "models": ["contrast", "random", "center"],
        "out": str(out), "batch_size": 8, "save_maps": False,
        "faithfulness": {"steps": 5},
    }, get_registry())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small tensors: threads only wait for each other
    try:
        store, results = execute(cfg, get_registry(), quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    rows: dict[Any, Any] = {(r["model"], r["finding"]): r for r in results["rows"]}
    rows["records"] = list(store.records())
    return rows


def test_contrast_known_answers(phantom_results: dict[str, Any]) -> None:
    nodule = phantom_results[("contrast", "nodule")]
    assert nodule["n_faithfulness"] >= 5
    assert nodule["ablation_drop"] > 0.3 > 0.05 > nodule["ablation_control_drop"]
    # an image whose only finding is the lesion: removing it flips the call, removing the rest does not
    by_image: dict[str, dict[str, Any]] = {}
    for r in phantom_results["records"]:
        if r["model"] == "contrast" and r["finding"]:
            by_image.setdefault(r["id"], {})[r["finding"]] = r
    alone = [fs[f]["faithfulness"]["causal"] for fs in by_image.values() for f in ("nodule", "mass", "consolidation")
             if f in fs and fs[f].get("faithfulness") and sum(x["label"] for x in fs.values()) == 1]
    assert len(alone) >= 3 and np.mean([c is True for c in alone]) >= 0.75
    mean = phantom_results[("contrast", "__mean__")]
    assert mean["deletion_auc"] < mean["deletion_auc_random"] - 0.15
    assert mean["ablation_gap"] > 0.1
    assert mean["sanity_rank_corr"] < 0.9  # its maps change when its layers are randomized
    for field in ("ablation_drop", "deletion_auc", "sanity_rank_corr", "causal_retention"):
        assert mean[f"{field}_ci"] is not None


def test_random_sits_at_chance_and_center_is_flagged(phantom_results: dict[str, Any]) -> None:
    rnd = phantom_results[("random", "__mean__")]
    assert abs(rnd["ablation_gap"]) < 0.15
    assert abs(rnd["deletion_auc"] - rnd["deletion_auc_random"]) < 0.1
    center = phantom_results[("center", "__mean__")]
    assert center["sanity_rank_corr"] == 1.0  # its map never changes: flagged
    assert center["ablation_drop"] == 0.0 and center["deletion_auc"] == center["deletion_auc_random"] == 0.5


def test_off_by_default_and_recorded(tmp_path: Path) -> None:
    cfg = build_config({"models": ["center"]}, get_registry())
    assert cfg.faithfulness is None and "faithfulness" not in cfg.evaluation_identity()
    on = build_config({"models": ["center"], "faithfulness": {"steps": 3}}, get_registry())
    assert on.as_dict()["faithfulness"]["steps"] == 3 and on.evaluation_identity()["faithfulness"]["steps"] == 3
