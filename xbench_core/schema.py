"""The schema of what a run writes: records (one per image, finding, model and explainer) and
`results.json` (rows per finding plus a mean row, errors, analysis, and the run's header).

Every record is built by `make_record`; a record's group, the unit the store keeps complete and the
runner plans by, is `record_group` (dataset, split, sample id, model, explainer): two splits of one
dataset may use the same ids. `results.json` is assembled by `assemble_results` alone, for a run, a
rebuilt report and a merge of shards or runs.

Run directories written before records carried their split are still read: such a record's split is
resolved from the run's config (`metrics.analysis.split_resolver`); they are not resumed (the run
asks for a new directory or --overwrite).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:  # Python 3.11+ (typing_extensions before); only the type checker reads it
    from typing_extensions import NotRequired

MEAN = "__mean__"  # the `finding` of a group's mean row in results.json
SCHEMA_VERSION = 2  # manifests of runs whose records carry `split`; before: no `schema` key

GroupKey = tuple[str, Any, str, str, str]  # dataset, split, sample id, model, explainer


class Stats(TypedDict):
    """A record's grounding statistics at the eval frame (grounding.GroundingStats.rows): pixel
    counts above each of the 101 thresholds, over the image and inside the region."""

    region_px: int
    total_px: int
    area_fraction: float
    pointing_game: float
    ebpg: float
    constant_map: bool
    hits_region: list[int]
    hits_all: list[int]
    pointing_any: float  # the pointing game's other tie rules (grounding.pointing picks one)
    pointing_first: float
    extra: dict[str, Any]  # cnr, miou_raw and the grounding protocol's values (xbench_core.protocols)


class Record(TypedDict):
    """One (image, finding) of one model and explainer, as a line of a record shard.

    `n` is the number of records of its group (all findings of the image). `finding` is None for an
    image whose findings the model supports none of (seen, not scored) or that failed as a whole.
    The store adds `attempt` when it writes the record.
    """

    dataset: str
    split: str | None
    id: str
    model: str
    explainer: str
    finding: str | None
    n: int
    label: int | None
    score: float | None
    stats: Stats | None
    error: str | None
    faithfulness: NotRequired[dict[str, Any]]  # runs with the faithfulness pass (engine/faithfulness.py)


def make_record(
    dataset: str,
    split: str | None,
    sample_id: str,
    model: str,
    explainer: str,
    finding: str | None,
    n: int,
    *,
    label: int | None = None,
    score: float | None = None,
    stats: Stats | None = None,
    error: str | None = None,
    faithfulness: dict[str, Any] | None = None,
) -> Record:
    record: Record = {"dataset": dataset, "split": split, "id": sample_id, "model": model, "explainer": explainer,
                      "finding": finding, "n": n, "label": label, "score": score, "stats": stats, "error": error}
    if faithfulness is not None:
        record["faithfulness"] = faithfulness
    return record


def record_group(r: Mapping[str, Any]) -> GroupKey:
    """The group a record belongs to (records without `split` were written by older versions)."""
    return (r["dataset"], r.get("split"), r["id"], r["model"], r["explainer"])


class Results(TypedDict, total=False):
    """results.json. One run has `run`; a merge of several runs has `runs` and `merged_from`."""

    xbench: str | None
    created: str
    run: str
    runs: list[str]
    merged_from: dict[str, Any]
    config: dict[str, Any]
    versions: Any
    random_weights: list[str]
    model_notes: dict[str, str]
    skipped_explainers: list[dict[str, str]]
    problems: dict[str, dict[str, Any]]  # per dataset with label problems: their summary
    rows: list[dict[str, Any]]  # per (dataset, split, model, explainer): one per finding, then MEAN
    errors: list[dict[str, Any]]
    analysis: dict[str, Any]
    recognition_vs_grounding: Any


def metric_functions(registry: Any, names: list[str] | None) -> dict[str, Any]:
    """The metrics to compute: `names` (all installed when None), built."""
    chosen = names if names is not None else list(registry.metrics)
    return {n: registry.metrics[n].build() for n in chosen}


def assemble_results(
    records: Iterable[Mapping[str, Any]],
    registry: Any,
    config: Mapping[str, Any],
    *,
    source: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any]],
    skipped: list[dict[str, str]],
    xbench: str | None,
    versions: Any,
    metrics: list[str] | None,
    split_of: Callable[[Mapping[str, Any]], Any] | None = None,
    warnings: list[str] | None = None,
    problems: Mapping[str, Any] | None = None,
) -> Results:
    """results.json from records: the rows and analysis (metrics.aggregate) under the run's header.

    `config` is the run's config as in its manifest (its metrics, fixed threshold and analysis
    options are used); `metrics` the metric names (None: all installed); `source` is {"run": DIR} or {"runs": [...], "merged_from": {...}}; `models`
    the manifest's per-model entries (random weights, notes); `split_of` a record's split (default:
    its `split` field)."""
    from .metrics.aggregate import aggregate
    from .metrics.analysis import AnalysisOptions

    fns = metric_functions(registry, metrics)
    body = aggregate(
        records, fns, fixed_threshold=float((config.get("grounding") or {}).get("fixed_threshold", 0.5)),
        kinds={n: registry.metrics[n].kind for n in fns}, options=AnalysisOptions.from_config(config),
        split_of=split_of,
    )
    body["analysis"]["warnings"] = list(warnings or [])
    results: dict[str, Any] = {
        "xbench": xbench,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **source,
        "config": dict(config),
        "versions": versions,
        "random_weights": sorted(k for k, v in models.items() if v.get("random_weights")),
        "model_notes": {k: v["note"] for k, v in models.items() if v.get("note")},
        "skipped_explainers": list(skipped),
        **({"problems": dict(problems)} if problems else {}),
        **body,
    }
    return cast(Results, results)
