"""The analysis in results.json: bootstrap intervals against a plain loop over resamples, the joint
resampling of mean rows, lesion-size strata and threshold modes on hand-made records whose answers
are known, validation/test pairing, and the fit across models against scipy's linregress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import linregress
from scipy.stats import t as student_t

from xbench_core import DatasetSpec, Option, hookimpl
from xbench_core.builtin.phantom import Phantom
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.grounding import grounding_stats
from xbench_core.metrics import bootstrap as bs
from xbench_core.metrics import builtin
from xbench_core.metrics.aggregate import MEAN, aggregate
from xbench_core.metrics.analysis import (
    AnalysisOptions,
    linear_fit,
    recognition_vs_grounding,
    split_resolver,
)
from xbench_core.metrics.data import FindingData, Undefined
from xbench_core.testing import temporary_plugin

METRICS = {n: getattr(builtin, n) for n in ("pointing_game", "ebpg", "dice", "iou", "auroc", "auprc", "f1", "accuracy")}
RESAMPLES = 200  # the loops below call the built-in metrics once per resample


def _stats(seed: int, m: int, size: int = 16) -> list[dict]:
    """Grounding statistics of m random maps, half of them correlated with their region."""
    rng = np.random.default_rng(seed)
    maps = rng.random((m, size, size), dtype=np.float32)
    masks = np.zeros((m, size, size), bool)
    for i in range(m):
        y, x = rng.integers(0, size - 5, size=2)
        masks[i, y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = True
        if i % 2:
            maps[i][masks[i]] = np.clip(maps[i][masks[i]] + 0.5, 0, 1)
    return grounding_stats(torch.from_numpy(maps), torch.from_numpy(masks)).rows()


def _records(seed: int = 0, n: int = 18, findings: tuple[str, ...] = ("a", "b"), dataset: str = "ds", split=None) -> list[dict]:
    """Records of n images and some findings: labels (few positives), tied scores, regions for positives."""
    rng = np.random.default_rng(seed)
    out = []
    for j, f in enumerate(findings):
        stats = _stats(seed * 10 + j, n)
        for i in range(n):
            label = int(rng.random() < 0.15) if i > 1 else i  # both classes, few positives
            score = float(np.round(0.25 * label + rng.random() * 0.75, 1))  # ties
            if f == findings[-1] and i == n - 1:
                continue  # an image the last finding does not know: the mean row's images differ
            out.append({"dataset": dataset, "split": split, "model": "m", "explainer": "native", "id": f"img{i:02d}",
                        "finding": f, "label": label, "score": score, "stats": stats[i] if label else None})
    return out


def _percentile(values: list[float]) -> tuple[list[float] | None, int]:
    v = np.array([x for x in values if x is not None])
    if len(v) < 2:
        return None, len(v)
    return list(np.percentile(v, [2.5, 97.5])), len(v)


def _metric_values(d: FindingData) -> dict[str, float | None]:
    """Every headline value of a FindingData by the built-in metrics (None where undefined)."""
    out: dict[str, float | None] = {}
    for fn in METRICS.values():
        for k, v in fn(d).items():
            out[k] = None if isinstance(v, Undefined) else float(v)
    best, fixed = out.get("dice_best"), out.get("dice_fixed")
    out["calibration_gap"] = None if best is None or fixed is None else best - fixed
    return out


GROUNDING = ("pointing_game", "ebpg", "dice_fixed", "iou_fixed", "dice_best", "iou_best", "calibration_gap")
CLASSIFICATION = ("auroc", "auprc", "f1", "f1_best", "accuracy", "accuracy_best")


def test_finding_intervals_equal_a_plain_bootstrap_loop() -> None:
    options = AnalysisOptions(seed=3, resamples=RESAMPLES)
    results = aggregate(_records(), METRICS, options=options)
    row = next(r for r in results["rows"] if r["finding"] == "a")
    d = FindingData(
        labels=np.array([r["label"] for r in _records() if r["finding"] == "a"]),
        scores=np.array([r["score"] for r in _records() if r["finding"] == "a"]),
    )
    stats = [r["stats"] for r in _records() if r["finding"] == "a" and r["stats"]]
    g = FindingData(
        hits_all=np.array([s["hits_all"] for s in stats]), hits_region=np.array([s["hits_region"] for s in stats]),
        region_px=np.array([s["region_px"] for s in stats]), total_px=np.array([s["total_px"] for s in stats]),
        pointing_game=np.array([s["pointing_game"] for s in stats]), ebpg=np.array([s["ebpg"] for s in stats]),
    )
    # grounding: the positive images with a region, resampled with the documented generator
    idx = bs.resample_indices(g.n_regions, bs.generator(3, "ds", "None", "a", "grounding"), RESAMPLES)
    loop = [_metric_values(g.subset(grounding_rows=i)) for i in idx]
    for name in GROUNDING:
        ci, valid = _percentile([v[name] for v in loop])
        assert row[f"{name}_ci"] == pytest.approx(ci, abs=1e-12), name
        assert row["ci_valid"][name] == valid == RESAMPLES
    # classification: the labelled images; resamples with one class are skipped
    idx = bs.resample_indices(len(d.labels), bs.generator(3, "ds", "None", "a", "classification"), RESAMPLES)
    loop = [_metric_values(d.subset(images=i)) for i in idx]
    for name in CLASSIFICATION:
        ci, valid = _percentile([v[name] for v in loop])
        assert row[f"{name}_ci"] == pytest.approx(ci, abs=1e-12), name
        assert row["ci_valid"][name] == valid
    assert row["ci_valid"]["auroc"] < RESAMPLES  # few positives: some resamples have one class
    assert row["ci_valid"]["accuracy"] == RESAMPLES
    assert row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]


def test_mean_row_intervals_resample_images_jointly() -> None:
    options = AnalysisOptions(seed=1, resamples=RESAMPLES)
    records = _records(seed=2)
    results = aggregate(records, METRICS, options=options)
    mean = next(r for r in results["rows"] if r["finding"] == MEAN)
    universe = sorted({r["id"] for r in records})
    idx = bs.resample_indices(len(universe), bs.generator(1, "ds", "None", MEAN), RESAMPLES)
    per_finding = {}
    for f in ("a", "b"):
        mine = [r for r in records if r["finding"] == f]
        per_finding[f] = (mine, {r["id"]: k for k, r in enumerate(mine)})
    loop: dict[str, list[float | None]] = {n: [] for n in GROUNDING + CLASSIFICATION}
    for draw in idx:
        drawn = [universe[i] for i in draw]
        values = {}
        for f, (mine, pos) in per_finding.items():
            rows = [mine[pos[i]] for i in drawn if i in pos]  # an image drawn k times counts k times
            stats = [r["stats"] for r in rows if r["stats"]]
            d = FindingData(
                labels=np.array([r["label"] for r in rows], np.int64), scores=np.array([r["score"] for r in rows]),
                hits_all=np.array([s["hits_all"] for s in stats]).reshape(-1, 101),
                hits_region=np.array([s["hits_region"] for s in stats]).reshape(-1, 101),
                region_px=np.array([s["region_px"] for s in stats]), total_px=np.array([s["total_px"] for s in stats]),
                pointing_game=np.array([s["pointing_game"] for s in stats]), ebpg=np.array([s["ebpg"] for s in stats]),
            )
            values[f] = _metric_values(d)
        for n in loop:
            vals = [values[f][n] for f in values]
            loop[n].append(None if any(v is None for v in vals) else float(np.mean(vals)))
    for n in GROUNDING + CLASSIFICATION:
        ci, valid = _percentile(loop[n])
        assert mean[f"{n}_ci"] == pytest.approx(ci, abs=1e-12), n
        assert mean["ci_valid"][n] == valid, n


def test_intervals_are_reproducible_and_the_default_is_1000_resamples() -> None:
    records = _records(seed=4)
    a = aggregate(records, METRICS)
    b = aggregate(list(reversed(records)), METRICS)
    assert json.dumps(a["rows"]) == json.dumps(b["rows"])
    row = next(r for r in a["rows"] if r["finding"] == "a")
    assert row["ci_valid"]["dice_fixed"] == 1000
    assert a["analysis"]["bootstrap"]["resamples"] == 1000
    other = aggregate(records, METRICS, options=AnalysisOptions(seed=1))
    row2 = next(r for r in other["rows"] if r["finding"] == "a")
    assert row2["auroc"] == row["auroc"] and row2["auroc_ci"] != row["auroc_ci"]


@pytest.mark.parametrize("digits", [1, None])  # with ties, and without
def test_classification_resamples_equal_the_builtin_metrics_on_repeated_data(digits: int | None) -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(30) < 0.4).astype(np.int64)
    scores = rng.random(30) if digits is None else np.round(rng.random(30), digits)
    idx = bs.resample_indices(30, rng, 100)
    classification = [(METRICS[n], "classification") for n in ("auroc", "auprc", "f1", "accuracy")]
    got = bs.resamples(FindingData(labels=labels, scores=scores), classification, bs.counts(idx, 30))
    for b, i in enumerate(idx):
        want = _metric_values(FindingData(labels=labels[i], scores=scores[i]))
        for n in CLASSIFICATION:
            if want[n] is None:
                assert np.isnan(got[n][b])
            else:
                assert got[n][b] == pytest.approx(want[n], abs=1e-12), (n, b)


# ---- hand-made grounding statistics --------------------------------------------------------------
TOTAL = 1000


def _step(region: int, low: int, high: int, total: int = TOTAL, pg: float = 1.0) -> dict:
    """Statistics of a map that covers the whole image below tau_low, exactly the region for
    tau_low..tau_high, and nothing above: Dice 2R/(T+R), then 1, then 0."""
    k = np.arange(101)
    hits_all = np.where(k < low, total, np.where(k <= high, region, 0))
    hits_region = np.where(k <= high, region, 0)
    return {"hits_all": hits_all.tolist(), "hits_region": hits_region.tolist(), "region_px": region, "total_px": total,
            "area_fraction": region / total, "pointing_game": pg, "ebpg": region / total, "constant_map": False}


def _grounding_records(steps: list[dict], finding: str = "f", dataset: str = "ds", split=None, prefix: str = "i") -> list[dict]:
    return [{"dataset": dataset, "split": split, "model": "m", "explainer": "native", "id": f"{prefix}{i:02d}", "finding": finding,
             "label": 1, "score": 0.9, "stats": s} for i, s in enumerate(steps)]


def test_threshold_modes_on_known_curves() -> None:
    # every image: exactly its region for tau in [0.70, 0.80] -> best tau 0.70, Dice 1; at 0.5 the map covers all
    region = 50
    records = _grounding_records([_step(region, 70, 80) for _ in range(10)])
    row = next(r for r in aggregate(records, METRICS)["rows"] if r["finding"] == "f")
    low = 2 * region / (TOTAL + region)
    assert row["dice_fixed"] == pytest.approx(low) and row["iou_fixed"] == pytest.approx(region / TOTAL)
    assert row["dice_best"] == 1.0 and row["best_threshold"] == 0.7 and row["iou_best"] == 1.0
    assert row["calibration_gap"] == pytest.approx(1 - low)
    assert row["dice_crossval"] == 1.0 and row["crossval_thresholds"] == [0.7] * 5
    assert row["threshold_modes"] == ["fixed", "best", "crossval"] and row["fixed_threshold"] == 0.5
    assert "dice_val" not in row


def test_crossval_tunes_on_the_other_folds() -> None:
    # 3 images peak in [0.20, 0.30], 2 in [0.60, 0.70]: the best tau on all is 0.20 (Dice 3/5 + small);
    # a held-out image of the minority is scored at 0.20 (Dice 0) unless its fold's others favour it
    steps = [_step(40, 20, 30)] * 3 + [_step(40, 60, 70)] * 2
    curves = FindingData(hits_all=np.array([s["hits_all"] for s in steps]), hits_region=np.array([s["hits_region"] for s in steps]),
                         region_px=np.array([40] * 5), total_px=np.array([TOTAL] * 5)).dice_curve()
    options = AnalysisOptions(seed=5, folds=5)
    row = next(r for r in aggregate(_grounding_records(steps), METRICS, options=options)["rows"] if r["finding"] == "f")
    folds = bs.assign_folds(5, 5, bs.generator(5, "ds", "None", "f", "crossval"))
    assert sorted(folds) == [0, 1, 2, 3, 4]  # leave-one-out with 5 images
    expected, taus = [], []
    for f in range(5):
        other = curves[folds != f].mean(axis=0)
        k = int(np.argmax(other))
        taus.append(k / 100)
        expected.extend(curves[folds == f, k])
    assert row["crossval_thresholds"] == taus
    assert row["dice_crossval"] == pytest.approx(np.mean(expected))
    # by hand: leaving out a majority image, the others tie 2 v 2 and the first tau (0.20) wins;
    # leaving out a minority image, 0.20 wins 3 v 1: the majority images score 1, the minority ones
    # are scored at 0.20, below their map's lower step, where the map covers the image: 2R / (T + R)
    assert row["dice_crossval"] == pytest.approx(3 / 5 + 2 / 5 * 80 / (TOTAL + 40))
    assert row["dice_best"] > row["dice_crossval"]


def test_val_split_threshold_is_applied_to_test() -> None:
    val = _grounding_records([_step(40, 20, 25)] * 4, split="val", prefix="v")
    test = _grounding_records([_step(40, 22, 40)] * 6, split="test", prefix="t")
    results = aggregate(val + test, METRICS)
    rows = {(r["split"], r["finding"]): r for r in results["rows"]}
    t = rows[("test", "f")]
    assert t["val_threshold"] == 0.2 and t["threshold_modes"] == ["fixed", "best", "crossval", "val"]
    assert t["dice_val"] == pytest.approx(2 * 40 / (TOTAL + 40))  # tau 0.20 < 0.22: the map covers everything
    assert t["dice_best"] == 1.0 and t["best_threshold"] == 0.22
    assert "dice_val" not in rows[("val", "f")]
    assert results["analysis"]["val_pairs"] == [{"dataset": "ds", "test_split": "test", "val_split": "val"}]
    assert rows[("test", MEAN)]["dice_val"] == t["dice_val"]


def test_split_resolver_tells_a_dataset_twice_apart_by_id() -> None:
    class Built:
        def __init__(self, split: str) -> None:
            self.split = split

        def ids(self) -> list[str]:
            return ["v1", "v2"] if self.split == "val" else ["t1"]

    class Spec:
        def build(self, **options):  # noqa: ANN003, ANN201
            return Built(options["split"])

    class Registry:
        datasets = {"chexlocalize": Spec()}

    config = {"datasets": [{"name": "chexlocalize", "split": "val"}, {"name": "chexlocalize", "split": "test"},
                           {"name": "phantom", "split": "test"}]}
    split_of, warnings = split_resolver(config, Registry())
    assert not warnings
    assert split_of({"dataset": "chexlocalize", "id": "v2"}) == "val"
    assert split_of({"dataset": "chexlocalize", "id": "t1"}) == "test"
    assert split_of({"dataset": "phantom", "id": "x"}) == "test"
    assert split_of({"dataset": "phantom", "id": "x", "split": "val"}) == "val"
    _, warnings = split_resolver(config, None)
    assert warnings and "chexlocalize" in warnings[0]


def test_strata_split_regions_by_area_fraction() -> None:
    # areas 0.5%, 0.99% (small), exactly 1% and 5% (medium), exactly 10% and 40% (large)
    areas = [5, 9.9, 10, 50, 100, 400]
    pgs = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5]
    steps = [_step(int(a * 10), 30, 60, total=TOTAL * 10, pg=p) for a, p in zip(areas, pgs)]
    row = next(r for r in aggregate(_grounding_records(steps), METRICS)["rows"] if r["finding"] == "f")
    strata = {s["stratum"]: s for s in row["strata"]}
    assert [s["stratum"] for s in row["strata"]] == ["small", "medium", "large"]
    assert strata["small"]["range"] == [0.0, 0.01] and strata["large"]["range"] == [0.1, 1.0]
    assert [strata[n]["n_regions"] for n in ("small", "medium", "large")] == [2, 2, 2]
    assert strata["small"]["pointing_game"] == 0.5
    assert strata["medium"]["pointing_game"] == 1.0
    assert strata["large"]["pointing_game"] == 0.25
    assert strata["large"]["dice_best"] == 1.0 and strata["large"]["best_threshold"] == 0.3
    assert strata["small"]["pointing_game_ci"] is not None and strata["small"]["ci_valid"]["pointing_game"] == 1000
    # configurable bounds: one bound gives two strata
    one = aggregate(_grounding_records(steps), METRICS, options=AnalysisOptions(strata=(0.05,)))
    row = next(r for r in one["rows"] if r["finding"] == "f")
    assert [(s["stratum"], s["n_regions"]) for s in row["strata"]] == [("small", 3), ("large", 3)]
    # the mean row: stratum means over findings, regions summed
    two = _grounding_records(steps) + _grounding_records(steps[:2], finding="g")
    mean = next(r for r in aggregate(two, METRICS)["rows"] if r["finding"] == MEAN)
    small = mean["strata"][0]
    assert small["n_regions"] == 4 and small["pointing_game"] == 0.5 and small["n_findings"] == 2
    assert mean["strata"][2]["n_regions"] == 2


def test_empty_stratum_is_null_with_a_reason_and_json_clean() -> None:
    steps = [_step(20, 30, 60) for _ in range(4)]  # all small
    results = aggregate(_grounding_records(steps), METRICS)
    row = next(r for r in results["rows"] if r["finding"] == "f")
    large = row["strata"][2]
    assert large["n_regions"] == 0 and large["pointing_game"] is None and large["undefined"]["pointing_game"]
    assert large["pointing_game_ci"] is None
    json.dumps(results, allow_nan=False)


# ---- the fit across models -----------------------------------------------------------------------
def _mean_rows(values: dict[tuple[str, str], tuple[float, float]]) -> list[dict]:
    return [{"dataset": d, "split": "test", "model": m, "explainer": "native", "finding": MEAN, "pointing_game": pg, "auroc": au}
            for (m, d), (pg, au) in values.items()]


def test_fit_against_linregress() -> None:
    rng = np.random.default_rng(0)
    values = {(f"model{i}", ds): (float(rng.random()), float(rng.random())) for i in range(6) for ds in ("x", "y")}
    values[("model9", "x")] = (0.4, None)  # a model without AUROC is left out
    fit = recognition_vs_grounding(_mean_rows(values))
    by_level = {f["level"]: f for f in fit["fits"]}
    pairs = by_level["model_dataset"]
    xs = [v[0] for k, v in values.items() if v[1] is not None]
    ys = [v[1] for v in values.values() if v[1] is not None]
    ref = linregress(xs, ys)
    assert pairs["n"] == 12
    assert pairs["slope"] == pytest.approx(ref.slope) and pairs["intercept"] == pytest.approx(ref.intercept)
    assert pairs["r2"] == pytest.approx(ref.rvalue**2)
    # the slope's 95% interval: slope +- t(0.975, n - 2) * standard error, as scipy computes it
    half = student_t.ppf(0.975, 10) * ref.stderr
    assert pairs["slope_ci"] == pytest.approx([ref.slope - half, ref.slope + half])
    models = by_level["model"]
    mx = [np.mean([values[(f"model{i}", d)][0] for d in ("x", "y")]) for i in range(6)]
    my = [np.mean([values[(f"model{i}", d)][1] for d in ("x", "y")]) for i in range(6)]
    ref = linregress(mx, my)
    assert models["n"] == 6 and models["r2"] == pytest.approx(ref.rvalue**2) and models["slope"] == pytest.approx(ref.slope)
    assert {p["model"] for p in models["points"]} == {f"model{i}" for i in range(6)}


def test_fit_leaves_out_validation_splits_and_says_when_undefined() -> None:
    rows = _mean_rows({("a", "x"): (0.2, 0.6), ("b", "x"): (0.4, 0.7)})
    rows.append({**rows[0], "split": "val", "pointing_game": 0.9, "auroc": 0.1})
    fit = recognition_vs_grounding(rows)["fits"][0]
    # issue 16 item 8: two models always lie on a line (R^2 = 1): no fit below three points
    assert fit["n"] == 2 and fit["r2"] is None and fit["slope"] is None and "at least 3" in fit["undefined"]
    assert "only 1 point:" in linear_fit([0.3], [0.5])["undefined"]
    assert linear_fit([0.3, 0.3, 0.3], [0.5, 0.6, 0.7])["slope"] is None
    flat = linear_fit([0.1, 0.3, 0.5], [0.5, 0.5, 0.5])
    assert flat["slope"] == 0.0 and flat["r2"] is None and "same AUROC" in flat["undefined"]
    three = linear_fit([0.1, 0.2, 0.3], [0.5, 0.7, 0.6])
    assert three["slope"] == pytest.approx(0.5) and three["slope_ci"][0] < 0 < three["slope_ci"][1]


# ---- one run holding a dataset's validation and test splits -------------------------------------
class _SplitPhantom(Phantom):
    """The phantom with a validation and a test split whose sample ids differ."""

    def __init__(self, size: int = 5, resolution: int = 64, split: str = "test") -> None:
        super().__init__(size=size, seed=0 if split == "test" else 1, resolution=resolution, split=split)

    def annotation(self, index: int) -> Any:
        sample = super().annotation(index)
        sample.id = f"{self.split}-{sample.id}"
        return sample


class _SplitPlugin:
    @hookimpl
    def xbench_register_datasets(self, register: Any) -> None:
        register(DatasetSpec(name="split-phantom", summary="phantom with val and test splits", factory=_SplitPhantom,
                             findings=Phantom(1).findings, splits=("val", "test"),
                             options=(Option("size", int, 5), Option("resolution", int, 64),
                                      Option("split", str, "test", choices=("val", "test")))))


def test_one_run_with_val_and_test_splits_pairs_them(tmp_path: Path) -> None:
    with temporary_plugin(_SplitPlugin(), "split-test") as registry:
        cfg = build_config({"datasets": [{"name": "split-phantom", "split": "val"}, {"name": "split-phantom", "split": "test"}],
                            "models": ["center"], "out": str(tmp_path / "r")}, registry)
        _, results = execute(cfg, registry, quiet=True)
    rows = {(r["split"], r["finding"]): r for r in results["rows"]}
    assert {s for s, _ in rows} == {"val", "test"}
    assert rows[("val", MEAN)]["n_images"] == rows[("test", MEAN)]["n_images"] == 5
    paired = [r for (s, f), r in rows.items() if s == "test" and f != MEAN and r["n_regions"]]
    assert paired
    for r in paired:
        val = rows[("val", r["finding"])]
        if val["n_regions"]:
            assert r["val_threshold"] == val["best_threshold"] and "val" in r["threshold_modes"]
            assert r["dice_val"] == pytest.approx(np.mean(
                [c[int(round(r["val_threshold"] * 100))] for c in _curves(results, r)]))
    assert results["analysis"]["val_pairs"] == [{"dataset": "split-phantom", "test_split": "test", "val_split": "val"}]
    manifest = json.loads((Path(results["run"]) / "manifest.json").read_text())
    assert {k: d["images"] for k, d in manifest["datasets"].items()} == {"split-phantom.val": 5, "split-phantom.test": 5}


def _curves(results: dict, row: dict) -> list[list[float]]:
    """Per-image Dice curves of a row, from its run's records."""
    from xbench_core.store import RunStore

    recs = [r for r in RunStore(results["run"]).records()
            if r["finding"] == row["finding"] and r["id"].startswith("test-") and r.get("stats")]
    out = []
    for r in recs:
        s = r["stats"]
        out.append([2 * hr / (ha + s["region_px"]) for ha, hr in zip(s["hits_all"], s["hits_region"])])
    return out


