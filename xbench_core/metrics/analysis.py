"""Analysis on top of the per-finding metrics: bootstrap confidence intervals, lesion-size strata,
threshold selection modes, and the fit of recognition against grounding across models.

Threshold modes for Dice and IoU (every grounding row states them in `threshold_modes`):
- `fixed`: the map thresholded at `grounding.fixed_threshold` (0.5);
- `best`: the tau of the 0.01 grid maximizing this finding's mean Dice on the same images
  (optimistic, as the paper does); `calibration_gap = dice_best - dice_fixed`;
- `crossval`: the images dealt into k folds (seeded; k = 5, fewer when there are fewer images); each
  fold's images are scored at the tau maximizing the mean Dice of the other folds; the pooled mean
  over all images is an honest estimate of a tuned threshold;
- `val`: when a run holds the same dataset as a validation split (`val`, `valid`, `validation`,
  `dev`) and as `test`, the tau maximizing the finding's mean Dice on the validation records is
  applied to the test records (as cheXlocalize does).

Strata: the positive images with a region are split by the region's area fraction at the bounds
`grounding.strata` (default 0.01 and 0.1: small < 1%, medium 1-10%, large >= 10%); each stratum gets
every grounding metric (its `best` tau tuned within the stratum, its `val` tau that of the whole
finding), with intervals.

Confidence intervals: see `bootstrap`. Finding rows resample the finding's own images (positive
images with a region for grounding, labelled images for classification), plainly (not stratified
by class): a resample with one class has no AUROC and is skipped. Mean rows resample the images of
the (dataset, split, model, explainer) jointly: an image drawn k times counts k times in every
finding it belongs to, and the resample's mean is over the findings whose value the point estimate
uses (a resample where one of them is undefined is skipped).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schema import MEAN
from . import bootstrap as bs
from .data import FindingData, Undefined, as_json_value
from .extra import EXTRA_CI

VAL_SPLITS = ("val", "valid", "validation", "dev")
TEST_SPLITS = ("test",)
GROUNDING_CI = (
    "pointing_game", "ebpg", "dice_fixed", "iou_fixed", "dice_best", "iou_best", "calibration_gap",
    "dice_crossval", "iou_crossval", "dice_val", "iou_val", *EXTRA_CI,
)
POINTING_RULES = {
    "share": "the share of the map's maximal pixels that lie in the region",
    "any": "1 when any maximal pixel lies in the region (MedKLIP, MAVL)",
    "first": "1 when the first maximal pixel (row-major argmax) lies in the region (cheXlocalize)",
}
CLASSIFICATION_CI = ("auroc", "auprc", "f1", "f1_best", "accuracy", "accuracy_best")
NO_REGIONS = "no positive image with a region"
FindingKey = tuple[str, Any, str, str, str]  # dataset, split, model, explainer, finding


@dataclass(frozen=True)
class AnalysisOptions:
    """How the analysis runs: bootstrap size and seed, strata bounds, cross-validation folds."""

    seed: int = 0
    resamples: int = bs.RESAMPLES
    confidence: float = bs.CONFIDENCE
    strata: tuple[float, ...] = (0.01, 0.1)
    folds: int = 5
    pointing: str = "share"  # the pointing game's tie rule (grounding.pointing)
    protocol: str = "xbench"  # grounding.protocol's name

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AnalysisOptions:
        grounding = config.get("grounding") or {}
        strata = grounding.get("strata")
        return cls(
            seed=int(config.get("seed") or 0),
            strata=tuple(float(b) for b in strata) if strata else cls.strata,
            pointing=str(grounding.get("pointing") or "share"),
            protocol=_protocol_name(grounding.get("protocol")),
        )

    def bins(self) -> list[tuple[str, float, float]]:
        """(name, low, high) of each stratum: low <= area fraction < high (the last one includes 1)."""
        edges = [0.0, *self.strata, 1.0]
        if len(self.strata) == 2:
            names = ["small", "medium", "large"]
        elif len(self.strata) == 1:
            names = ["small", "large"]
        else:
            names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
        return [(n, lo, hi) for n, lo, hi in zip(names, edges[:-1], edges[1:])]

    def describe(self) -> dict[str, Any]:
        return {
            "bootstrap": {
                "resamples": self.resamples,
                "confidence": self.confidence,
                "seed": self.seed,
                "interval": "percentile",
                "finding_rows": "the finding's images resampled with replacement (grounding: positive "
                "images with a region; classification: labelled images, not stratified by class)",
                "mean_rows": "the images of the dataset resampled jointly across findings",
                "skipped": "resamples where a value is undefined (e.g. one class only); ci_valid "
                "counts the resamples used",
            },
            "strata": [{"stratum": n, "range": [lo, hi]} for n, lo, hi in self.bins()],
            "threshold_modes": {
                "fixed": "Dice/IoU at grounding.fixed_threshold",
                "best": "tau maximizing the finding's mean Dice on the same images (optimistic)",
                "crossval": f"{self.folds}-fold over images (seeded), tau tuned on the other folds",
                "val": "tau tuned on the same dataset's validation split, applied to its test split",
            },
            "crossval_folds": self.folds,
            "pointing_game": {"tie_rule": self.pointing, "rules": POINTING_RULES},
        }


class Resampler:
    """Count matrices of the resamples, drawn once and reused: every model of a dataset sees the same
    draws (the generator depends on the names, not on the model), so they are kept for a while."""

    def __init__(self, options: AnalysisOptions, keep: int = 8) -> None:
        self.options = options
        self.keep = keep
        self._cache: OrderedDict[tuple[tuple[str, ...], int], np.ndarray] = OrderedDict()

    def counts(self, parts: tuple[str, ...], n: int) -> np.ndarray:
        key = (parts, n)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rng = bs.generator(self.options.seed, *parts)
        w = bs.resample_counts(n, rng, self.options.resamples)
        self._cache[key] = w
        if len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return w


def _protocol_name(value: Any) -> str:
    return value if isinstance(value, str) else str((value or {}).get("name", "xbench"))


# ---- splits ---------------------------------------------------------------------------------------
def split_resolver(config: Mapping[str, Any], registry: Any = None) -> tuple[Callable[[Mapping[str, Any]], Any], list[str]]:
    """A function giving each record's dataset split, from the run's config; and warnings.

    A record that carries `split` keeps it. Otherwise the split is that of the config's dataset
    entry of the same name; when a run lists one dataset with several splits, its records are told
    apart by sample id, which needs the datasets rebuilt (their files at hand).
    """
    entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in config.get("datasets") or []:
        e = {"name": e} if isinstance(e, str) else e
        entries[e["name"]].append(e)
    fixed: dict[str, Any] = {}
    by_id: dict[tuple[str, Any], Any] = {}
    warnings: list[str] = []
    for name, items in entries.items():
        splits = [e.get("split") for e in items]
        if len(set(splits)) <= 1:
            fixed[name] = splits[0] if splits else None
            continue
        try:
            if registry is None:
                raise RuntimeError("no plugin registry to rebuild it")
            for e in items:
                dataset = registry.datasets[name].build(**{k: v for k, v in e.items() if k != "name"})
                for sample_id in dataset.ids():
                    by_id[(name, sample_id)] = e.get("split")
        except Exception as exc:  # the split is unknown, the records are still aggregated
            warnings.append(
                f"{name} appears with splits {', '.join(map(str, splits))} but could not be rebuilt to tell "
                f"its records apart ({type(exc).__name__}: {exc}); its rows mix the splits"
            )
            fixed[name] = None

    def split_of(record: Mapping[str, Any]) -> Any:
        if record.get("split") is not None:
            return record["split"]
        return by_id.get((record["dataset"], record.get("id")), fixed.get(record["dataset"]))

    return split_of, warnings


def val_pairs(keys: Sequence[FindingKey]) -> dict[tuple[str, Any], tuple[str, Any]]:
    """{(dataset, test split): (dataset, val split)} for datasets present with both."""
    splits: dict[str, set[Any]] = defaultdict(set)
    for k in keys:
        splits[k[0]].add(k[1])
    out = {}
    for dataset, found in splits.items():
        vals = [s for s in VAL_SPLITS if s in found]
        if vals:
            for t in TEST_SPLITS:
                if t in found:
                    out[(dataset, t)] = (dataset, vals[0])
    return out


# ---- per-finding analysis -------------------------------------------------------------------------
@dataclass
class _Block:
    """The grounding data of a finding (or of one stratum of it) and how it is tuned."""

    data: FindingData
    parts: tuple[str, ...]  # names of the resamples
    folds: np.ndarray | None
    val_index: int | None
    fields: dict[str, Any] = field(default_factory=dict)


def _folds(d: FindingData, options: AnalysisOptions, parts: tuple[str, ...]) -> np.ndarray | None:
    if d.n_regions < 2 or options.folds < 2:
        return None
    return bs.assign_folds(d.n_regions, options.folds, bs.generator(options.seed, *parts, "crossval"))


def _grounding_additions(block: _Block, has_dice: bool, has_iou: bool, options: AnalysisOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """Point estimates of the threshold modes beyond fixed and best, and the calibration gap."""
    d = block.data
    out: dict[str, Any] = {"fixed_threshold": d.fixed_threshold}
    undefined: dict[str, str] = {}
    modes = ["fixed", "best", "crossval"] + (["val"] if block.val_index is not None else [])
    out["threshold_modes"] = modes
    names = (["dice_crossval"] if has_dice else []) + (["iou_crossval"] if has_iou else [])
    if has_dice:
        gap = None
        if block.fields.get("dice_best") is not None and block.fields.get("dice_fixed") is not None:
            gap = block.fields["dice_best"] - block.fields["dice_fixed"]
        out["calibration_gap"] = gap
        if gap is None:
            undefined["calibration_gap"] = NO_REGIONS
    if d.n_regions == 0:
        for n in names:
            out[n] = None
            undefined[n] = NO_REGIONS
        out["crossval_thresholds"] = None
        if block.val_index is not None:
            for n in ("dice_val", "iou_val"):
                out[n] = None
                undefined[n] = NO_REGIONS
            out["val_threshold"] = block.val_index / 100
        return out, undefined
    point = bs.threshold_modes(d, np.ones((1, d.n_regions)), folds=block.folds, val_index=block.val_index)
    if block.folds is None:
        for n in names:
            out[n] = None
            undefined[n] = "fewer than 2 images with a region: nothing to cross-validate"
        out["crossval_thresholds"] = None
    else:
        for n in names:
            out[n] = as_json_value(point[n][0])
        out["crossval_thresholds"] = [k / 100 for k in bs.crossval_thresholds(d.dice_curve(), block.folds)]
    if block.val_index is not None:
        if has_dice:
            out["dice_val"] = as_json_value(point["dice_val"][0])
        if has_iou:
            out["iou_val"] = as_json_value(point["iou_val"][0])
        out["val_threshold"] = block.val_index / 100
    return out, undefined


def _intervals(
    resampled: Mapping[str, np.ndarray], fields: Mapping[str, Any], names: Sequence[str], confidence: float
) -> tuple[dict[str, Any], dict[str, int], dict[str, str]]:
    """Intervals of `names` (in this order), then of any other resampled field (plugin metrics)."""
    names = list(dict.fromkeys([*names, *resampled]))
    cis: dict[str, Any] = {}
    valid: dict[str, int] = {}
    undefined: dict[str, str] = {}
    for n in names:
        if n not in fields or n not in resampled:
            continue
        if fields[n] is None:
            cis[f"{n}_ci"] = None
            continue
        ci, k = bs.interval(resampled[n], confidence)
        cis[f"{n}_ci"] = ci
        valid[n] = k
        if ci is None:
            undefined[f"{n}_ci"] = f"only {k} of {len(resampled[n])} resamples have a value"
    return cis, valid, undefined


Metrics = Sequence[tuple[Any, str]]  # (metric, kind) pairs


def _block_resamples(block: _Block, weights: np.ndarray, grounding: Metrics) -> dict[str, np.ndarray]:
    """The grounding metrics, threshold modes and calibration gap of every resample of a block."""

    def modes(d: FindingData, w: np.ndarray) -> dict[str, np.ndarray]:
        return bs.threshold_modes(d, w, folds=block.folds, val_index=block.val_index)

    values = bs.resamples(block.data, grounding, weights, extra=modes)
    if "dice_best" in values and "dice_fixed" in values:
        values["calibration_gap"] = values["dice_best"] - values["dice_fixed"]
    return values


def _by_kind(metrics: Mapping[str, tuple[Any, str]], kind: str) -> list[tuple[Any, str]]:
    return [(m, k) for m, k in metrics.values() if k == kind]


@dataclass
class FindingAnalysis:
    """What the mean row of a group needs from each finding: its blocks and row."""

    key: FindingKey
    data: FindingData
    row: dict[str, Any]
    block: _Block | None
    strata: list[_Block]
    grounding: Metrics = ()
    classification: Metrics = ()


def analyse_finding(
    key: FindingKey,
    d: FindingData,
    row: dict[str, Any],
    metrics: Mapping[str, tuple[Callable[[FindingData], Mapping[str, Any]], str]],
    options: AnalysisOptions,
    val_index: int | None,
    resampler: Resampler | None = None,
) -> FindingAnalysis:
    """Add the analysis fields to a finding row (in place) and return what its mean row needs.
    `metrics`: name -> (metric, kind) of the metrics the row was computed with."""
    resampler = resampler or Resampler(options)
    grounding, classification = _by_kind(metrics, "grounding"), _by_kind(metrics, "classification")
    dataset, split, _, _, finding = key
    undefined = row.pop("undefined", {})
    row["split"] = split
    has_dice = "dice_fixed" in row
    has_iou = "iou_fixed" in row
    grounded = bool(grounding) or any(k in row for k in GROUNDING_CI)
    block = None
    strata: list[_Block] = []
    if grounded:
        parts = (dataset, str(split), finding)
        block = _Block(d, parts, _folds(d, options, parts), val_index, dict(row))
        adds, und = _grounding_additions(block, has_dice, has_iou, options)
        row.update(adds)
        undefined.update(und)
        block.fields = dict(row)
        if has_dice:
            row["dice_curve"] = [round(float(v), 6) for v in d.dice_curve().mean(axis=0)] if d.n_regions else None
    resampled: dict[str, np.ndarray] = {}
    if options.resamples > 0:
        if block is not None and d.n_regions:
            w = resampler.counts((*block.parts, "grounding"), d.n_regions)
            resampled.update(_block_resamples(block, w, grounding))
        if len(d.labels) and classification:
            w = resampler.counts((dataset, str(split), finding, "classification"), len(d.labels))
            resampled.update(bs.resamples(d, classification, w))
    cis, valid, und = _intervals(resampled, row, GROUNDING_CI + CLASSIFICATION_CI, options.confidence)
    row.update(cis)
    row["ci_valid"] = valid
    undefined.update(und)
    if block is not None:
        for name, lo, hi in options.bins():
            af = d.area_fraction
            inside = (af >= lo) & ((af < hi) if hi < 1.0 else (af <= hi))
            sub = d.subset(grounding_rows=np.flatnonzero(inside), images=np.zeros(0, np.int64))
            sparts = (dataset, str(split), finding, name)
            sblock = _Block(sub, sparts, _folds(sub, options, sparts), val_index)
            strata.append(sblock)
        row["strata"] = [_stratum_fields(s, name, lo, hi, grounding, has_dice, has_iou, options, resampler)
                         for s, (name, lo, hi) in zip(strata, options.bins())]
    row["undefined"] = undefined
    return FindingAnalysis(key, d, row, block, strata, grounding, classification)


def _stratum_fields(
    block: _Block,
    name: str,
    lo: float,
    hi: float,
    grounding: Metrics,
    has_dice: bool,
    has_iou: bool,
    options: AnalysisOptions,
    resampler: Resampler,
) -> dict[str, Any]:
    d = block.data
    out: dict[str, Any] = {"stratum": name, "range": [lo, hi], "n_regions": d.n_regions}
    undefined: dict[str, str] = {}
    for metric, _ in grounding:
        for k, v in metric(d).items():
            if isinstance(v, Undefined):
                undefined[k] = v.reason
            out[k] = as_json_value(v)
    block.fields = dict(out)
    adds, und = _grounding_additions(block, has_dice, has_iou, options)
    adds.pop("threshold_modes")
    adds.pop("fixed_threshold")
    out.update(adds)
    undefined.update(und)
    block.fields = dict(out)
    if options.resamples > 0 and d.n_regions:
        w = resampler.counts((*block.parts, "grounding"), d.n_regions)
        cis, valid, und = _intervals(_block_resamples(block, w, grounding), out, GROUNDING_CI, options.confidence)
        out.update(cis)
        out["ci_valid"] = valid
        undefined.update(und)
    else:
        out.update({f"{n}_ci": None for n in GROUNDING_CI if n in out})
        out["ci_valid"] = {}
    out["undefined"] = undefined
    return out


# ---- mean rows ------------------------------------------------------------------------------------
def _positions(ids: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
    return np.array([index[i] for i in ids], np.int64)


def analyse_mean(
    row: dict[str, Any],
    findings: Sequence[FindingAnalysis],
    images: Sequence[str],
    per_image_hamming: Mapping[str, float],
    options: AnalysisOptions,
    resampler: Resampler | None = None,
) -> None:
    """Add the analysis fields of a mean row (in place): means over findings and joint intervals."""
    resampler = resampler or Resampler(options)
    undefined = row.pop("undefined", {})
    first = findings[0].key
    dataset, split = first[0], first[1]
    row["split"] = split
    grounded = [f for f in findings if f.block is not None]
    if grounded:
        row["fixed_threshold"] = grounded[0].data.fixed_threshold
        modes = ["fixed", "best", "crossval"] + (["val"] if any(f.block and f.block.val_index is not None for f in grounded) else [])
        row["threshold_modes"] = modes
        curves = [f.row["dice_curve"] for f in grounded if f.row.get("dice_curve")]
        if "dice_curve" in grounded[0].row:
            row["dice_curve"] = [round(float(v), 6) for v in np.mean(curves, axis=0)] if curves else None
    universe = sorted(images)
    index = {i: k for k, i in enumerate(universe)}
    resampled: dict[str, np.ndarray] = {}
    w = None
    if options.resamples > 0 and universe:
        w = resampler.counts((dataset, str(split), MEAN), len(universe))
        per_finding: dict[str, list[np.ndarray]] = defaultdict(list)
        for f in findings:
            d = f.data
            values: dict[str, np.ndarray] = {}
            if f.block is not None and d.n_regions:
                values.update(_block_resamples(f.block, w[:, _positions(d.region_ids, index)], f.grounding))
            if len(d.labels) and f.classification:
                values.update(bs.resamples(d, f.classification, w[:, _positions(d.image_ids, index)]))
            for name in dict.fromkeys([*GROUNDING_CI, *CLASSIFICATION_CI, *values]):
                if f.row.get(name) is not None and name in values:
                    per_finding[name].append(values[name])
        resampled = bs.mean_over(per_finding, options.resamples)
        ham_ids = [i for i in universe if i in per_image_hamming]
        if ham_ids:
            wh = w[:, _positions(np.array(ham_ids, object), index)]
            tot = wh.sum(axis=1)
            h = np.array([per_image_hamming[i] for i in ham_ids])
            resampled["hamming_accuracy"] = np.where(tot > 0, wh @ h / np.where(tot > 0, tot, 1.0), np.nan)
    cis, valid, und = _intervals(resampled, row, GROUNDING_CI + CLASSIFICATION_CI + ("hamming_accuracy",), options.confidence)
    row.update(cis)
    row["ci_valid"] = valid
    undefined.update(und)
    if grounded:
        row["strata"] = _mean_strata(grounded, w, index, options)
    row["undefined"] = undefined


def _mean_strata(
    grounded: Sequence[FindingAnalysis], w: np.ndarray | None, index: Mapping[str, int], options: AnalysisOptions
) -> list[dict[str, Any]]:
    out = []
    for s, (name, lo, hi) in enumerate(options.bins()):
        rows = [f.row["strata"][s] for f in grounded]
        entry: dict[str, Any] = {"stratum": name, "range": [lo, hi], "n_regions": sum(r["n_regions"] for r in rows),
                                 "n_findings": sum(1 for r in rows if r["n_regions"])}
        undefined: dict[str, str] = {}
        for k in _scalar_fields(rows, exclude=("n_regions", "stratum")):
            vals = [r[k] for r in rows if _is_number(r.get(k))]
            entry[k] = float(np.mean(vals)) if vals else None
            if not vals:
                undefined[k] = "undefined for every finding"
        if w is not None:
            per_finding: dict[str, list[np.ndarray]] = defaultdict(list)
            for f, r in zip(grounded, rows):
                block = f.strata[s]
                if not block.data.n_regions:
                    continue
                values = _block_resamples(block, w[:, _positions(block.data.region_ids, index)], f.grounding)
                for k in dict.fromkeys([*GROUNDING_CI, *values]):
                    if r.get(k) is not None and k in values:
                        per_finding[k].append(values[k])
            cis, valid, und = _intervals(bs.mean_over(per_finding, w.shape[0]), entry, GROUNDING_CI, options.confidence)
            entry.update(cis)
            entry["ci_valid"] = valid
            undefined.update(und)
        entry["undefined"] = undefined
        out.append(entry)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar_fields(rows: Sequence[Mapping[str, Any]], exclude: Sequence[str] = ()) -> list[str]:
    """Keys whose values are numbers or null in every row (and a number in at least one, or null
    everywhere for a metric field), in first-seen order."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    out = []
    for k in keys:
        if k in exclude or k == "undefined" or k.endswith("_ci") or k == "ci_valid":
            continue
        vals = [r.get(k) for r in rows]
        if all(v is None or _is_number(v) for v in vals):
            out.append(k)
    return out


