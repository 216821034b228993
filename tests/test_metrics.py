"""Built-in metrics and aggregation against direct computations: Dice/IoU curves from the counts vs
per-image per-threshold masks, best threshold, AUROC/AUPRC vs scikit-learn, F1 and its best
threshold vs brute force, accuracy, undefined values, mean rows, Hamming accuracy, no NaN."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from xbench_core.grounding import THRESHOLDS, grounding_stats
from xbench_core.metrics import builtin
from xbench_core.metrics.aggregate import MEAN, aggregate, hamming_accuracy
from xbench_core.metrics.data import FindingData, Undefined, as_json_value

METRICS = {
    name: getattr(builtin, name)
    for name in ("pointing_game", "ebpg", "dice", "iou", "auroc", "auprc", "f1", "accuracy")
}


def random_case(seed: int, m: int = 15, size: int = 24):
    """Maps (already in [0, 1], with exact threshold values and ties) and non-empty masks."""
    rng = np.random.default_rng(seed)
    maps = rng.random((m, size, size), dtype=np.float32)
    # include values exactly on the grid and plateaus, where >= vs > matters
    maps[:, :4, :4] = THRESHOLDS[rng.integers(0, 101, size=(m, 4, 4))]
    maps[:, 0, 0], maps[:, -1, -1] = 0.0, 1.0
    masks = np.zeros((m, size, size), bool)
    for i in range(m):
        y, x = rng.integers(0, size - 4, size=2)
        hh, ww = rng.integers(1, size - y), rng.integers(1, size - x)
        masks[i, y : y + hh, x : x + ww] = True
        # maps correlated with the region for some images, so that the best threshold is not 0
        if i % 2:
            maps[i][masks[i]] = np.clip(maps[i][masks[i]] + 0.4, 0, 1)
    return maps, masks


def finding_data(maps: np.ndarray, masks: np.ndarray, labels=None, scores=None) -> FindingData:
    s = grounding_stats(torch.from_numpy(maps), torch.from_numpy(masks))
    n = len(maps)
    return FindingData(
        labels=np.ones(n, np.int64) if labels is None else np.asarray(labels, np.int64),
        scores=np.full(n, 0.7) if scores is None else np.asarray(scores, np.float64),
        hits_all=s.hits_all.numpy(),
        hits_region=s.hits_region.numpy(),
        region_px=s.region_pixels.numpy(),
        total_px=s.total_pixels.numpy(),
        pointing_game=s.pointing_game.numpy(),
        ebpg=s.ebpg.numpy(),
    )


def naive_curves(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dice = np.zeros((len(maps), 101))
    iou = np.zeros((len(maps), 101))
    for i, (v, r) in enumerate(zip(maps, masks)):
        for k, t in enumerate(THRESHOLDS):
            b = v >= t
            inter = np.sum(b & r)
            dice[i, k] = 2 * inter / (b.sum() + r.sum()) if b.sum() + r.sum() else 0.0
            iou[i, k] = inter / np.sum(b | r) if np.sum(b | r) else 0.0
    return dice, iou


# ---- grounding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_dice_and_iou_curves_equal_the_naive_computation(seed):
    maps, masks = random_case(seed)
    d = finding_data(maps, masks)
    dice, iou = naive_curves(maps, masks)
    np.testing.assert_allclose(d.dice_curve(), dice, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.iou_curve(), iou, rtol=0, atol=1e-12)
    out = {**builtin.dice(d), **builtin.iou(d)}
    mean_dice, mean_iou = dice.mean(axis=0), iou.mean(axis=0)
    k = int(np.argmax(mean_dice))
    assert out["dice_fixed"] == pytest.approx(mean_dice[50], abs=1e-12)
    assert out["iou_fixed"] == pytest.approx(mean_iou[50], abs=1e-12)
    assert out["best_threshold"] == pytest.approx(k / 100)
    assert out["dice_best"] == pytest.approx(mean_dice.max(), abs=1e-12)
    # IoU at the best-Dice threshold (not IoU's own maximum)
    assert out["iou_best"] == pytest.approx(mean_iou[k], abs=1e-12)
    assert builtin.best_threshold_index(d) == k
    assert out["dice_best"] >= out["dice_fixed"]


def test_best_threshold_is_the_argmax_of_the_mean_not_of_each_image():
    # image 0 is best at low thresholds, image 1 at high ones; the mean decides
    size = 10
    maps = np.zeros((2, size, size), np.float32)
    masks = np.zeros((2, size, size), bool)
    masks[:, :5] = True
    maps[0][:5] = 0.3  # region at 0.3
    maps[0][5:] = 0.2
    maps[1][:5] = 0.9
    maps[1][5:] = 0.6
    maps[:, 0, 0] = 0.0
    maps[:, -1, -1] = 1.0
    d = finding_data(maps, masks)
    dice, _ = naive_curves(maps, masks)
    assert builtin.dice(d)["best_threshold"] == int(np.argmax(dice.mean(axis=0))) / 100
    assert builtin.dice(d)["dice_best"] == pytest.approx(dice.mean(axis=0).max())


def test_fixed_threshold_other_than_half():
    maps, masks = random_case(7)
    d = finding_data(maps, masks)
    d.fixed_threshold = 0.3
    dice, iou = naive_curves(maps, masks)
    assert builtin.dice(d)["dice_fixed"] == pytest.approx(dice[:, 30].mean())
    assert builtin.iou(d)["iou_fixed"] == pytest.approx(iou[:, 30].mean())
    d.fixed_threshold = 0.305
    with pytest.raises(ValueError, match="0.01 grid"):
        builtin.dice(d)


def test_pointing_game_and_ebpg_are_means():
    maps, masks = random_case(3)
    d = finding_data(maps, masks)
    assert builtin.pointing_game(d)["pointing_game"] == pytest.approx(d.pointing_game.mean())
    expect = np.mean([(v * r).sum() / v.sum() for v, r in zip(maps.astype(np.float64), masks)])
    assert builtin.ebpg(d)["ebpg"] == pytest.approx(expect)


# ---- classification ----------------------------------------------------------------------------
def brute_force_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, set[float]]:
    """The best F1 over thresholds at every distinct score, and the thresholds reaching it."""
    best, arg = -1.0, set()
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        f = 2 * tp / (2 * tp + fp + fn)
        if f > best + 1e-12:
            best, arg = f, {float(t)}
        elif abs(f - best) <= 1e-12:
            arg.add(float(t))
    return best, arg


def f1_at(labels, scores, t):
    pred = scores >= t
    tp = np.sum(pred & (labels == 1))
    fp = np.sum(pred & (labels == 0))
    fn = np.sum(~pred & (labels == 1))
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0


@pytest.mark.parametrize("seed", range(25))
def test_classification_against_sklearn_and_brute_force(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(np.int64)
    labels[0], labels[1] = 0, 1
    if seed % 3 == 0:  # heavy ties: scores on a coarse grid
        scores = np.round(rng.random(n) * 4) / 4
    else:
        scores = np.clip(labels * rng.uniform(0, 0.5) + rng.random(n) * 0.7, 0, 1)
    d = FindingData(labels=labels, scores=scores)
    assert builtin.auroc(d)["auroc"] == pytest.approx(roc_auc_score(labels, scores), rel=1e-14)
    # exact: U / (n+ n-) with ties one half, rounded once (scikit-learn's trapezoid may be 1 ulp off)
    pos, neg = scores[labels == 1], scores[labels == 0]
    u = sum(Fraction(int(p > q) * 2 + int(p == q), 2) for p in pos for q in neg)
    assert builtin.auroc(d)["auroc"] == float(u / (len(pos) * len(neg)))
    # average precision in scikit-learn's arithmetic: equal bit for bit
    assert builtin.auprc(d)["auprc"] == average_precision_score(labels, scores)
    out = builtin.f1(d)
    assert out["f1"] == pytest.approx(f1_at(labels, scores, 0.5))
    best, args = brute_force_f1(labels, scores)
    assert out["f1_best"] == pytest.approx(best)
    assert out["f1_best_threshold"] in args
    acc = builtin.accuracy(d)
    assert acc["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == (labels == 1)))
    t = out["f1_best_threshold"]
    assert acc["accuracy_best"] == pytest.approx(np.mean((scores >= t) == (labels == 1)))


def test_f1_and_accuracy_by_hand():
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.6, 0.1, 0.55, 0.3])
    d = FindingData(labels=labels, scores=scores)
    # at 0.5: predicted 0.9, 0.6, 0.55 -> tp 2, fp 1, fn 1 -> F1 = 4 / 6
    assert builtin.f1(d)["f1"] == pytest.approx(4 / 6)
    assert builtin.accuracy(d)["accuracy"] == pytest.approx(4 / 6)
    # at 0.4: tp 3, fp 1, fn 0 -> F1 = 6 / 7, the best
    assert builtin.f1(d)["f1_best"] == pytest.approx(6 / 7)
    assert builtin.f1(d)["f1_best_threshold"] == 0.4
    assert builtin.accuracy(d)["accuracy_best"] == pytest.approx(5 / 6)


# ---- undefined values --------------------------------------------------------------------------
def _is_undefined(value) -> bool:
    return isinstance(value, Undefined) and bool(value.reason)


def test_undefined_values_have_reasons():
    one_class = FindingData(labels=np.ones(5, np.int64), scores=np.linspace(0, 1, 5))
    assert _is_undefined(builtin.auroc(one_class)["auroc"])
    assert "one class" in builtin.auroc(one_class)["auroc"].reason
    assert _is_undefined(builtin.auprc(one_class)["auprc"])
    # all positives: F1 exists
    assert builtin.f1(one_class)["f1"] == pytest.approx(f1_at(one_class.labels, one_class.scores, 0.5))

    negatives = FindingData(labels=np.zeros(5, np.int64), scores=np.linspace(0, 1, 5))
    for v in builtin.f1(negatives).values():
        assert _is_undefined(v) and "no positive" in v.reason
    acc = builtin.accuracy(negatives)
    assert acc["accuracy"] == pytest.approx(0.4) and _is_undefined(acc["accuracy_best"])

    empty = FindingData()
    for metric in METRICS.values():
        for v in metric(empty).values():
            assert _is_undefined(v), metric
    # no regions: grounding undefined, never 0
    for name in ("pointing_game", "ebpg", "dice", "iou"):
        for v in METRICS[name](one_class).values():
            assert _is_undefined(v) and "region" in v.reason


def test_as_json_value_never_lets_nan_out():
    assert as_json_value(Undefined("x")) is None and as_json_value(None) is None
    assert as_json_value(float("nan")) is None and as_json_value(np.inf) is None
    assert as_json_value(np.float32(0.25)) == 0.25 and isinstance(as_json_value(np.int64(3)), float)


# ---- aggregation -------------------------------------------------------------------------------
def make_records(seed: int = 0):
    """Records of two findings on 12 images; `a` has labels of both classes and regions, `b` only
    negatives (so its AUROC, F1 and grounding are undefined); plus one error record."""
    rng = np.random.default_rng(seed)
    maps, masks = random_case(seed, m=12, size=12)
    rows = grounding_stats(torch.from_numpy(maps), torch.from_numpy(masks)).rows()
    records, truth = [], {"a": [], "b": []}
    for i in range(12):
        la = int(i % 3 != 0)
        sa, sb = float(rng.random()), float(rng.random())
        rec_a = {"dataset": "ds", "model": "m", "explainer": "native", "id": f"img{i}",
                 "finding": "a", "label": la, "score": sa, "stats": rows[i] if la else None}
        rec_b = {"dataset": "ds", "model": "m", "explainer": "native", "id": f"img{i}",
                 "finding": "b", "label": 0, "score": sb, "stats": None}
        records += [rec_a, rec_b]
        truth["a"].append((la, sa, rows[i] if la else None, maps[i], masks[i]))
        truth["b"].append((0, sb))
    # an image whose label for b is unknown, and an error record
    records.append({"dataset": "ds", "model": "m", "explainer": "native", "id": "img12",
                    "finding": "a", "label": 1, "score": 0.8, "stats": None})
    truth["a"].append((1, 0.8, None, None, None))
    records.append({"dataset": "ds", "model": "m", "explainer": "native", "id": "img13",
                    "finding": "a", "error": "ImageReadError: truncated"})
    return records, truth


def test_aggregate_rows_match_direct_computation():
    from sklearn.metrics import roc_auc_score

    records, truth = make_records()
    results = aggregate(records, METRICS)
    text = json.dumps(results, allow_nan=False)  # never NaN
    assert "NaN" not in text
    rows = {(r["finding"]): r for r in results["rows"]}
    assert set(rows) == {"a", "b", MEAN}

    a = rows["a"]
    la = np.array([t[0] for t in truth["a"]])
    sa = np.array([t[1] for t in truth["a"]])
    assert a["n_images"] == 13 and a["n_positive"] == int(la.sum())
    grounded = [t for t in truth["a"] if t[2] is not None]
    assert a["n_regions"] == len(grounded) == 8
    assert a["auroc"] == pytest.approx(roc_auc_score(la, sa))
    dice, iou = naive_curves(np.stack([t[3] for t in grounded]), np.stack([t[4] for t in grounded]))
    assert a["dice_fixed"] == pytest.approx(dice[:, 50].mean())
    assert a["dice_best"] == pytest.approx(dice.mean(0).max())
    assert a["iou_best"] == pytest.approx(iou[:, int(np.argmax(dice.mean(0)))].mean())
    assert a["undefined"] == {}

    b = rows["b"]
    for key in ("auroc", "auprc", "f1", "f1_best", "f1_best_threshold", "pointing_game", "ebpg",
                "dice_fixed", "dice_best", "best_threshold", "iou_fixed", "iou_best", "accuracy_best"):
        assert b[key] is None, key
        assert b["undefined"][key], key
    assert b["accuracy"] == pytest.approx(np.mean([s < 0.5 for _, s in truth["b"]]))

    mean = rows[MEAN]
    assert mean["n_findings"] == 2 and mean["n_errors"] == 1 and mean["n_images"] == 14 - 1
    # means over findings, nulls left out
    assert mean["auroc"] == pytest.approx(a["auroc"])
    assert mean["accuracy"] == pytest.approx((a["accuracy"] + b["accuracy"]) / 2)
    assert mean["dice_best"] == pytest.approx(a["dice_best"])
    assert results["errors"] == [{"dataset": "ds", "model": "m", "explainer": "native",
                                  "id": "img13", "finding": "a", "error": "ImageReadError: truncated"}]
    # Hamming accuracy: per image, share of known findings right at 0.5, then the mean
    per_image = {}
    for r in records:
        if r.get("error"):
            continue
        per_image.setdefault(r["id"], []).append((r["score"] >= 0.5) == (r["label"] == 1))
    assert mean["hamming_accuracy"] == pytest.approx(np.mean([np.mean(v) for v in per_image.values()]))


def test_mean_row_is_null_when_every_finding_is_undefined():
    records = [
        {"dataset": "d", "model": "m", "explainer": "e", "id": f"i{i}", "finding": f,
         "label": 0, "score": 0.2, "stats": None}
        for i in range(3) for f in ("x", "y")
    ]
    results = aggregate(records, METRICS)
    json.dumps(results, allow_nan=False)
    mean = next(r for r in results["rows"] if r["finding"] == MEAN)
    assert mean["auroc"] is None and mean["undefined"]["auroc"] == "undefined for every finding"
    assert mean["accuracy"] == 1.0 and mean["hamming_accuracy"] == 1.0


def test_groups_are_separate():
    records, _ = make_records()
    other = [{**r, "model": "m2"} for r in records if r.get("finding") == "b"]
    results = aggregate(records + other, METRICS)
    means = [r for r in results["rows"] if r["finding"] == MEAN]
    assert [(r["model"], r["n_findings"]) for r in means] == [("m", 2), ("m2", 1)]


def test_hamming_accuracy_by_hand():
    pairs = {
        # image 1: 3 known findings, 2 right -> 2/3
        "1": {"a": (1, 0.9), "b": (0, 0.7), "c": (0, 0.1)},
        # image 2: 1 known finding, right (0.5 counts as positive) -> 1
        "2": {"a": (1, 0.5)},
        # image 3: 2 findings, none right -> 0
        "3": {"a": (0, 0.5), "b": (1, 0.49)},
        # an image without known labels does not count
        "4": {},
    }
    assert hamming_accuracy(pairs) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert hamming_accuracy({}) is None


def test_results_never_contain_nan_even_with_degenerate_maps():
    # constant maps (normalized to zeros), a region covering the whole image, scores of 0 and 1
    maps = np.zeros((3, 8, 8), np.float32)
    maps[1] = 0.5
    maps[2, 0, 0] = 1.0
    masks = np.ones((3, 8, 8), bool)
    masks[2] = False
    masks[2, 3, 3] = True
    rows = grounding_stats(torch.from_numpy(maps), torch.from_numpy(masks), normalized=False).rows()
    records = [
        {"dataset": "d", "model": "m", "explainer": "e", "id": str(i), "finding": "f",
         "label": 1, "score": float(i % 2), "stats": rows[i]}
        for i in range(3)
    ]
    results = aggregate(records, METRICS)
    json.dumps(results, allow_nan=False)
    for row in results["rows"]:
        for v in row.values():
            assert not (isinstance(v, float) and math.isnan(v))


def test_best_threshold_ties_within_rounding_go_to_the_lowest_tau():
    """Two taus whose mean Dice differ only by summation rounding (< 1e-12) tie: the first (lowest)
    wins, in the point estimate, the bootstrap and the validation threshold alike (one rule)."""
    hits_all = np.full((2, 101), 100)
    hits_region = np.zeros((2, 101), np.int64)
    hits_region[:, 10] = 30
    hits_region[:, 20] = 30
    d = FindingData(hits_all=hits_all, hits_region=hits_region, region_px=np.array([50, 50]), total_px=np.array([100, 100]),
                    pointing_game=np.zeros(2), ebpg=np.zeros(2))
    curve = d.dice_curve().copy()
    curve[:, 20] += 4e-16  # as a different summation order could leave it
    d.dice_curve = lambda: curve  # type: ignore[method-assign]
    assert int(np.argmax(curve.mean(axis=0))) == 20  # an exact argmax would take the later tau
    assert builtin.best_threshold_index(d) == 10
    assert builtin.dice(d)["best_threshold"] == 0.1
    assert builtin.dice.resample(d, np.ones((1, 2)))["dice_best"][0] == curve[:, 10].mean()


@pytest.mark.parametrize("name", list(METRICS))
def test_resample_hook_equals_the_metric_on_each_resample(name):
    """Every built-in metric's resample hook (weights) equals calling it on the resampled data."""
    from xbench_core.metrics import bootstrap as bs

    d = FindingData.synthetic(seed=5, n=40, m=12)
    d.scores = np.round(d.scores, 1)  # ties between positives and negatives
    metric = METRICS[name]
    kind = "grounding" if name in ("pointing_game", "ebpg", "dice", "iou") else "classification"
    n = d.n_regions if kind == "grounding" else len(d.labels)
    weights = bs.counts(bs.resample_indices(n, bs.generator(0, name), 60), n)
    hooked = metric.resample(d, weights)
    plain = bs.plain_resamples(metric, kind, d, weights)
    assert set(hooked) <= set(plain)
    for field, values in hooked.items():
        np.testing.assert_allclose(values, plain[field], rtol=0, atol=1e-12, equal_nan=True, err_msg=field)


# ---- the metric conformance suite on built-in metrics ----------------------------------------------
from xbench_core.testing import MetricPluginTests, get_registry  # noqa: E402


class TestDiceConforms(MetricPluginTests):
    name = "dice"

    @pytest.fixture(scope="class")
    @classmethod
    def metric(cls):
        return get_registry().metrics[cls.name].build()


class TestAurocConforms(TestDiceConforms):
    name = "auroc"
