"""Bootstrap confidence intervals over images, vectorized.

A resample of n images is a row of counts c (how often each image was drawn, summing to n); the
resample's value of a metric is the metric of the data with image i repeated c_i times. A metric
with a `resample` hook (every built-in one: see `builtin`) computes all 1,000 resamples at once
from a count matrix W [B, n]; any other metric is called on each resample. The threshold modes
(cross-validated and validation-tuned Dice and IoU) are computed here the same way.

A value that does not exist for a resample (no image with a region drawn, one class only) is NaN
there and the resample is skipped; the interval is the 2.5th and 97.5th percentile of the valid
resamples (`numpy.percentile`, linear interpolation), and their number is recorded.

Memory: the count matrices are stored as the smallest unsigned integers that hold n, and every
computation runs on blocks of resamples (`BLOCK_ELEMENTS` per [rows, n] temporary), so memory is
O(B n) bytes, not a dozen float64 copies of W; the draws and values do not depend on the blocks.

Resamples are drawn by `numpy.random.default_rng([seed, crc32(part), ...])` with parts naming what
is resampled (dataset, split, finding), so every model of a dataset sees the same resamples of the
same images (paired comparisons) and a run's intervals are reproducible.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .builtin import first_argmax
from .data import FindingData

RESAMPLES = 1000
CONFIDENCE = 0.95
BLOCK_ELEMENTS = 1 << 20  # elements of one [rows, n] float64 temporary (8 MiB)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS on one thread: the products here are small ([B, n] x [n, 101]) and a threaded BLAS on
    a busy machine spends far longer synchronizing than computing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def generator(seed: int, *parts: str) -> np.random.Generator:
    """The seeded generator of the resamples named by `parts` (e.g. dataset, split, finding)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(p.encode("utf-8")) for p in parts)])


