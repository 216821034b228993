"""Faithfulness fields of results.json rows, from the records' `faithfulness` values.

Per finding row: the mean over the finding's positive images with a region of each per-image value
(drops are probabilities: score - perturbed score), `causal_retention` (the share of the images the
model calls positive that are causal), the mean deletion/insertion curves, and the grounding metrics
again on the causal subset (`causal_subset`). Intervals: percentile bootstrap over the finding's
images (`<field>_ci`), drawn as the other metrics' (`bootstrap.generator` with the dataset, split and
finding). Mean rows: the mean over findings, with intervals from the images of the (dataset, split,
model, explainer) resampled jointly. Directions: `ablation_drop`, `ablation_gap`, `insertion_auc`,
`causal_retention` higher is better; `ablation_control_drop`, `deletion_auc`, `sanity_rank_corr`
lower is better; the random-order AUCs and the complement drop are controls.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ..grounding import N_THRESHOLDS
from . import bootstrap as bs
from .data import FindingData, Undefined, as_json_value

FIELDS = (
    "ablation_drop", "ablation_control_drop", "ablation_gap", "ablation_complement_drop",
    "deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random",
    "causal_retention", "sanity_rank_corr",
)
CURVES = ("deletion_curve", "deletion_curve_random", "insertion_curve", "insertion_curve_random")
HIGHER_IS_BETTER = {"ablation_drop": True, "ablation_gap": True, "insertion_auc": True, "causal_retention": True,
                    "ablation_control_drop": False, "deletion_auc": False, "sanity_rank_corr": False}
MEAN = "__mean__"
Key = tuple[str, Any, str, str, str]


def per_image(values: Mapping[str, Any]) -> dict[str, float]:
    """The scalar per-image values of one record's `faithfulness` (NaN where absent)."""
    out = {}
    for name in FIELDS:
        if name == "ablation_gap":
            a, c = values.get("ablation_drop"), values.get("ablation_control_drop")
            v = None if a is None or c is None else a - c
        elif name == "causal_retention":
            causal = values.get("causal")
            v = None if causal is None else float(causal)
        else:
            v = values.get(name)
        out[name] = np.nan if v is None else float(v)
    return out