@pytest.mark.parametrize("n", [0, 1, 7, 300, 3001])
def test_resample_counts_drawn_in_blocks_equal_one_draw(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bs, "BLOCK_ELEMENTS", 1000)  # many blocks of resamples
    got = bs.resample_counts(n, bs.generator(3, "a", "b"), 200)
    want = bs.counts(bs.resample_indices(n, bs.generator(3, "a", "b"), 200), n)
    assert got.shape == (200, n) and np.array_equal(got, want)
    assert got.dtype.itemsize <= 2  # compact: a count is at most n


def test_resamples_computed_in_blocks_equal_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    d = FindingData.synthetic(seed=4, n=300, m=120)
    labels = d.labels.copy()
    scores = np.round(d.scores, 2)  # ties between positives and negatives
    w_grd = bs.resample_counts(d.n_regions, bs.generator(0, "g"), 300)
    w_cls = bs.resample_counts(len(labels), bs.generator(0, "c"), 300)
    folds = bs.assign_folds(d.n_regions, 5, bs.generator(0, "f"))

    d.scores = scores
    grounding = [(METRICS[n], "grounding") for n in ("pointing_game", "ebpg", "dice", "iou")]
    classification = [(METRICS[n], "classification") for n in ("auroc", "auprc", "f1", "accuracy")]

    def compute() -> dict[str, np.ndarray]:
        out = bs.resamples(d, grounding, w_grd, extra=lambda d, w: bs.threshold_modes(d, w, folds=folds, val_index=30))
        return {**out, **bs.resamples(d, classification, w_cls)}

    whole = compute()
    monkeypatch.setattr(bs, "BLOCK_ELEMENTS", 5000)  # blocks of 16 and 41 resamples
    assert len(bs.row_blocks(300, 300)) > 1
    blocked = compute()
    assert whole.keys() == blocked.keys()
    for k in whole:
        np.testing.assert_allclose(blocked[k], whole[k], rtol=1e-13, atol=0, equal_nan=True, err_msg=k)


