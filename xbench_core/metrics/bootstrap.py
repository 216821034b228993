"""Bootstrap confidence intervals over images, vectorized.

A resample of n images is a row of counts c (how often each image was drawn, summing to n); the
resample's value of a metric is the metric of the data with image i repeated c_i times. Every
headline metric is a function of weighted sums, so all 1,000 resamples are computed at once from a
count matrix W [B, n]:

- grounding: the mean Dice (IoU) curve of a resample is `W @ curves / W.sum(1)` (the curves are
  linear in the per-image counts), the best threshold its row-wise argmax; Pointing Game and EBPG
  are weighted means;
- classification: AUROC from the weighted number of negatives below each positive (scores grouped by
  distinct value: ties count one half), AUPRC as average precision over the distinct scores, F1 and
  accuracy from weighted confusion counts, the best-F1 threshold as a row-wise argmax.

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
import functools
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95
# near-equal means (summation order) must not change which threshold wins
TIE_TOLERANCE = 1e-12
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


def _by_row_blocks(fn: Callable[..., dict[str, np.ndarray]]) -> Callable[..., dict[str, np.ndarray]]:
    """Run a resample function on blocks of its `weights` rows (as float64) and join the results:
    each resample's value depends only on its own row."""

    @functools.wraps(fn)
    def blocked(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        *args, weights = args  # `weights` is the last positional argument
        blocks = row_blocks(weights.shape[0], weights.shape[1])
        if len(blocks) <= 1:
            return fn(*args, np.asarray(weights, np.float64), **kwargs)
        parts = [fn(*args, weights[rows].astype(np.float64), **kwargs) for rows in blocks]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return blocked


def first_argmax(curves: np.ndarray) -> np.ndarray:
    """Row-wise index of the first value within TIE_TOLERANCE of the row's maximum."""
    top = curves.max(axis=1, keepdims=True)
    return np.argmax(curves >= top - TIE_TOLERANCE, axis=1)


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[list[float] | None, int]:
    """Percentile interval of the finite values and their number (None below two valid resamples)."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return None, int(len(v))
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return [float(lo), float(hi)], int(len(v))


# ---- grounding ----------------------------------------------------------------------------------
@_by_row_blocks
def grounding_resamples(
    dice_curves: np.ndarray,
    iou_curves: np.ndarray,
    pointing_game: np.ndarray,
    ebpg: np.ndarray,
    weights: np.ndarray,
    *,
    fixed_index: int,
    folds: np.ndarray | None = None,
    val_index: int | None = None,
) -> dict[str, np.ndarray]:
    """Grounding metrics of every resample ([B] each, NaN where undefined).

    `dice_curves`, `iou_curves` [m, 101] per image; `weights` [B, m]. `folds` [m] (fold of each
    image) adds the cross-validated Dice and IoU; `val_index` the Dice and IoU at a threshold tuned
    elsewhere.
    """
    b = weights.shape[0]
    total = weights.sum(axis=1)
    ok = total > 0
    safe = np.where(ok, total, 1.0)
    rows = np.arange(b)
    dice_sum = weights @ dice_curves
    iou_sum = weights @ iou_curves
    dice = dice_sum / safe[:, None]
    iou = iou_sum / safe[:, None]
    best = first_argmax(dice)
    out = {
        "pointing_game": weights @ pointing_game / safe,
        "ebpg": weights @ ebpg / safe,
        "dice_fixed": dice[:, fixed_index],
        "iou_fixed": iou[:, fixed_index],
        "dice_best": dice[rows, best],
        "iou_best": iou[rows, best],
    }
    out["calibration_gap"] = out["dice_best"] - out["dice_fixed"]
    if folds is not None:
        out["dice_crossval"], out["iou_crossval"] = _crossval(dice_curves, iou_curves, weights, folds, dice_sum, safe)
    if val_index is not None:
        out["dice_val"] = dice[:, val_index]
        out["iou_val"] = iou[:, val_index]
    return {k: np.where(ok, v, np.nan) for k, v in out.items()}


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


# ---- classification -----------------------------------------------------------------------------
@_by_row_blocks
def classification_resamples(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AUPRC, F1 and accuracy (at 0.5 and at the best-F1 threshold) of every resample.

    Positives and negatives are sorted by score once; with the running sums of their weights, each
    positive k of a resample knows the weighted negatives below its score (AUROC, ties one half)
    and the weighted positives and negatives at or above it (precision at its score for AUPRC, F1
    at its score for the best-F1 threshold: F1 is highest at a positive's score)."""
    b = weights.shape[0]
    y = labels == 1
    names = ("auroc", "auprc", "f1", "f1_best", "accuracy", "accuracy_best")
    if len(labels) == 0:
        return {k: np.full(b, np.nan) for k in names}
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
        out.update({k: np.full(b, np.nan) for k in ("auroc", "auprc", "f1_best", "accuracy_best")})
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
    called = tp + fp
    precision = tp / np.where(called > 0, called, 1.0)
    auprc = np.einsum("ij,ij->i", wp, precision) / np.where(has_pos, pos, 1.0)
    f1_curve = 2 * tp / np.maximum(tp + fp + pos[:, None], 1e-300)
    # the first maximum from the highest score down, as `builtin.best_f1_threshold`
    k = len(sp) - 1 - np.argmax(f1_curve[:, ::-1], axis=1)
    rows = np.arange(b)
    out["auroc"] = np.where(both, auroc, np.nan)
    out["auprc"] = np.where(both, auprc, np.nan)
    out["f1_best"] = np.where(has_pos, f1_curve[rows, k], np.nan)
    out["accuracy_best"] = np.where(has_pos, (tp[rows, k] + neg - fp[rows, k]) / safe_total, np.nan)
    return {n: out[n] for n in names}


def mean_over(values: Mapping[str, list[np.ndarray]], b: int) -> dict[str, np.ndarray]:
    """Per field, the mean over findings of their resample values; NaN where any of them is NaN."""
    out = {}
    for name, arrays in values.items():
        if arrays:
            out[name] = np.mean(np.stack(arrays), axis=0)  # NaN propagates: the resample is skipped
        else:
            out[name] = np.full(b, np.nan)
    return out
