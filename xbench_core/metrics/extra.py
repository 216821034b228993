"""Metrics beyond the built-in grounding set, from the per-region values in `stats["extra"]`:
contrast-to-noise ratio, mIoU over fixed raw thresholds, pooled pixel precision/recall/specificity,
and the values of the grounding protocols (`xbench_core.protocols`). Each has a `resample` hook that
computes all its resamples at once, so its bootstrap interval costs what the built-ins' do."""

from __future__ import annotations

from typing import Any

import numpy as np

from .bootstrap import first_argmax
from .data import FindingData, Undefined

# fields whose per-image values are averaged over the images that have one (NaN left out)
MEAN_FIELDS = (
    "cnr", "miou_raw",
    "chexlocalize_iou", "chexlocalize_hit",
    "medklip_iou", "medklip_dice", "medklip_pointing",
    "mavl_pointing",
)
PIXEL_FIELDS = ("pixel_precision", "pixel_recall", "pixel_specificity")
MAVL_FIELDS = ("mavl_iou", "mavl_dice")
EXTRA_CI = MEAN_FIELDS + PIXEL_FIELDS + MAVL_FIELDS + ("chexlocalize_iou_tuned",)
PROTOCOL_FIELDS = {
    "chexlocalize": ("chexlocalize_iou", "chexlocalize_hit", "chexlocalize_iou_tuned", "chexlocalize_threshold"),
    "medklip": ("medklip_iou", "medklip_dice", "medklip_pointing"),
    "mavl": ("mavl_iou", "mavl_dice", "mavl_threshold", "mavl_pointing"),
}
_ROWS = 100  # resamples per block of the MAVL sweep ([rows, 9999] temporaries)


def _mean(d: FindingData, name: str, reason: str) -> Any:
    v = d.extra.get(name)
    if v is None or not np.isfinite(v).any():
        return Undefined(reason)
    return float(np.mean(v[np.isfinite(v)]))


def cnr(d: FindingData) -> dict:
    return {"cnr": _mean(d, "cnr", "no region with pixels inside and outside and a non-constant map")}


def miou_raw(d: FindingData) -> dict:
    return {"miou_raw": _mean(d, "miou_raw", "no positive image with a region")}


