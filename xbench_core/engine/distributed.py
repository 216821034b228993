"""Running on one process, under torchrun (one process per device), or as one of N job-array shards.

Rank r (or shard i of N) takes the samples whose position in the dataset's sorted id list is r
modulo the world size; each writes its own record shard; after a barrier rank 0 aggregates. Records
are keyed by content, so a run resumes with any other number of ranks or shards.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..plugins import Registry
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


def launch(cfg: RunConfig, registry: Registry, *, shard: str | None, overwrite: bool, quiet: bool) -> int:
    """Run the config on this process (single, torchrun rank, or job-array shard); print the summary."""
    from ..cli import print_summary
    from .session import execute

    env = torchrun_env()
    if env is not None and shard is not None:
        raise ConfigError("--shard is for independent jobs; under torchrun the ranks split the work")
    if shard is not None:
        i, n = parse_shard(shard)
        store, _ = execute(cfg, registry, overwrite=overwrite, quiet=quiet, rank=i, world=n,
                           shard_name=f"{i}of{n}", aggregate_results=False)
        if not quiet:
            print(f"shard {i}/{n} done: {store.directory}. When every shard is done: xbench merge {store.directory}")
        return 0
    if env is None:
        store, results = execute(cfg, registry, overwrite=overwrite, quiet=quiet)
        if not quiet and results is not None:
            print_summary(results, store)
        return 0
    return _launch_torchrun(cfg, registry, env, overwrite=overwrite, quiet=quiet)


def _launch_torchrun(cfg: RunConfig, registry: Registry, env: tuple[int, int, int], *, overwrite: bool, quiet: bool) -> int:
    import datetime

    import torch
    import torch.distributed as dist

    from ..cli import print_summary
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
        if rank == 0 and not quiet and results is not None:
            print_summary(results, store)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def merge(run: str, registry: Registry) -> int:
    """Aggregate every shard of a run directory; report samples that no shard has done."""
    from ..cli import print_summary
    from ..store import RunStore
    from .config import build_config
    from .session import rebuild_results

    store = RunStore(run)
    manifest = store.read_manifest()
    results = rebuild_results(store, registry)
    cfg = build_config(_config_data(manifest["config"]), registry)
    done = store.completed()
    missing: list[str] = []
    for comp in cfg.datasets:
        dataset = registry.datasets[comp.name].build(**comp.options)
        ids = sorted(dataset.ids())
        if cfg.limit is not None:
            ids = ids[: cfg.limit]
        for m in cfg.models:
            for e in cfg.explainers:
                missing += [f"{comp.name}/{m.name}/{e}/{i}" for i in ids if (comp.name, i, m.name, e) not in done]
    print_summary(results, store)
    if missing:
        print(f"{len(missing)} samples have no records yet (first 20):")
        for line in missing[:20]:
            print(f"  {line}")
        return 1
    return 0


def _config_data(config: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in config.items() if k in ("datasets", "models", "explainers", "metrics", "limit", "grounding", "out")}
    return data
