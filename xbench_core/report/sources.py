"""The runs a report is made of: their stores, manifests and results, merged into one result.

One run: its `results.json` (rebuilt from the records when missing). Several runs: the records of
every run are tagged with their dataset split (from that run's config) and re-aggregated together,
so that a validation split in one run pairs with the test split in another and the fit across
models spans all of them. When the same (dataset, split, model, explainer) is in several runs, the
run whose results were created last wins, and the report says so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store import RunStore

GroupKey = tuple[str, Any, str, str]  # dataset, split, model, explainer


@dataclass
class RunSource:
    """One run directory as the report sees it."""

    path: Path
    store: RunStore
    manifest: dict[str, Any]
    results: dict[str, Any]

    @property
    def created(self) -> str:
        return str(self.results.get("created") or self.manifest.get("finished") or self.manifest.get("started") or "")

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})


@dataclass
class Merged:
    """The report's results, and which run each (dataset, split, model, explainer) came from."""

    results: dict[str, Any]
    sources: list[RunSource]
    origin: dict[GroupKey, RunSource] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_sources(runs: list[str | Path], registry: Any) -> list[RunSource]:
    """Open each run directory; results.json is rebuilt from the records when it is missing."""
    from ..engine.session import rebuild_results

    out = []
    for run in runs:
        store = RunStore(run)
        manifest = store.read_manifest()
        if store.results_path.exists():
            results = store.read_results()
        else:
            results = rebuild_results(store, registry)
        out.append(RunSource(Path(run), store, manifest, results))
    if not out:
        raise ConfigError("xbench report needs at least one run directory")
    return out


def _row_key(row: dict[str, Any]) -> GroupKey:
    return (row["dataset"], row.get("split"), row["model"], row["explainer"])


def merge_sources(sources: list[RunSource], registry: Any) -> Merged:
    """One result for all runs (see the module docstring)."""
    if len(sources) == 1:
        src = sources[0]
        return Merged(src.results, sources, {_row_key(r): src for r in src.results.get("rows", [])}, [])
    from ..metrics.analysis import split_resolver
    from ..schema import assemble_results

    tagged: dict[GroupKey, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    warnings: list[str] = []
    for i, src in enumerate(sources):
        split_of, warn = split_resolver(src.config, registry)
        warnings += [f"{src.path}: {w}" for w in warn]
        for r in src.store.records():
            r = {**r, "split": split_of(r)}
            tagged[(r["dataset"], r["split"], r["model"], r["explainer"])].setdefault(i, []).append(r)
    origin: dict[GroupKey, RunSource] = {}
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    for key in sorted(tagged, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        runs = tagged[key]
        winner = max(runs, key=lambda i: (sources[i].created, i))
        origin[key] = sources[winner]
        records.extend(runs[winner])
        if len(runs) > 1:
            losers = ", ".join(f"{sources[i].path} ({sources[i].created})" for i in runs if i != winner)
            notes.append(
                f"{_label(key)}: taken from {sources[winner].path} (results created {sources[winner].created}), "
                f"the newest of the runs holding it; replaces {losers}"
            )
    first = sources[0].config
    names: list[str] | None = None
    configured = [s.config.get("metrics") for s in sources]
    if all(c is not None for c in configured):
        names = sorted({m for c in configured for m in (c or [])})
    fixed = {float((s.config.get("grounding") or {}).get("fixed_threshold", 0.5)) for s in sources}
    if len(fixed) > 1:
        warnings.append(f"the runs use different fixed thresholds {sorted(fixed)}; the first run's is used")
    chosen = {id(s): s for s in origin.values()}.values()
    models: dict[str, Any] = {}
    for s in chosen:
        models.update(s.manifest.get("models", {}))
    results = assemble_results(
        records, registry, first, metrics=names, split_of=lambda r: r.get("split"), warnings=warnings,
        source={"runs": [str(s.path) for s in sources],
                "merged_from": {"runs": [{"run": str(s.path), "created": s.created} for s in sources], "replaced": notes}},
        models=models, skipped=[e for s in chosen for e in s.manifest.get("skipped_explainers", [])],
        xbench=sources[-1].results.get("xbench"), versions={str(s.path): s.manifest.get("versions") for s in sources},
    )
    return Merged(dict(results), sources, origin, notes)


def _label(key: GroupKey) -> str:
    dataset, split, model, explainer = key
    return f"{dataset}" + (f" ({split})" if split else "") + f" / {model} / {explainer}"