# ---- across models --------------------------------------------------------------------------------
MIN_FIT_POINTS = 3  # a line through two points always fits: R^2 = 1 says nothing


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Least-squares line y = slope * x + intercept, with r, R^2 and the 95% interval of the slope
    (Student t, n - 2 degrees of freedom); null with a reason when undefined. Below
    MIN_FIT_POINTS points there is no fit: two points always lie on a line."""
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(xa)
    out: dict[str, Any] = {"n": n, "slope": None, "intercept": None, "r": None, "r2": None, "slope_ci": None}
    if n < MIN_FIT_POINTS:
        out["undefined"] = (f"only {n} point{'' if n == 1 else 's'}: a fit needs at least {MIN_FIT_POINTS} "
                            "(a line through two points always has R^2 = 1)")
        return out
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxx <= 0:
        out["undefined"] = "every point has the same pointing game"
        return out
    slope = sxy / sxx
    out["slope"] = slope
    out["intercept"] = float(ya.mean() - slope * xa.mean())
    from scipy.stats import t as student_t

    spread = float(np.sqrt(max(syy - slope * sxy, 0.0) / (n - 2) / sxx)) * float(student_t.ppf(0.975, n - 2))
    out["slope_ci"] = [slope - spread, slope + spread]
    if syy <= 0:
        out["undefined"] = "every point has the same AUROC: r and R^2 are undefined"
        return out
    r = sxy / np.sqrt(sxx * syy)
    out["r"] = float(r)
    out["r2"] = float(r * r)
    return out


def recognition_vs_grounding(rows: Sequence[Mapping[str, Any]], x: str = "pointing_game", y: str = "auroc") -> dict[str, Any]:
    """Per explainer, the linear fit of mean AUROC against mean Pointing Game over models (each
    model's means over datasets) and over (model, dataset) pairs (the paper's Figure 3).

    A dataset's validation split is left out when its test split is present."""
    means = [r for r in rows if r["finding"] == MEAN]
    test_present = {r["dataset"] for r in means if r.get("split") not in VAL_SPLITS}
    means = [r for r in means if not (r.get("split") in VAL_SPLITS and r["dataset"] in test_present)]
    fits = []
    for explainer in sorted({r["explainer"] for r in means}):
        pairs = [
            {"model": r["model"], "dataset": r["dataset"], "split": r.get("split"), x: r[x], y: r[y]}
            for r in means
            if r["explainer"] == explainer and _is_number(r.get(x)) and _is_number(r.get(y))
        ]
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in pairs:
            by_model[p["model"]].append(p)
        models: list[dict[str, Any]] = [
            {"model": m, "datasets": [p["dataset"] for p in ps], x: float(np.mean([p[x] for p in ps])),
             y: float(np.mean([p[y] for p in ps]))}
            for m, ps in by_model.items()
        ]
        for level, points in (("model", models), ("model_dataset", pairs)):
            fit = linear_fit([p[x] for p in points], [p[y] for p in points])
            fits.append({"explainer": explainer, "level": level, **fit, "points": points})
    return {"x": x, "y": y, "fits": fits}