def pixel_counts(d: FindingData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per region, the pixel TP, FP, FN, TN of the binarized map: the protocol's own binarization
    when it recorded one (cheXlocalize), else the map at the fixed threshold (`>=`)."""
    if "px_tp" in d.extra:
        return d.extra["px_tp"], d.extra["px_fp"], d.extra["px_fn"], d.extra["px_tn"]
    k = d.fixed_index
    tp = d.hits_region[:, k].astype(np.float64)
    fp = d.hits_all[:, k] - tp
    fn = d.region_px - tp
    tn = d.total_px - tp - fp - fn
    return tp, fp, fn, tn.astype(np.float64)


def pixel_prs(d: FindingData) -> dict:
    """cheXlocalize's precision, recall and specificity: pixel counts pooled over the images."""
    if not d.n_regions:
        return {n: Undefined("no positive image with a region") for n in PIXEL_FIELDS}
    tp, fp, fn, tn = (float(np.sum(c)) for c in pixel_counts(d))
    out: dict[str, Any] = {}
    for name, num, den in (("pixel_precision", tp, tp + fp), ("pixel_recall", tp, tp + fn),
                           ("pixel_specificity", tn, tn + fp)):
        out[name] = num / den if den > 0 else Undefined("no pixel in the denominator")
    return out


def _mavl_curves(d: FindingData) -> tuple[np.ndarray, np.ndarray]:
    above, inside = d.extra["mavl_sweep_all"], d.extra["mavl_sweep_region"]
    region = d.extra["mavl_region_px"][:, None]
    dice = 2 * inside / np.maximum(above + region, 1)
    iou = inside / np.maximum(above + region - inside, 1)
    return dice, iou


def _chexlocalize_ious(d: FindingData) -> np.ndarray:
    """[m, 6] IoU at each tuning threshold, NaN where the prediction or the region is empty."""
    tp, pred = d.extra["chexlocalize_sweep_tp"], d.extra["chexlocalize_sweep_pred"]
    region = (d.extra["px_tp"] + d.extra["px_fn"])[:, None]
    union = pred + region - tp
    ok = (pred > 0) & (region > 0)
    return np.where(ok, tp / np.where(ok, union, 1.0), np.nan)


def _best_of(miou: np.ndarray) -> np.ndarray:
    """Row-wise index of the first maximum, NaN columns left out (-1 where all are NaN)."""
    filled = np.where(np.isnan(miou), -np.inf, miou)
    k = np.argmax(filled, axis=-1)
    return np.where(np.isfinite(np.take_along_axis(filled, k[..., None], -1)[..., 0]), k, -1)


def protocol(d: FindingData) -> dict:
    """The fields of the protocol whose values the records hold (`<protocol>_<metric>`)."""
    out: dict[str, Any] = {}
    reason = "no positive image with a region"
    for name, fields in PROTOCOL_FIELDS.items():
        if name != d.protocol and not any(k.startswith(name + "_") for k in d.extra):
            continue
        if name == "mavl":
            if "mavl_sweep_all" not in d.extra or not d.n_regions:
                out.update({f: Undefined(reason) for f in fields})
                continue
            from ..protocols import MAVL_THRESHOLDS

            dice, iou = _mavl_curves(d)
            k = int(first_argmax(dice.mean(axis=0)[None])[0])  # the tie rule of its resample hook
            out.update({"mavl_iou": float(iou[:, k].mean()), "mavl_dice": float(dice[:, k].mean()),
                        "mavl_threshold": float(MAVL_THRESHOLDS[k]),
                        "mavl_pointing": _mean(d, "mavl_pointing", reason)})
            continue
        if name == "chexlocalize":
            fields = fields[:2]
            out.update(_chexlocalize_tuned(d))
        out.update({f: _mean(d, f, reason if "hit" not in f and "iou" not in f else
                             "no image with both a prediction and a region") for f in fields})
    return out


def _chexlocalize_tuned(d: FindingData) -> dict[str, Any]:
    """tune_heatmap_threshold.py on these images: the threshold of 0.2 ... 0.8 with the best mIoU
    (true positives only) and that mIoU."""
    if "chexlocalize_sweep_tp" not in d.extra or not d.n_regions:
        u = Undefined("no positive image with a region")
        return {"chexlocalize_iou_tuned": u, "chexlocalize_threshold": u}
    from ..protocols import CHEXLOCALIZE_TUNING

    ious = _chexlocalize_ious(d)
    with np.errstate(invalid="ignore"):
        miou = np.nanmean(ious, axis=0) if np.isfinite(ious).any() else np.full(ious.shape[1], np.nan)
    k = int(_best_of(miou[None])[0])
    if k < 0:
        u = Undefined("no image with both a prediction and a region at any threshold")
        return {"chexlocalize_iou_tuned": u, "chexlocalize_threshold": u}
    return {"chexlocalize_iou_tuned": float(miou[k]),
            "chexlocalize_threshold": round(float(CHEXLOCALIZE_TUNING[k]), 1)}


# ---- resamples: each metric's `resample` hook (see metrics/builtin.py), all resamples at once ------
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _mean_resamples(d: FindingData, weights: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The weighted mean of each per-image field over the images that have a value."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        v = d.extra.get(name)
        if v is not None:
            finite = np.isfinite(v)
            out[name] = _ratio(weights @ np.where(finite, v, 0.0), weights @ finite.astype(np.float64))
    return out


def _pixel_resamples(d: FindingData, weights: np.ndarray) -> dict[str, np.ndarray]:
    if not d.n_regions:
        return {}
    tp, fp, fn, tn = (weights @ np.asarray(c, np.float64) for c in pixel_counts(d))
    return {"pixel_precision": _ratio(tp, tp + fp), "pixel_recall": _ratio(tp, tp + fn),
            "pixel_specificity": _ratio(tn, tn + fp)}


def _protocol_resamples(d: FindingData, weights: np.ndarray) -> dict[str, np.ndarray]:
    out = _mean_resamples(d, weights, tuple(f for f in MEAN_FIELDS if f not in ("cnr", "miou_raw")))
    if "chexlocalize_sweep_tp" in d.extra and d.n_regions:
        ious = _chexlocalize_ious(d)
        finite = np.isfinite(ious)
        miou = _ratio(weights @ np.where(finite, ious, 0.0), weights @ finite.astype(np.float64))
        k = _best_of(miou)
        out["chexlocalize_iou_tuned"] = np.where(k >= 0, miou[np.arange(len(k)), np.maximum(k, 0)], np.nan)
        from ..protocols import CHEXLOCALIZE_TUNING

        tuned = np.array([round(float(t), 1) for t in CHEXLOCALIZE_TUNING])
        out["chexlocalize_threshold"] = np.where(k >= 0, tuned[np.maximum(k, 0)], np.nan)
    if "mavl_sweep_all" in d.extra and d.n_regions:
        dice, iou = _mavl_curves(d)
        total = weights.sum(axis=1)
        safe = np.where(total > 0, total, 1.0)
        best_dice, best_iou = np.empty(len(weights)), np.empty(len(weights))
        best_k = np.empty(len(weights), np.int64)
        for start in range(0, len(weights), _ROWS):
            w = weights[start : start + _ROWS]
            mean_dice = (w @ dice) / safe[start : start + _ROWS, None]
            k = first_argmax(mean_dice)
            rows = np.arange(len(w))
            best_k[start : start + _ROWS] = k
            best_dice[start : start + _ROWS] = mean_dice[rows, k]
            best_iou[start : start + _ROWS] = np.einsum("ij,ji->i", w, iou[:, k]) / safe[start : start + _ROWS]
        out["mavl_dice"] = np.where(total > 0, best_dice, np.nan)
        out["mavl_iou"] = np.where(total > 0, best_iou, np.nan)
        from ..protocols import MAVL_THRESHOLDS

        out["mavl_threshold"] = np.where(total > 0, MAVL_THRESHOLDS[best_k].astype(np.float64), np.nan)
    return out


# The bootstrap calls these hooks (metrics without one would be called once per resample).
cnr.resample = lambda d, weights: _mean_resamples(d, weights, ("cnr",))  # type: ignore[attr-defined]
miou_raw.resample = lambda d, weights: _mean_resamples(d, weights, ("miou_raw",))  # type: ignore[attr-defined]
pixel_prs.resample = _pixel_resamples  # type: ignore[attr-defined]
protocol.resample = _protocol_resamples  # type: ignore[attr-defined]
