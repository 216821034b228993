"""Running on one process, under torchrun (one process per device), or as one of N job-array shards.

Rank r (or shard i of N) takes the samples whose position in the dataset's sorted id list is r
modulo the world size; each writes its own record shard; after a barrier rank 0 aggregates. Records
are keyed by content, so a run resumes with any other number of ranks or shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..plugins import Registry
from ..store import RunStore
from .config import RunConfig


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun (or Slurm through torchrun)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects i/N with 0 <= i < N (for example 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < N")
    return i, n


@dataclass
class RunOutcome:
    """What a run did, for the caller to report: its store, and the results on the aggregating
    process (None on a job-array shard and on torchrun ranks other than 0)."""

    store: RunStore
    results: dict[str, Any] | None
    shard: tuple[int, int] | None = None  # (i, N) of a job-array shard


@dataclass
class MergeOutcome:
    """A merge of a run's shards: the results, and "dataset/model/explainer/id" of every planned
    sample that no shard has done yet."""

    store: RunStore
    results: dict[str, Any]
    missing: list[str] = field(default_factory=list)


def launch(cfg: RunConfig, registry: Registry, *, shard: str | None, overwrite: bool, quiet: bool) -> RunOutcome:
    """Run the config on this process (single, torchrun rank, or job-array shard)."""
    from .session import execute

    env = torchrun_env()
    if env is not None and shard is not None:
        raise ConfigError("--shard is for independent jobs; under torchrun the ranks split the work")
    if shard is not None:
        i, n = parse_shard(shard)
        store, _ = execute(cfg, registry, overwrite=overwrite, quiet=quiet, rank=i, world=n,
                           shard_name=f"{i}of{n}", aggregate_results=False)
        return RunOutcome(store, None, (i, n))
    if env is None:
        store, results = execute(cfg, registry, overwrite=overwrite, quiet=quiet)
        return RunOutcome(store, results)
    return _launch_torchrun(cfg, registry, env, overwrite=overwrite, quiet=quiet)


def _launch_torchrun(
    cfg: RunConfig, registry: Registry, env: tuple[int, int, int], *, overwrite: bool, quiet: bool
) -> RunOutcome:
    import datetime

    import torch
    import torch.distributed as dist

    from .session import execute

    rank, world, local = env
    use_cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        cfg.device = f"cuda:{local}"
    elif cfg.device == "auto":
        cfg.device = "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    try:
        store, results = execute(
            cfg, registry, overwrite=overwrite, quiet=quiet, rank=rank, world=world,
            aggregate_results=rank == 0, barrier=dist.barrier,
            progress_total=lambda n_local: n_local * world,
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return RunOutcome(store, results)


def merge(run: str, registry: Registry) -> MergeOutcome:
    """Aggregate every shard of a run directory; list the planned samples that no shard has done."""
    from .config import build_config
    from .plan import plan_dataset, planned_pairs
    from .session import rebuild_results

    store = RunStore(run)
    manifest = _with_shard_infos(store)
    results = rebuild_results(store, registry)
    cfg = build_config(_config_data(manifest["config"]), registry)
    pairs = planned_pairs([m.name for m in cfg.models], cfg.explainers, manifest.get("skipped_explainers", []))
    done = store.completed()
    missing: list[str] = []
    for comp in cfg.datasets:
        dataset = registry.datasets[comp.name].build(**comp.options)
        plan = plan_dataset(comp.name, comp.options.get("split"), dataset.ids(), cfg.limit, pairs)
        missing += [f"{comp.name}/{m}/{e}/{plan.ids[i]}" for i, (m, e) in plan.missing(done)]
    return MergeOutcome(store, results, missing)


def _with_shard_infos(store: RunStore) -> dict[str, Any]:
    """The manifest, completed with what the job-array shards built (models, skipped explainers)."""
    manifest = store.read_manifest()
    infos = store.shard_infos()
    if not infos:
        return manifest
    for key in ("models", "datasets"):
        manifest[key] = {k: v for info in infos for k, v in info.get(key, {}).items()} | manifest.get(key, {})
    skipped = manifest.get("skipped_explainers", []) + [s for info in infos for s in info.get("skipped_explainers", [])]
    manifest["skipped_explainers"] = list({(s["model"], s["explainer"]): s for s in skipped}.values())
    manifest.setdefault("finished", max(info.get("finished", "") for info in infos))
    store.write_json(store.manifest_path, manifest)
    return manifest


def _config_data(config: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in config.items() if k in ("datasets", "models", "explainers", "metrics", "limit", "grounding", "out")}
    return data