class Collector:
    """Taps the records on their way into the aggregation and keeps what the faithfulness fields
    need: per (dataset, split, model, explainer, finding), each image's values and grounding stats."""

    def __init__(self, split_of: Callable[[Mapping[str, Any]], Any] | None = None) -> None:
        self.split_of = split_of or (lambda r: r.get("split"))
        self.found: dict[Key, list[tuple[str, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
        self.failed: dict[Key, int] = defaultdict(int)
        self._values: dict[Key, tuple[list[str], np.ndarray]] = {}

    def tap(self, records: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for r in records:
            faith = r.get("faithfulness")
            if faith is not None and not r.get("error") and r.get("finding") is not None:
                key = (r["dataset"], self.split_of(r), r["model"], r["explainer"], r["finding"])
                if faith.get("error"):
                    self.failed[key] += 1
                else:
                    self.found[key].append((r["id"], faith, r.get("stats") or {}))
            yield r

    def add_fields(self, rows: list[dict[str, Any]], grounding: Mapping[str, Callable[[FindingData], Mapping[str, Any]]],
                   seed: int = 0, resamples: int = bs.RESAMPLES, confidence: float = bs.CONFIDENCE) -> None:
        """Add the faithfulness fields to the rows of the keys that have values (in place)."""
        if not self.found and not self.failed:
            return
        by_key = {(r["dataset"], r.get("split"), r["model"], r["explainer"], r["finding"]): r for r in rows}
        groups: dict[tuple, list[Key]] = defaultdict(list)
        for key in sorted(set(self.found) | set(self.failed), key=_sort_key):
            row = by_key.get(key)
            if row is None:
                continue
            items = sorted(self.found.get(key, []), key=lambda t: t[0])
            ids = [t[0] for t in items]
            values = np.array([[per_image(t[1])[n] for n in FIELDS] for t in items]).reshape(-1, len(FIELDS))
            row.update(_point(values))
            row["n_faithfulness"] = len(items)
            row["n_faithfulness_failed"] = self.failed.get(key, 0)
            row["n_called_positive"] = int(np.isfinite(values[:, FIELDS.index("causal_retention")]).sum())
            for c in CURVES:
                curves = [t[1][c] for t in items if t[1].get(c)]
                row[c] = [round(float(v), 6) for v in np.mean(curves, axis=0)] if curves else None
            row["causal_subset"] = _causal_subset(items, grounding, row.get("fixed_threshold", 0.5))
            if resamples > 0 and items:
                w = bs.resample_counts(len(items), bs.generator(seed, key[0], str(key[1]), key[4], "faithfulness"), resamples)
                row.update(_cis(_resampled(values, w), row, confidence))
            groups[key[:4]].append(key)
            row.setdefault("undefined", {}).update({n: "no image with this value" for n in FIELDS if row.get(n) is None})
            self._values[key] = (ids, values)
        for g, keys in groups.items():
            mean = by_key.get((*g, MEAN))
            if mean is not None:
                self._mean(mean, keys, [by_key[k] for k in keys], seed, resamples, confidence)

    def _mean(self, row: dict[str, Any], keys: list[Key], finding_rows: list[dict[str, Any]], seed: int,
              resamples: int, confidence: float) -> None:
        for n in FIELDS:
            vals = [r[n] for r in finding_rows if r.get(n) is not None]
            row[n] = float(np.mean(vals)) if vals else None
        row["n_faithfulness"] = sum(r["n_faithfulness"] for r in finding_rows)
        row["n_called_positive"] = sum(r["n_called_positive"] for r in finding_rows)
        for c in CURVES:
            curves = [r[c] for r in finding_rows if r.get(c)]
            row[c] = [round(float(v), 6) for v in np.mean(curves, axis=0)] if curves else None
        sub = [r["causal_subset"] for r in finding_rows if r.get("causal_subset")]
        row["causal_subset"] = _mean_subset(sub)
        universe = sorted({i for k in keys for i in self._values[k][0]})
        if resamples > 0 and universe:
            index = {i: p for p, i in enumerate(universe)}
            g = keys[0]
            w = bs.resample_counts(len(universe), bs.generator(seed, g[0], str(g[1]), MEAN, "faithfulness"), resamples)
            per_field: dict[str, list[np.ndarray]] = defaultdict(list)
            for k, r in zip(keys, finding_rows):
                ids, values = self._values[k]
                res = _resampled(values, w[:, [index[i] for i in ids]])
                for n in FIELDS:
                    if r.get(n) is not None:
                        per_field[n].append(res[n])
            row.update(_cis(bs.mean_over(per_field, resamples), row, confidence))
        row.setdefault("undefined", {}).update({n: "undefined for every finding" for n in FIELDS if row.get(n) is None})


def _sort_key(key: tuple) -> tuple:
    return tuple("" if k is None else str(k) for k in key)


def _point(values: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for j, n in enumerate(FIELDS):
        col = values[:, j]
        col = col[np.isfinite(col)]
        out[n] = float(col.mean()) if len(col) else None
    return out


def _resampled(values: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each field's weighted mean over the images with a value, per resample ([B] each)."""
    out = {}
    w = np.asarray(weights, np.float64)
    for j, n in enumerate(FIELDS):
        col = values[:, j]
        ok = np.isfinite(col)
        tot = w[:, ok].sum(axis=1)
        s = w[:, ok] @ col[ok]
        out[n] = np.where(tot > 0, s / np.where(tot > 0, tot, 1.0), np.nan)
    return out


def _cis(resampled: Mapping[str, np.ndarray], row: Mapping[str, Any], confidence: float) -> dict[str, Any]:
    out = {}
    for n in FIELDS:
        out[f"{n}_ci"] = None if row.get(n) is None or n not in resampled else bs.interval(resampled[n], confidence)[0]
    return out


def _causal_subset(items: list[tuple[str, dict[str, Any], dict[str, Any]]],
                   grounding: Mapping[str, Callable[[FindingData], Mapping[str, Any]]], fixed: float) -> dict[str, Any]:
    """Every grounding metric on the images the model calls positive that are causal."""
    chosen = [(i, st) for i, f, st in items if f.get("causal") is True and st]
    out: dict[str, Any] = {"n_regions": len(chosen)}
    d = FindingData(
        hits_all=np.array([st["hits_all"] for _, st in chosen], np.int64).reshape(-1, N_THRESHOLDS),
        hits_region=np.array([st["hits_region"] for _, st in chosen], np.int64).reshape(-1, N_THRESHOLDS),
        region_px=np.array([st["region_px"] for _, st in chosen], np.int64),
        total_px=np.array([st["total_px"] for _, st in chosen], np.int64),
        pointing_game=np.array([st["pointing_game"] for _, st in chosen], np.float64),
        ebpg=np.array([st["ebpg"] for _, st in chosen], np.float64),
        fixed_threshold=float(fixed) if fixed is not None else 0.5,
        region_ids=np.array([i for i, _ in chosen], object),
    )
    for metric in grounding.values():
        for k, v in metric(d).items():
            out[k] = None if isinstance(v, Undefined) else as_json_value(v)
    return out


def _mean_subset(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    out: dict[str, Any] = {"n_regions": sum(r["n_regions"] for r in rows)}
    for k in rows[0]:
        if k == "n_regions":
            continue
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = float(np.mean(vals)) if vals else None
    return out
