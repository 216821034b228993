"""From records to `results.json` rows: one row per (dataset, split, model, explainer, finding) and
one mean row (`finding: "__mean__"`) per (dataset, split, model, explainer); the analysis
(intervals, strata, threshold modes, fit across models) is in `analysis`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..grounding import N_THRESHOLDS
from ..schema import MEAN
from .analysis import (
    AnalysisOptions,
    FindingAnalysis,
    Resampler,
    _scalar_fields,
    analyse_finding,
    analyse_mean,
    recognition_vs_grounding,
    val_pairs,
)
from .bootstrap import single_threaded_blas
from .builtin import best_threshold_index
from .data import FindingData, Undefined, as_json_value

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
GroupKey = tuple[str, Any, str, str]  # dataset, split, model, explainer
FindingKey = tuple[str, Any, str, str, str]
# built-in metrics by kind, for callers that do not pass the registry's kinds
BUILTIN_KINDS = {"pointing_game": "grounding", "ebpg": "grounding", "dice": "grounding", "iou": "grounding",
                 "auroc": "classification", "auprc": "classification", "f1": "classification",
                 "accuracy": "classification"}


def collect(
    records: Iterable[Mapping[str, Any]],
    fixed_threshold: float = 0.5,
    split_of: Callable[[Mapping[str, Any]], Any] | None = None,
    pointing: str = "share",
    protocol: str = "xbench",
) -> tuple[dict[FindingKey, FindingData], dict[GroupKey, dict[str, Any]]]:
    """Group records into FindingData per (dataset, split, model, explainer, finding), plus per-group
    bookkeeping: error records and the per-image predictions for Hamming accuracy. `pointing` is
    the pointing game's tie rule (share, any, first; see xbench_core.protocols)."""
    split_of = split_of or (lambda r: r.get("split"))
    pg_key = "pointing_game" if pointing == "share" else f"pointing_{pointing}"
    cls: dict[tuple, list[tuple[int, float, str]]] = defaultdict(list)
    grd: dict[tuple, list[tuple[np.ndarray, np.ndarray, tuple, str, dict[str, Any]]]] = defaultdict(list)
    extra: dict[GroupKey, dict[str, Any]] = defaultdict(
        lambda: {"errors": [], "images": set(), "pairs": defaultdict(dict), "constant": defaultdict(int)}
    )
    for r in records:
        g = (r["dataset"], split_of(r), r["model"], r["explainer"])
        if r.get("error"):
            extra[g]["errors"].append(
                {"id": r["id"], "finding": r.get("finding"), "error": r["error"]}
            )
            continue
        extra[g]["images"].add(r["id"])
        if r.get("finding") is None:
            continue  # a sample seen by a model that supports none of its findings
        key = (*g, r["finding"])
        if r.get("label") is not None and r.get("score") is not None:
            cls[key].append((int(r["label"]), float(r["score"]), r["id"]))
            extra[g]["pairs"][r["id"]][r["finding"]] = (int(r["label"]), float(r["score"]))
        st = r.get("stats")
        if st is not None:
            extra[g]["constant"][r["finding"]] += bool(st.get("constant_map"))
            # kept as arrays, not the record's lists: memory per region is ~2 KB instead of ~7 KB
            grd[key].append(
                (
                    np.asarray(st["hits_all"], np.int64),
                    np.asarray(st["hits_region"], np.int64),
                    (st["region_px"], st["total_px"], st.get(pg_key, st["pointing_game"]), st["ebpg"]),
                    r["id"],
                    st.get("extra") or {},
                )
            )
        else:
            grd.setdefault(key, [])
    for e in extra.values():  # the records' order (shards, resumes) must not show
        e["errors"].sort(key=lambda x: (x["id"], x["finding"] or ""))
    data: dict[FindingKey, FindingData] = {}
    for key in sorted(set(cls) | set(grd), key=_sort_key):
        # images in id order: the bootstrap's resamples must not depend on the order of the records
        pairs = sorted(cls.get(key, []), key=lambda p: p[2])
        grounded = sorted(grd.get(key, []), key=lambda s: s[3])
        scalars = np.array([s[2] for s in grounded], np.float64).reshape(-1, 4)
        data[key] = FindingData(
            labels=np.array([p[0] for p in pairs], np.int64),
            scores=np.array([p[1] for p in pairs], np.float64),
            hits_all=np.array([s[0] for s in grounded], np.int64).reshape(-1, N_THRESHOLDS),
            hits_region=np.array([s[1] for s in grounded], np.int64).reshape(-1, N_THRESHOLDS),
            region_px=np.array([s[2][0] for s in grounded], np.int64),
            total_px=np.array([s[2][1] for s in grounded], np.int64),
            pointing_game=scalars[:, 2].copy(),
            ebpg=scalars[:, 3].copy(),
            fixed_threshold=fixed_threshold,
            image_ids=np.array([p[2] for p in pairs], object),
            region_ids=np.array([s[3] for s in grounded], object),
            extra=stack_extra([s[4] for s in grounded]),
            protocol=protocol,
        )
    return data, extra