# ---- plugin metrics without a resample hook -------------------------------------------------------
def _median_ebpg(d: FindingData) -> dict:
    """A plugin grounding metric with no resample hook."""
    return {"median_ebpg": float(np.median(d.ebpg)) if d.n_regions else Undefined("no region")}


def _brier(d: FindingData) -> dict:
    """A plugin classification metric with no resample hook (lower is better)."""
    if not len(d.labels):
        return {"brier": Undefined("no label")}
    return {"brier": float(np.mean((d.scores - d.labels) ** 2))}


def test_plugin_metrics_without_a_hook_get_intervals_by_plain_resampling() -> None:
    options = AnalysisOptions(seed=3, resamples=RESAMPLES)
    metrics = {**METRICS, "median_ebpg": _median_ebpg, "brier": _brier}
    kinds = {"median_ebpg": "grounding", "brier": "classification"}
    results = aggregate(_records(), metrics, kinds=kinds, options=options)
    row = next(r for r in results["rows"] if r["finding"] == "a")
    plain = aggregate(_records(), METRICS, options=options)
    same = next(r for r in plain["rows"] if r["finding"] == "a")
    assert row["auroc_ci"] == same["auroc_ci"] and row["dice_best_ci"] == same["dice_best_ci"]
    records = [r for r in _records() if r["finding"] == "a"]
    labels = np.array([r["label"] for r in records])
    scores = np.array([r["score"] for r in records])
    ebpg = np.array([r["stats"]["ebpg"] for r in records if r["stats"]])
    # the documented draws: the finding's regions, then its labelled images
    idx = bs.resample_indices(len(ebpg), bs.generator(3, "ds", "None", "a", "grounding"), RESAMPLES)
    assert row["median_ebpg_ci"] == pytest.approx(_percentile([float(np.median(ebpg[i])) for i in idx])[0], abs=1e-12)
    idx = bs.resample_indices(len(labels), bs.generator(3, "ds", "None", "a", "classification"), RESAMPLES)
    want = _percentile([float(np.mean((scores[i] - labels[i]) ** 2)) for i in idx])[0]
    assert row["brier_ci"] == pytest.approx(want, abs=1e-12)
    assert row["ci_valid"]["brier"] == RESAMPLES
    # strata and mean rows too
    assert all("median_ebpg_ci" in s for s in row["strata"] if s["n_regions"])
    mean = next(r for r in results["rows"] if r["finding"] == MEAN)
    assert mean["brier_ci"] is not None and mean["median_ebpg_ci"] is not None
