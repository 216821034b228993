"""The hooks a plugin implements. Each registration hook receives a `register` callable, so that
hooks can grow keyword arguments later without breaking old plugins (the simonw/llm pattern)."""

from __future__ import annotations

from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("xbench")
hookimpl = HookimplMarker("xbench")


@hookspec
def xbench_register_datasets(register: Any) -> None:
    """Register datasets: call `register(DatasetSpec(...))` once per dataset."""


@hookspec
def xbench_register_models(register: Any) -> None:
    """Register models: call `register(ModelSpec(...))` once per model."""


@hookspec
def xbench_register_explainers(register: Any) -> None:
    """Register explainers: call `register(ExplainerSpec(...))` once per explainer."""


@hookspec
def xbench_register_metrics(register: Any) -> None:
    """Register metrics: call `register(MetricSpec(...))` once per metric."""


@hookspec
def xbench_run_started(run: Any) -> None:
    """Observe the start of a run (`run` has `config`, `directory`, `manifest`)."""


@hookspec
def xbench_run_finished(run: Any, results: Any) -> None:
    """Observe the end of a run with its aggregated `results` (the content of results.json)."""
