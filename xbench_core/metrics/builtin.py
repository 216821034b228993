"""The built-in metrics: grounding (pointing game, EBPG, Dice, IoU) and recognition (AUROC, AUPRC,
F1, accuracy), each written once.

A metric is a function of one finding's `FindingData` and of resample weights: `values(d, weights)`
gives its fields for every row of `weights` ([B, n]: how often each image was drawn; grounding
metrics weigh the rows with a region, classification metrics the labelled images), or for the data
as it is when `weights` is None. Calling the metric, `metric(d)`, gives the row's fields (a value
that does not exist is `Undefined(reason)`, never 0 and never NaN); `metric.resample(d, weights)`
gives [B] arrays (NaN where a resample has no value) of the fields that get confidence intervals:
this is the hook the bootstrap uses (see `bootstrap.metric_resamples`). A plugin metric without
`resample` gets its intervals by calling it on each resample.

Every headline metric is a function of weighted sums, so all resamples are computed at once:
- grounding: the mean Dice (IoU) curve of a resample is `W @ curves / W.sum(1)` (the curves are
  linear in the per-image counts); the best threshold is the first tau whose mean Dice is within
  `TIE_TOLERANCE` of the maximum (near-equal means that differ only by summation order must not
  change which threshold wins); Pointing Game and EBPG are weighted means;
- classification: AUROC from the weighted number of negatives below each positive (ties count one
  half: the Mann-Whitney statistic, which is the trapezoidal ROC area), AUPRC as average precision
  over the distinct scores (tied scores form one threshold, in scikit-learn's arithmetic), F1 and
  accuracy from weighted confusion counts, the best-F1 threshold as the first maximum from the
  highest score down (F1 is highest at a positive's score).
For the data as it is, the grounding means are plain means and the classification counts integers:
AUROC is then U / (n+ n-) rounded once (exact; scikit-learn's trapezoid can be 1 ulp off), AUPRC
equals scikit-learn's `average_precision_score` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .data import FindingData, Undefined

NO_REGIONS = Undefined("no positive image with a region")
# near-equal means (summation order) must not change which threshold wins
TIE_TOLERANCE = 1e-12

Values = Callable[[FindingData, "np.ndarray | None"], dict[str, np.ndarray]]


class Metric:
    """A built-in metric: its fields computed by `values` (see the module docstring), the reasons
    why some do not exist for a finding's data (`undefined`), and the fields that get intervals."""

    def __init__(
        self,
        name: str,
        fields: Sequence[str],
        values: Values,
        undefined: Callable[[FindingData], Mapping[str, Undefined]],
        resampled: Sequence[str],
    ) -> None:
        self.__name__ = self.name = name
        self.fields, self.values, self.undefined, self.resampled = tuple(fields), values, undefined, tuple(resampled)

    def __call__(self, d: FindingData) -> dict[str, Any]:
        missing = dict(self.undefined(d))
        if all(f in missing for f in self.fields):
            return {f: missing[f] for f in self.fields}
        point = self.values(d, None)
        return {f: missing[f] if f in missing else float(point[f][0]) for f in self.fields}

    def resample(self, d: FindingData, weights: np.ndarray) -> dict[str, np.ndarray]:
        """[B] values of the `resampled` fields for the weight rows [B, n] (float64), NaN where undefined."""
        values = self.values(d, weights)
        return {f: values[f] for f in self.resampled}

    def __repr__(self) -> str:
        return f"<metric {self.name}>"


def first_argmax(curves: np.ndarray) -> np.ndarray:
    """Row-wise index of the first value within TIE_TOLERANCE of the row's maximum."""
    top = curves.max(axis=1, keepdims=True)
    return np.argmax(curves >= top - TIE_TOLERANCE, axis=1)


def best_threshold_index(d: FindingData) -> int:
    """The tau of the grid that maximizes the mean Dice over the finding's images (first on ties)."""
    return int(first_argmax(d.weighted_mean("dice", None))[0])


# ---- grounding ----------------------------------------------------------------------------------
def _no_regions(*fields: str) -> Callable[[FindingData], dict[str, Undefined]]:
    return lambda d: {} if d.n_regions else {f: NO_REGIONS for f in fields}


