"""The built-in metrics: grounding (pointing game, EBPG, Dice, IoU) and recognition (AUROC, AUPRC,
F1, accuracy). Each takes one finding's `FindingData` and returns its row fields; a value that does
not exist is `Undefined(reason)`, never 0 and never NaN."""

from __future__ import annotations

import numpy as np

from .data import FindingData, Undefined

NO_REGIONS = Undefined("no positive image with a region")


def pointing_game(d: FindingData) -> dict:
    return {"pointing_game": float(d.pointing_game.mean()) if d.n_regions else NO_REGIONS}


def ebpg(d: FindingData) -> dict:
    return {"ebpg": float(d.ebpg.mean()) if d.n_regions else NO_REGIONS}


def best_threshold_index(d: FindingData) -> int:
    """The tau of the grid that maximizes the mean Dice over the finding's images (first on ties)."""
    return int(np.argmax(d.dice_curve().mean(axis=0)))


def dice(d: FindingData) -> dict:
    if not d.n_regions:
        return {"dice_fixed": NO_REGIONS, "dice_best": NO_REGIONS, "best_threshold": NO_REGIONS}
    mean = d.dice_curve().mean(axis=0)
    k = int(np.argmax(mean))
    return {
        "dice_fixed": float(mean[d.fixed_index]),
        "dice_best": float(mean[k]),
        "best_threshold": k / 100,
    }


def iou(d: FindingData) -> dict:
    if not d.n_regions:
        return {"iou_fixed": NO_REGIONS, "iou_best": NO_REGIONS}
    mean = d.iou_curve().mean(axis=0)
    return {"iou_fixed": float(mean[d.fixed_index]), "iou_best": float(mean[best_threshold_index(d)])}


def _two_classes(d: FindingData) -> Undefined | None:
    if len(d.labels) == 0:
        return Undefined("no scored image with a known label")
    if d.labels.min() == d.labels.max():
        return Undefined(f"only one class among labels (all {int(d.labels[0])})")
    return None


def auroc(d: FindingData) -> dict:
    from sklearn.metrics import roc_auc_score

    bad = _two_classes(d)
    return {"auroc": bad or float(roc_auc_score(d.labels, d.scores))}


def auprc(d: FindingData) -> dict:
    from sklearn.metrics import average_precision_score

    bad = _two_classes(d)
    return {"auprc": bad or float(average_precision_score(d.labels, d.scores))}


def _f1_at(labels: np.ndarray, predicted: np.ndarray) -> float:
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0


def best_f1_threshold(d: FindingData) -> float:
    """The score threshold (a distinct score) that maximizes F1 on these images."""
    order = np.argsort(-d.scores, kind="stable")
    s, y = d.scores[order], d.labels[order]
    tp = np.cumsum(y == 1)
    fp = np.cumsum(y == 0)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # predict >= s[i] for each distinct s
    positives = int(np.sum(y == 1))
    f1 = 2 * tp[last] / np.maximum(tp[last] + fp[last] + positives, 1)
    return float(s[last[int(np.argmax(f1))]])


def f1(d: FindingData) -> dict:
    if len(d.labels) == 0:
        u = Undefined("no scored image with a known label")
        return {"f1": u, "f1_best": u, "f1_best_threshold": u}
    if not np.any(d.labels == 1):
        u = Undefined("no positive label: F1 is undefined")
        return {"f1": u, "f1_best": u, "f1_best_threshold": u}
    t = best_f1_threshold(d)
    return {
        "f1": _f1_at(d.labels, d.scores >= 0.5),
        "f1_best": _f1_at(d.labels, d.scores >= t),
        "f1_best_threshold": t,
    }


def accuracy(d: FindingData) -> dict:
    if len(d.labels) == 0:
        u = Undefined("no scored image with a known label")
        return {"accuracy": u, "accuracy_best": u}
    fixed = float(np.mean((d.scores >= 0.5) == (d.labels == 1)))
    if not np.any(d.labels == 1):
        return {"accuracy": fixed, "accuracy_best": Undefined("no positive label: no best-F1 threshold")}
    t = best_f1_threshold(d)
    return {"accuracy": fixed, "accuracy_best": float(np.mean((d.scores >= t) == (d.labels == 1)))}
