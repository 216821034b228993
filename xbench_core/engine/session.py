"""A whole run: the run directory, manifest, resume check, the runner, aggregation and summary."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..plugins import CORE_DISTRIBUTION, Registry, libraries
from ..schema import SCHEMA_VERSION, assemble_results
from ..store import RunStore
from .config import RunConfig, default_out
from .runner import Runner, _jsonable, check_identity


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_hash() -> str | None:
    """The commit of the XBench source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions(registry: Registry) -> dict[str, Any]:
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "plugins": {d.name: d.version for d in registry.distributions},
        "libraries": libraries(registry),
    }


def execute(cfg: RunConfig, registry: Registry, **options: Any) -> tuple[RunStore, dict[str, Any] | None]:
    """Run `cfg` holding its run directory's lock (see engine/lock.py); options as `_execute`."""
    from .lock import run_lock

    sharded = options.get("world", 1) > 1 or options.get("shard_name") is not None
    shard = options.get("shard_name") or str(options.get("rank", 0))
    with run_lock(Path(cfg.out or default_out(cfg)), shard if sharded else None):
        return _execute(cfg, registry, **options)


def _execute(
    cfg: RunConfig,
    registry: Registry,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    rank: int = 0,
    world: int = 1,
    shard_name: str | None = None,
    aggregate_results: bool = True,
    barrier: Any = None,
    progress_total: Any = None,
) -> tuple[RunStore, dict[str, Any] | None]:
    """Run `cfg`; returns the store and (on the aggregating process) the results."""
    out = Path(cfg.out or default_out(cfg))
    cfg.out = str(out)
    store = RunStore(out)
    if rank == 0:
        check_identity(store, cfg, overwrite)
        if overwrite and out.exists():
            for child in out.iterdir():  # the lock files stay: this run holds them
                if not child.name.startswith(".lock"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {out} ({exc.strerror}); pass --out DIR where you can write") from exc
    if barrier is not None:
        barrier()
    installed = versions(registry)  # once: reading the distributions' metadata takes a while
    manifest: dict[str, Any] = {
        "xbench": installed["plugins"].get(CORE_DISTRIBUTION),
        "schema": SCHEMA_VERSION,
        "config": _jsonable(cfg.as_dict()),
        "identity": _jsonable(cfg.evaluation_identity()),
        "versions": installed,
        "git": git_hash(),
        "seed": cfg.seed,
        "command": sys.argv,
        "started": _now(),
        "world_size": world,
    }
    runner = Runner(
        cfg, registry, store, quiet=quiet, rank=rank, world=world,
        shard_name=shard_name if shard_name is not None else str(rank), progress_total=progress_total,
    )
    manifest["device"] = str(runner.device)
    if rank == 0:
        previous = store.read_manifest() if store.manifest_path.exists() else {}
        manifest["history"] = previous.get("history", []) + [{"started": manifest["started"], "world_size": world}]
        store.write_json(store.manifest_path, manifest)
        _hook(registry, "xbench_run_started", run=_RunView(cfg, store, manifest))
    info = runner.run()
    if barrier is not None:
        barrier()
    if not aggregate_results:
        if barrier is None:  # a job-array shard: what it built, for `xbench merge`
            store.write_shard_info(shard_name or str(rank), _jsonable(
                {"models": info["models"], "datasets": info["datasets"], "skipped_explainers": info["skipped"],
                 "finished": _now()}))
        return store, None
    manifest.update(
        {
            "finished": _now(),
            "models": info["models"],
            "datasets": info["datasets"],
            "skipped_explainers": info["skipped"],
        }
    )
    store.write_json(store.manifest_path, _jsonable({**store.read_manifest(), **manifest}))
    results = rebuild_results(store, registry)
    _hook(registry, "xbench_run_finished", run=_RunView(cfg, store, manifest), results=results)
    return store, results


def rebuild_results(store: RunStore, registry: Registry, *, metrics: list[str] | None = None) -> dict[str, Any]:
    """Aggregate the records of a run directory into results.json (written) and return it."""
    from ..metrics.analysis import split_resolver

    manifest = store.read_manifest()
    cfg = manifest.get("config", {})
    split_of, warnings = split_resolver(cfg, registry)
    results = assemble_results(
        store.records(), registry, cfg, source={"run": str(store.directory)}, models=manifest.get("models", {}),
        skipped=manifest.get("skipped_explainers", []), xbench=manifest.get("xbench"),
        versions=manifest.get("versions"), metrics=metrics if metrics is not None else cfg.get("metrics"),
        split_of=split_of, warnings=warnings, problems=dataset_problems(manifest),
    )
    store.write_json(store.results_path, results)
    return dict(results)


def dataset_problems(manifest: dict[str, Any]) -> dict[str, Any]:
    """The label-problem summaries of a run's datasets that have problems (engine/problems.py)."""
    return {name: d["problems"] for name, d in manifest.get("datasets", {}).items()
            if isinstance(d.get("problems"), dict) and d["problems"].get("count")}


class _RunView:
    """What observers of `xbench_run_started/finished` see."""

    def __init__(self, config: RunConfig, store: RunStore, manifest: dict[str, Any]) -> None:
        self.config, self.directory, self.manifest = config, store.directory, manifest


def _hook(registry: Registry, name: str, **kwargs: Any) -> None:
    # Observers are optional plugins: one that raises must not lose a finished run.
    for call in registry.observers.get(name, []):
        try:
            call(**kwargs)
        except Exception as exc:  # pragma: no cover - reported, never fatal
            logging.getLogger("xbench").warning("warning: observer %s failed: %s", name, exc)