def _pointing_game(d: FindingData, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    return {"pointing_game": d.weighted_mean("pointing_game", weights)}


def _ebpg(d: FindingData, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    return {"ebpg": d.weighted_mean("ebpg", weights)}


def _dice(d: FindingData, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    mean = d.weighted_mean("dice", weights)
    best = first_argmax(mean)
    return {
        "dice_fixed": mean[:, d.fixed_index],
        "dice_best": mean[np.arange(len(mean)), best],
        "best_threshold": best / 100,
    }


def _iou(d: FindingData, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    mean = d.weighted_mean("iou", weights)
    best = first_argmax(d.weighted_mean("dice", weights))  # IoU at the best-Dice threshold
    return {"iou_fixed": mean[:, d.fixed_index], "iou_best": mean[np.arange(len(mean)), best]}


# ---- classification -----------------------------------------------------------------------------
CLASSIFICATION_FIELDS = ("auroc", "auprc", "f1", "f1_best", "f1_best_threshold", "accuracy", "accuracy_best")


def _classification(d: FindingData, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every classification field for the weight rows (once per weights: the four metrics share it)."""
    return d.shared("classification", weights, lambda: _classification_values(d.labels, d.scores, weights))


def _classification_values(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    """AUROC, AUPRC, F1, accuracy (at 0.5 and at the best-F1 threshold) and that threshold per row.

    Positives and negatives are sorted by score once; with the running sums of their weights, each
    positive k of a resample knows the weighted negatives below its score (AUROC, ties one half)
    and the weighted positives and negatives at or above it (precision at its score for AUPRC, F1
    at its score for the best-F1 threshold)."""
    if weights is None:
        weights = np.ones((1, len(labels)))
    b = weights.shape[0]
    y = labels == 1
    if len(labels) == 0:
        return {k: np.full(b, np.nan) for k in CLASSIFICATION_FIELDS}
    pos_order = np.flatnonzero(y)[np.argsort(scores[y], kind="stable")]
    neg_order = np.flatnonzero(~y)[np.argsort(scores[~y], kind="stable")]
    sp, sn = scores[pos_order], scores[neg_order]
    wp = weights[:, pos_order]
    wn = weights[:, neg_order]
    pos = wp.sum(axis=1)
    neg = wn.sum(axis=1)
    total = pos + neg
    both = (pos > 0) & (neg > 0)
    has_pos = pos > 0
    safe_total = np.where(total > 0, total, 1.0)

    predicted = scores >= 0.5
    tp5 = weights @ (predicted & y).astype(np.float64)
    fp5 = weights @ (predicted & ~y).astype(np.float64)
    den = 2 * tp5 + fp5 + (pos - tp5)
    f1 = np.where(den > 0, 2 * tp5 / np.where(den > 0, den, 1.0), 0.0)
    accuracy = (tp5 + neg - fp5) / safe_total
    out = {
        "f1": np.where(has_pos, f1, np.nan),
        "accuracy": np.where(total > 0, accuracy, np.nan),
    }
    if len(sp) == 0:
        out.update({k: np.full(b, np.nan) for k in ("auroc", "auprc", "f1_best", "f1_best_threshold", "accuracy_best")})
        return out
    # running sums with a leading zero: cum[:, j] = weight of the first j (lowest-scored) images
    neg_cum = np.zeros((b, len(sn) + 1))
    np.cumsum(wn, axis=1, out=neg_cum[:, 1:])
    pos_cum = np.zeros((b, len(sp) + 1))
    np.cumsum(wp, axis=1, out=pos_cum[:, 1:])
    below_index = np.searchsorted(sn, sp, side="left")
    upto_index = np.searchsorted(sn, sp, side="right")
    neg_below = neg_cum[:, below_index]  # negatives scored < s_k
    # AUROC numerator: per positive, the negatives below it plus half of those tied with it
    if np.array_equal(below_index, upto_index):  # no score shared by a positive and a negative
        auroc = np.einsum("ij,ij->i", wp, neg_below)
    else:
        auroc = np.einsum("ij,ij->i", wp, neg_below + neg_cum[:, upto_index]) / 2
    auroc /= np.where(both, pos * neg, 1.0)
    first = np.searchsorted(sp, sp, side="left")
    # positives scored >= s_k (the first positive of a tie stands for all of them)
    tp = pos[:, None] - (pos_cum[:, :-1] if np.array_equal(first, np.arange(len(sp))) else pos_cum[:, first])
    fp = neg[:, None] - neg_below
    f1_curve = 2 * tp / np.maximum(tp + fp + pos[:, None], 1e-300)
    # the first maximum from the highest score down
    k = len(sp) - 1 - np.argmax(f1_curve[:, ::-1], axis=1)
    rows = np.arange(b)
    out["auroc"] = np.where(both, auroc, np.nan)
    out["auprc"] = np.where(both, _average_precision(scores, sp, tp, fp, pos), np.nan)
    out["f1_best"] = np.where(has_pos, f1_curve[rows, k], np.nan)
    out["f1_best_threshold"] = np.where(has_pos, sp[k], np.nan)
    out["accuracy_best"] = np.where(has_pos, (tp[rows, k] + neg - fp[rows, k]) / safe_total, np.nan)
    return out


def _average_precision(scores: np.ndarray, sp: np.ndarray, tp: np.ndarray, fp: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Average precision per row, in scikit-learn's arithmetic (so that the data as it is gives its
    `average_precision_score` bit for bit): over the distinct scores t, ascending, the sum of
    (recall at the next higher t - recall at t) * precision at t, predicting "score >= t".

    `tp`, `fp` [B, n+] are the weighted positives and negatives scored >= each positive's score
    (`sp`, ascending). Only a score held by a positive moves the recall: the other distinct scores
    add exact zeros, kept in place so that the sum's rounding is scikit-learn's."""
    first = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])  # one column per distinct positive score
    tp, fp = tp[:, first], fp[:, first]
    called = tp + fp
    precision = np.where(called != 0, tp / np.where(called != 0, called, 1.0), 0.0)
    recall = tp / np.where(pos > 0, pos, 1.0)[:, None]
    step = np.empty_like(recall)
    step[:, :-1] = recall[:, 1:]
    step[:, -1] = 0.0  # above the highest positive no positive is called
    step -= recall
    thresholds = np.unique(scores)
    if len(thresholds) == len(first):
        terms = step * precision
    else:
        terms = np.zeros((len(tp), len(thresholds)))
        terms[:, np.searchsorted(thresholds, sp[first])] = step * precision
    return np.maximum(0.0, -np.sum(terms, axis=1))


def _two_classes(*fields: str) -> Callable[[FindingData], dict[str, Undefined]]:
    def check(d: FindingData) -> dict[str, Undefined]:
        if len(d.labels) == 0:
            return {f: Undefined("no scored image with a known label") for f in fields}
        if d.labels.min() == d.labels.max():
            return {f: Undefined(f"only one class among labels (all {int(d.labels[0])})") for f in fields}
        return {}

    return check


def _f1_undefined(d: FindingData) -> dict[str, Undefined]:
    fields = ("f1", "f1_best", "f1_best_threshold")
    if len(d.labels) == 0:
        return {f: Undefined("no scored image with a known label") for f in fields}
    if not np.any(d.labels == 1):
        return {f: Undefined("no positive label: F1 is undefined") for f in fields}
    return {}


def _accuracy_undefined(d: FindingData) -> dict[str, Undefined]:
    if len(d.labels) == 0:
        u = Undefined("no scored image with a known label")
        return {"accuracy": u, "accuracy_best": u}
    if not np.any(d.labels == 1):
        return {"accuracy_best": Undefined("no positive label: no best-F1 threshold")}
    return {}


def _pick(*fields: str) -> Values:
    def values(d: FindingData, weights: np.ndarray | None) -> dict[str, np.ndarray]:
        every = _classification(d, weights)
        return {f: every[f] for f in fields}

    return values


pointing_game = Metric("pointing_game", ("pointing_game",), _pointing_game, _no_regions("pointing_game"), ("pointing_game",))
ebpg = Metric("ebpg", ("ebpg",), _ebpg, _no_regions("ebpg"), ("ebpg",))
dice = Metric("dice", ("dice_fixed", "dice_best", "best_threshold"), _dice,
              _no_regions("dice_fixed", "dice_best", "best_threshold"), ("dice_fixed", "dice_best"))
iou = Metric("iou", ("iou_fixed", "iou_best"), _iou, _no_regions("iou_fixed", "iou_best"), ("iou_fixed", "iou_best"))
auroc = Metric("auroc", ("auroc",), _pick("auroc"), _two_classes("auroc"), ("auroc",))
auprc = Metric("auprc", ("auprc",), _pick("auprc"), _two_classes("auprc"), ("auprc",))
f1 = Metric("f1", ("f1", "f1_best", "f1_best_threshold"), _pick("f1", "f1_best", "f1_best_threshold"), _f1_undefined,
            ("f1", "f1_best"))
accuracy = Metric("accuracy", ("accuracy", "accuracy_best"), _pick("accuracy", "accuracy_best"), _accuracy_undefined,
                  ("accuracy", "accuracy_best"))
