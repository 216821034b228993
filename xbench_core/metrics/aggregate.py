"""From records to `results.json` rows: one row per (dataset, model, explainer, finding) and one
mean row (`finding: "__mean__"`) per (dataset, model, explainer)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..grounding import N_THRESHOLDS
from .data import FindingData, Undefined, as_json_value

MEAN = "__mean__"
ROW_FIELDS = (
    "pointing_game",
    "ebpg",
    "dice_fixed",
    "iou_fixed",
    "dice_best",
    "iou_best",
    "best_threshold",
    "auroc",
    "auprc",
    "f1",
    "accuracy",
)

Metric = Callable[[FindingData], Mapping[str, Any]]
GroupKey = tuple[str, str, str]


def collect(records: Iterable[Mapping[str, Any]], fixed_threshold: float = 0.5) -> tuple[
    dict[tuple[str, str, str, str], FindingData], dict[GroupKey, dict[str, Any]]
]:
    """Group records into FindingData per (dataset, model, explainer, finding), plus per-group
    bookkeeping: error records and the per-image predictions for Hamming accuracy."""
    cls: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    grd: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    extra: dict[GroupKey, dict[str, Any]] = defaultdict(
        lambda: {"errors": [], "images": set(), "pairs": defaultdict(dict)}
    )
    for r in records:
        g = (r["dataset"], r["model"], r["explainer"])
        if r.get("error"):
            extra[g]["errors"].append(
                {"id": r["id"], "finding": r.get("finding"), "error": r["error"]}
            )
            continue
        extra[g]["images"].add(r["id"])
        key = (*g, r["finding"])
        if r.get("label") is not None and r.get("score") is not None:
            cls[key].append((int(r["label"]), float(r["score"])))
            extra[g]["pairs"][r["id"]][r["finding"]] = (int(r["label"]), float(r["score"]))
        if r.get("stats") is not None:
            grd[key].append(r["stats"])
        else:
            grd.setdefault(key, [])
    data: dict[tuple[str, str, str, str], FindingData] = {}
    for key in sorted(set(cls) | set(grd)):
        pairs = cls.get(key, [])
        stats = grd.get(key, [])
        data[key] = FindingData(
            labels=np.array([p[0] for p in pairs], np.int64),
            scores=np.array([p[1] for p in pairs], np.float64),
            hits_all=np.array([s["hits_all"] for s in stats], np.int64).reshape(-1, N_THRESHOLDS),
            hits_region=np.array([s["hits_region"] for s in stats], np.int64).reshape(-1, N_THRESHOLDS),
            region_px=np.array([s["region_px"] for s in stats], np.int64),
            total_px=np.array([s["total_px"] for s in stats], np.int64),
            pointing_game=np.array([s["pointing_game"] for s in stats], np.float64),
            ebpg=np.array([s["ebpg"] for s in stats], np.float64),
            fixed_threshold=fixed_threshold,
        )
    return data, extra


def finding_row(key: tuple[str, str, str, str], data: FindingData, metrics: Mapping[str, Metric]) -> dict[str, Any]:
    """The row of one finding: counts, every metric's fields, and the reasons for null values."""
    dataset, model, explainer, finding = key
    row: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "explainer": explainer,
        "finding": finding,
        "n_images": int(len(data.labels)),
        "n_positive": int(np.sum(data.labels == 1)),
        "n_regions": data.n_regions,
    }
    undefined: dict[str, str] = {}
    for metric in metrics.values():
        for name, value in metric(data).items():
            if isinstance(value, Undefined):
                undefined[name] = value.reason
            row[name] = as_json_value(value)
    row["undefined"] = undefined
    return row


def mean_row(rows: list[dict[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Means over the findings of a (dataset, model, explainer) (nulls left out), and Hamming accuracy."""
    first = rows[0]
    out: dict[str, Any] = {
        "dataset": first["dataset"],
        "model": first["model"],
        "explainer": first["explainer"],
        "finding": MEAN,
        "n_images": len(extra["images"]),
        "n_positive": sum(r["n_positive"] for r in rows),
        "n_regions": sum(r["n_regions"] for r in rows),
        "n_findings": len(rows),
    }
    numeric = [k for k in rows[0] if k not in out and k not in ("undefined",) and k != "finding"]
    undefined: dict[str, str] = {}
    for k in numeric:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if vals:
            out[k] = float(np.mean(vals))
        else:
            out[k] = None
            undefined[k] = "undefined for every finding"
    out["hamming_accuracy"] = hamming_accuracy(extra["pairs"])
    if out["hamming_accuracy"] is None:
        undefined["hamming_accuracy"] = "no image with known labels"
    out["n_errors"] = len(extra["errors"])
    out["undefined"] = undefined
    return out


def hamming_accuracy(pairs: Mapping[str, Mapping[str, tuple[int, float]]]) -> float | None:
    """Mean over images of the share of its known findings predicted right at 0.5."""
    per_image = [
        np.mean([(score >= 0.5) == (label == 1) for label, score in findings.values()])
        for findings in pairs.values()
        if findings
    ]
    return float(np.mean(per_image)) if per_image else None


def aggregate(
    records: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Metric],
    fixed_threshold: float = 0.5,
) -> dict[str, Any]:
    """The content of results.json (without the run's manifest)."""
    data, extra = collect(records, fixed_threshold)
    rows: list[dict[str, Any]] = []
    by_group: dict[GroupKey, list[dict[str, Any]]] = defaultdict(list)
    for key, d in data.items():
        row = finding_row(key, d, metrics)
        by_group[key[:3]].append(row)
    errors = []
    for g in sorted(set(by_group) | set(extra)):
        group_rows = by_group.get(g, [])
        rows.extend(group_rows)
        if group_rows:
            rows.append(mean_row(group_rows, extra[g]))
        errors.extend({"dataset": g[0], "model": g[1], "explainer": g[2], **e} for e in extra[g]["errors"])
    return {"rows": rows, "errors": errors}