def resample_indices(n: int, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """[resamples, n] indices of images drawn with replacement (empty when n is 0)."""
    if n == 0:
        return np.zeros((resamples, 0), np.int64)
    return rng.integers(0, n, size=(resamples, n))


def counts(indices: np.ndarray, n: int) -> np.ndarray:
    """The multinomial count matrix [B, n] of index rows [B, k]: how often each image was drawn."""
    b = indices.shape[0]
    if n == 0:
        return np.zeros((b, 0))
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def row_blocks(b: int, n: int) -> list[slice]:
    """Slices of the B resamples such that a [rows, n] temporary has at most BLOCK_ELEMENTS."""
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    return [slice(lo, min(b, lo + step)) for lo in range(0, b, step)]


def resample_counts(n: int, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """The count matrix [resamples, n] of `resample_indices(n, rng, resamples)`, drawn block by
    block (the generator yields the same numbers) and stored compactly (a count is at most n)."""
    dtype = np.uint8 if n < 2**8 else np.uint16 if n < 2**16 else np.uint32
    out = np.zeros((resamples, n), dtype)
    if n == 0:
        return out
    for rows in row_blocks(resamples, n):
        out[rows] = counts(rng.integers(0, n, size=(rows.stop - rows.start, n)), n)
    return out


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[list[float] | None, int]:
    """Percentile interval of the finite values and their number (None below two valid resamples)."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return None, int(len(v))
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return [float(lo), float(hi)], int(len(v))


# ---- metrics on resamples -----------------------------------------------------------------------
def metric_resamples(metric: Any, kind: str, d: FindingData, weights: np.ndarray) -> dict[str, np.ndarray]:
    """[B] values of a metric's fields for the weight rows [B, n] (float64; n: the finding's rows
    with a region for a grounding metric, its labelled images for a classification one), NaN where
    a resample has no value: the metric's `resample` hook, or else the metric called on each
    resample (plain resampling: any plugin metric gets intervals)."""
    hook = getattr(metric, "resample", None)
    if hook is not None:
        return hook(d, weights)
    return plain_resamples(metric, kind, d, weights)


def plain_resamples(metric: Callable[[FindingData], Mapping[str, Any]], kind: str, d: FindingData,
                    weights: np.ndarray) -> dict[str, np.ndarray]:
    """The metric of the data with image i repeated w_i times, for each weight row: its numeric
    fields as [B] arrays (NaN where undefined)."""
    b, n = weights.shape
    out: dict[str, np.ndarray] = {}
    for row in range(b):
        drawn = np.repeat(np.arange(n), weights[row].astype(np.int64))
        sub = d.subset(grounding_rows=drawn) if kind == "grounding" else d.subset(images=drawn)
        for name, value in metric(sub).items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue  # Undefined, None or not a number: NaN for this resample
            out.setdefault(name, np.full(b, np.nan))[row] = float(value)
    return out


def resamples(
    d: FindingData,
    metrics: Sequence[tuple[Any, str]],
    weights: np.ndarray,
    extra: Callable[[FindingData, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """The resample values of `metrics` ((metric, kind) pairs of one kind) and of `extra`, computed
    on blocks of weight rows (`BLOCK_ELEMENTS` per [rows, n] float64 temporary), the metrics of a
    block sharing their products."""
    parts = []
    blocks = row_blocks(weights.shape[0], weights.shape[1])
    for rows in blocks:
        w = np.asarray(weights[rows], np.float64)
        part: dict[str, np.ndarray] = {}
        with d.sharing():
            for metric, kind in metrics:
                part.update(metric_resamples(metric, kind, d, w))
            if extra is not None:
                part.update(extra(d, w))
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    keys = dict.fromkeys(k for p in parts for k in p)  # a plugin's field may be missing from a block
    return {k: np.concatenate([p.get(k, np.full(r.stop - r.start, np.nan)) for p, r in zip(parts, blocks)]) for k in keys}


# ---- grounding threshold modes ------------------------------------------------------------------
def threshold_modes(
    d: FindingData, weights: np.ndarray, *, folds: np.ndarray | None = None, val_index: int | None = None
) -> dict[str, np.ndarray]:
    """Dice and IoU of every resample at thresholds tuned otherwise than on the same images: `folds`
    [m] (fold of each row) gives the cross-validated Dice and IoU, `val_index` those at a threshold
    tuned on another split; plus the calibration gap. [B] each, NaN where undefined."""
    out: dict[str, np.ndarray] = {}
    total = weights.sum(axis=1)
    ok = total > 0
    if folds is not None:
        safe = np.where(ok, total, 1.0)
        dice, iou = _crossval(d.per_row("dice"), d.per_row("iou"), weights, folds, d.weighted_sum("dice", weights), safe)
        out["dice_crossval"], out["iou_crossval"] = np.where(ok, dice, np.nan), np.where(ok, iou, np.nan)
    if val_index is not None:
        out["dice_val"] = d.weighted_mean("dice", weights)[:, val_index]
        out["iou_val"] = d.weighted_mean("iou", weights)[:, val_index]
    return out


def _crossval(
    dice_curves: np.ndarray,
    iou_curves: np.ndarray,
    weights: np.ndarray,
    folds: np.ndarray,
    dice_sum: np.ndarray,
    total: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled Dice and IoU of each image at the threshold tuned on the other folds (per resample)."""
    b = weights.shape[0]
    rows = np.arange(b)
    dice_acc = np.zeros(b)
    iou_acc = np.zeros(b)
    valid = np.ones(b, bool)
    for f in np.unique(folds):
        inside = folds == f
        w_in = weights[:, inside]
        in_total = w_in.sum(axis=1)
        fold_dice = w_in @ dice_curves[inside]
        fold_iou = w_in @ iou_curves[inside]
        other_total = total - in_total
        # a fold drawn with no image of the other folds has nothing to tune on
        valid &= ~((in_total > 0) & (other_total <= 0))
        other = (dice_sum - fold_dice) / np.where(other_total > 0, other_total, 1.0)[:, None]
        k = first_argmax(other)
        dice_acc += fold_dice[rows, k]
        iou_acc += fold_iou[rows, k]
    return np.where(valid, dice_acc / total, np.nan), np.where(valid, iou_acc / total, np.nan)


def crossval_thresholds(dice_curves: np.ndarray, folds: np.ndarray) -> list[int]:
    """The threshold index chosen for each fold (by mean Dice over the other folds), fold order."""
    out = []
    for f in np.unique(folds):
        other = dice_curves[folds != f]
        out.append(int(first_argmax(other.mean(axis=0)[None])[0]))
    return out


def assign_folds(m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each of m images: a seeded permutation dealt round-robin into min(k, m) folds."""
    folds = np.empty(m, np.int64)
    folds[rng.permutation(m)] = np.arange(m) % max(1, min(k, m))
    return folds


def mean_over(values: Mapping[str, list[np.ndarray]], b: int) -> dict[str, np.ndarray]:
    """Per field, the mean over findings of their resample values; NaN where any of them is NaN."""
    out = {}
    for name, arrays in values.items():
        if arrays:
            out[name] = np.mean(np.stack(arrays), axis=0)  # NaN propagates: the resample is skipped
        else:
            out[name] = np.full(b, np.nan)
    return out