def stack_extra(rows: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per key of the records' `stats["extra"]`, the values of all rows: scalars as float [m] (NaN
    where a row has none), lists as [m, K] arrays."""
    out: dict[str, np.ndarray] = {}
    for key in sorted({k for r in rows for k in r}):
        values = [r.get(key) for r in rows]
        if any(isinstance(v, list) for v in values):
            if any(not isinstance(v, list) for v in values):
                continue  # a sweep some records lack: nothing to aggregate
            out[key] = np.array(values, np.float64)
        else:
            out[key] = np.array([np.nan if v is None else float(v) for v in values], np.float64)
    return out


def _sort_key(key: tuple) -> tuple:
    return tuple("" if k is None else str(k) for k in key)


def finding_row(key: FindingKey, data: FindingData, metrics: Mapping[str, Metric]) -> dict[str, Any]:
    """The row of one finding: counts, every metric's fields, and the reasons for null values."""
    dataset, split, model, explainer, finding = key
    row: dict[str, Any] = {
        "dataset": dataset,
        "split": split,
        "model": model,
        "explainer": explainer,
        "finding": finding,
        "n_images": int(len(data.labels)),
        "n_positive": int(np.sum(data.labels == 1)),
        "n_regions": data.n_regions,
    }
    undefined: dict[str, str] = {}
    with data.sharing():  # the metrics share their sums (the mean Dice curve, the sorted scores)
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
        "split": first.get("split"),
        "model": first["model"],
        "explainer": first["explainer"],
        "finding": MEAN,
        "n_images": len(extra["images"]),
        "n_positive": sum(r["n_positive"] for r in rows),
        "n_regions": sum(r["n_regions"] for r in rows),
        "n_findings": len(rows),
    }
    numeric = [k for k in _scalar_fields(rows, exclude=NOT_AVERAGED) if k not in out]
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
    out["n_constant_maps"] = sum(r.get("n_constant_maps", 0) for r in rows)
    out["undefined"] = undefined
    return out


NOT_AVERAGED = ("n_images", "n_positive", "n_regions", "n_constant_maps", "crossval_thresholds", "split", "finding")


def per_image_hamming(pairs: Mapping[str, Mapping[str, tuple[int, float]]]) -> dict[str, float]:
    """Per image with known labels, the share of its findings predicted right at 0.5."""
    return {
        i: float(np.mean([(score >= 0.5) == (label == 1) for label, score in findings.values()]))
        for i, findings in pairs.items()
        if findings
    }


def hamming_accuracy(pairs: Mapping[str, Mapping[str, tuple[int, float]]]) -> float | None:
    """Mean over images of the share of its known findings predicted right at 0.5."""
    per_image = [
        np.mean([(score >= 0.5) == (label == 1) for label, score in pairs[i].values()])
        for i in sorted(pairs)
        if pairs[i]
    ]
    return float(np.mean(per_image)) if per_image else None


def aggregate(
    records: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Metric],
    fixed_threshold: float = 0.5,
    *,
    kinds: Mapping[str, str] | None = None,
    options: AnalysisOptions | None = None,
    split_of: Callable[[Mapping[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """The content of results.json (without the run's manifest): rows with their confidence
    intervals, strata and threshold modes, errors, and the recognition-vs-grounding fit.

    `kinds` gives each metric's kind (grounding metrics are also computed per stratum; default: the
    built-in metrics' kinds); `split_of` a record's dataset split (default: its `split` field)."""
    with single_threaded_blas():
        return _aggregate(records, metrics, fixed_threshold, kinds, options or AnalysisOptions(), split_of)


def _aggregate(
    records: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Metric],
    fixed_threshold: float,
    kinds: Mapping[str, str] | None,
    options: AnalysisOptions,
    split_of: Callable[[Mapping[str, Any]], Any] | None,
) -> dict[str, Any]:
    kinds = {**BUILTIN_KINDS, **(kinds or {})}
    by_name = {n: (m, kinds[n]) for n, m in metrics.items() if kinds.get(n) in ("grounding", "classification")}
    from .faithfulness import Collector

    faithfulness = Collector(split_of)
    data, extra = collect(faithfulness.tap(records), fixed_threshold, split_of, options.pointing, options.protocol)
    pairs = val_pairs(list(data))
    resampler = Resampler(options)
    analysed: dict[FindingKey, FindingAnalysis] = {}
    # finding by finding across models, so that each finding's resamples are drawn once
    for key in sorted(data, key=lambda k: _sort_key((k[0], k[1], k[4], k[2], k[3]))):
        d = data[key]
        val_index = None
        paired = pairs.get((key[0], key[1]))
        if paired is not None:
            val = data.get((*paired, *key[2:]))
            if val is not None and val.n_regions:
                val_index = best_threshold_index(val)
        row = finding_row(key, d, metrics)
        analysed[key] = analyse_finding(key, d, row, by_name, options, val_index, resampler)
    by_group: dict[GroupKey, list[FindingAnalysis]] = defaultdict(list)
    for key in data:  # sorted by group, then finding
        by_group[key[:4]].append(analysed[key])
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for g in sorted(set(by_group) | set(extra), key=_sort_key):
        group = by_group.get(g, [])
        for f in group:  # a constant map scores as uniform: say how many there were
            f.row["n_constant_maps"] = extra[g]["constant"].get(f.row["finding"], 0)
        rows.extend(f.row for f in group)
        if group:
            mean = mean_row([f.row for f in group], extra[g])
            analyse_mean(mean, group, sorted(extra[g]["images"]), per_image_hamming(extra[g]["pairs"]), options, resampler)
            rows.append(mean)
        errors.extend({"dataset": g[0], "model": g[2], "explainer": g[3], **e} for e in extra[g]["errors"])
    grounding = {n: m for n, (m, kind) in by_name.items() if kind == "grounding"}
    faithfulness.add_fields(rows, grounding, options.seed, options.resamples, options.confidence)
    return {
        "rows": rows,
        "errors": errors,
        "analysis": {**options.describe(), "val_pairs": [
            {"dataset": t[0], "test_split": t[1], "val_split": v[1]} for t, v in sorted(pairs.items(), key=lambda kv: _sort_key(kv[0]))
        ]},
        "recognition_vs_grounding": recognition_vs_grounding(rows),
    }
