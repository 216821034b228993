"""The run loop: one pass over each dataset's images shared by every model and explainer.

Per dataset: build the models (once per run) and their queries (once per dataset); plan the
samples still to do (resume); decode and preprocess in loader workers (on the CPU only where
decoding is a noticeable share of the loop), each image decoded once, preprocessed once per model,
its regions rasterized once at the eval frame; per batch and model, one forward pass on the device,
each explainer's maps, the grounding statistics on the device; records appended and flushed per
batch. Anything that fails for one sample becomes an error record and the run goes on (`fail_fast`
stops instead).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError, MapError, XBenchError
from ..io.layout import image_fit_problem
from ..plugins import Registry
from ..schema import Record, make_record
from ..store import RunStore
from . import calls
from .config import RunConfig
from .device import resolve_device, reuse_freed_memory
from .phrases import Columns, batch_queries, column_names, sample_phrases
from .plan import DatasetPlan, plan_dataset
from .problems import summarize_problems
from .shapes import maps_problem, scores_problem
from .transfer import pack_masks, unpack_masks

# On the CPU, loader workers start only when decoding is at least this share of the loop (_cpu_batches)
WORKER_SHARE = 0.1


@dataclass
class ModelRun:
    """A model built for this run, with its explainers and per-dataset queries."""

    name: str
    model: Any
    spec: Any
    explainers: list[tuple[str, Any, Any]]  # (name, explainer, spec)
    skipped: list[dict[str, str]] = field(default_factory=list)


Where = tuple[str, Any]  # (dataset name, split) of the records being written


def eval_size(shape: Sequence[int], cap: int | None) -> tuple[int, int]:
    h, w = int(shape[0]), int(shape[1])
    if not cap or max(h, w) <= cap:
        return (h, w)
    f = cap / max(h, w)
    return (max(1, round(h * f)), max(1, round(w * f)))


class Items:
    """The per-sample work of loader workers: decode once, preprocess for every model, rasterize."""

    def __init__(
        self, dataset: Any, indices: list[int], models: list[ModelRun], cap: int | None, cache: Any = None
    ) -> None:
        if cache is not None:  # the dataset's entry point decodes through the cache
            dataset = copy.copy(dataset)
            dataset.image_reader = cache.load
        self.dataset, self.indices, self.models, self.cap = dataset, indices, models, cap

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        import torch

        index = self.indices[position]
        item: dict[str, Any] = {"index": index}
        try:
            sample = self.dataset[index]  # the dataset's one entry point
            item["id"] = sample.id
            item["labels"] = sample.labels
            item["phrases"] = sample_phrases(sample)
            if not np.isfinite(sample.image).all():
                raise XBenchError(f"image of {sample.id} has NaN or infinite pixels")
            if unfit := image_fit_problem(sample):
                raise DataError(f"{sample.meta.get('path', sample.id)}: {unfit}")
        except Exception as exc:  # becomes an error record: the run goes on
            item.setdefault("id", self._id(index))
            item["error"] = f"{type(exc).__name__}: {exc}"
            return item
        size = eval_size(sample.image.shape, self.cap)
        item["eval_size"] = size
        # numpy, not torch: a worker sends them pickled (bit-packed), cheaper than a shared-memory file per mask
        item["masks"] = pack_masks({f: r.rasterize(size) for f, r in sample.regions.items()})
        item["pixels"], item["geometry"], item["model_errors"] = {}, {}, {}
        for m in self.models:
            try:
                pixels, geom = m.model.preprocess(sample.image)
                item["pixels"][m.name] = torch.as_tensor(pixels, dtype=torch.float32)
                item["geometry"][m.name] = geom
            except Exception as exc:
                item["model_errors"][m.name] = f"preprocess failed: {type(exc).__name__}: {exc}"
        return item

    def _id(self, index: int) -> str:
        """The id of a sample that failed to load (from its annotation, when that works)."""
        try:
            return str(self.dataset.annotation(index).id)
        except Exception:
            return f"#index-{index}"


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


class Runner:
    """Runs a validated config into a run directory and returns the aggregated results."""

    def __init__(
        self,
        config: RunConfig,
        registry: Registry,
        store: RunStore,
        *,
        quiet: bool = False,
        rank: int = 0,
        world: int = 1,
        shard_name: str = "0",
        progress_total: Any = None,
    ) -> None:
        self.cfg, self.registry, self.store = config, registry, store
        self.quiet, self.rank, self.world, self.shard = quiet, rank, world, shard_name
        self.device = resolve_device(config.device)
        self.info: dict[str, Any] = {"models": {}, "datasets": {}, "skipped": [], "errors": 0}
        # batch_size: auto starts at AUTO_BATCH on an accelerator (the CPU's memory is not the limit)
        self.loader_batch = 8 if config.auto_batch and self.device.type == "cpu" else config.batch_size
        self.progress_total = progress_total
        self.faithfulness = None
        if config.faithfulness is not None:
            from .faithfulness import FaithfulnessPass

            self.faithfulness = FaithfulnessPass(config.faithfulness, self.loader_batch, config.seed, self.device, config.precision)

    # ---- setup -------------------------------------------------------------------------------
    def build_models(self) -> list[ModelRun]:
        runs = []
        for comp in self.cfg.models:
            spec = self.registry.models[comp.name]
            with warnings.catch_warnings(record=True) as caught:  # shown once the model is built
                try:
                    model = spec.build(**comp.options)
                except XBenchError:
                    raise
                except Exception as exc:  # a bad file behind an option (truncated weights): one line
                    raise CheckpointError(build_failure(comp.name, comp.options, exc)) from exc
            for w in caught:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            if model.module is not None:
                model.module.to(self.device).eval()
            caps = set(spec.capabilities) | set(model.capabilities())
            explainers, skipped = [], []
            for ename in self.cfg.explainers:
                espec = self.registry.explainers[ename]
                missing = set(espec.requires) - caps
                if missing:
                    reason = f"{comp.name} lacks {', '.join(sorted(missing))}"
                    skipped.append({"model": comp.name, "explainer": ename, "reason": reason})
                    continue
                explainers.append((ename, espec.build(**self.cfg.explainer_options.get(ename, {})), espec))
            self.info["models"][comp.name] = {
                "random_weights": bool(getattr(model, "random_weights", False)),
                "map_kind": getattr(model, "map_kind", spec.map_kind),
                "note": spec.note,
                "phrases": "phrases" in model.capabilities(),  # reads Sample.phrases' text
                "options": comp.options,
                **({"batch_size": self.loader_batch} if self.cfg.auto_batch else {}),
            }
            self.info["skipped"].extend(skipped)
            runs.append(ModelRun(comp.name, model, spec, explainers, skipped))
        return runs

    def plan(self, dataset: Any, split: Any, models: list[ModelRun]) -> DatasetPlan:
        """The run's samples of `dataset` and the (model, explainer) pairs that run on them."""
        pairs = [(m.name, e[0]) for m in models for e in m.explainers]
        return plan_dataset(dataset.name, split, dataset.ids(), self.cfg.limit, pairs)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ..metrics.bootstrap import single_threaded_blas

        # numpy's BLAS on one thread (its products here are small, and idle BLAS threads spin
        # against the loader workers). Torch's pool keeps its size: loader workers run one torch
        # thread each (DataLoader's default) and decode mostly outside torch; shrinking the pool by
        # the number of workers halved a forward-bound run on the CPU (issue 22, measured with
        # benchmarks/loader_scaling.py on a decode-bound and a forward-bound run). Freed activations
        # stay in the heap for the next batch (reuse_freed_memory; same benchmark).
        reuse_freed_memory()
        with single_threaded_blas():
            return self._run()

    def _run(self) -> dict[str, Any]:
        models = self.build_models()
        for comp in self.cfg.datasets:
            spec = self.registry.datasets[comp.name]
            dataset = spec.build(**comp.options)
            dataset.name = comp.name
            findings = {m.name: [f for f in dataset.findings if m.model.supports(f)] for m in models}
            unsupported = {m.name: [f for f in dataset.findings if not m.model.supports(f)] for m in models}
            plan = self.plan(dataset, comp.options.get("split"), models)
            todo = plan.todo(self.store.completed(), self.rank, self.world)
            # a dataset listed with two splits is reported (and its problems written) per split
            twice = sum(c.name == comp.name for c in self.cfg.datasets) > 1
            key = f"{comp.name}.{comp.options.get('split')}" if twice else comp.name
            self.info["datasets"][key] = {
                "images": len(plan.order),
                "unsupported": {k: v for k, v in unsupported.items() if v},
                "problems": summarize_problems(self.store.directory, key, getattr(dataset, "problems", []),
                                               write=self.rank == 0),
            }
            if not todo:
                continue
            self._run_dataset(dataset, models, findings, todo, comp, self.info["datasets"][key])
        self.store.close()
        return self.info

    def _items(self, dataset: Any, models: list[ModelRun], todo: list[int], comp: Any) -> Items:
        cache = None
        if self.cfg.image_cache is not None:
            from .image_cache import ImageCache

            spec = self.registry.datasets[comp.name]
            cache = ImageCache.for_dataset(self.cfg.image_cache, dataset, spec, comp.options)
        return Items(dataset, todo, models, self.cfg.eval_size, cache)

    def _loader(self, items: Items, workers: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            items,  # type: ignore[arg-type]  # a map-style dataset (torch is imported lazily here)
            batch_size=self.loader_batch,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers > 0 else None,
        )

    def _batches(self, items: Items, info: dict[str, Any]) -> Any:
        """The batches of `items`, decoded by the configured loader workers; `info` (the dataset's
        entry in the manifest) says where they were decoded. On an accelerator the workers start
        at once, so they decode the first batches while the models encode their queries."""
        workers = self.cfg.workers
        if workers and self.device.type == "cpu":
            return self._cpu_batches(items, workers, info)
        info["loader"] = f"{workers} workers" if workers else "in process"
        return iter(self._loader(items, workers))

    def _cpu_batches(self, items: Items, workers: int, info: dict[str, Any]) -> Any:
        """On the CPU the workers compete with the forward pass for the same cores, and their start
        (a fork whose pages this process then copies as it writes them) costs more than they save
        when decoding is a small part of the loop (issue 22: 0.95x with 1 or 2 workers for CLIP on
        2 cores, where decoding is 1% of the loop). So the first batch is decoded here and timed,
        and the workers start for the rest only when that decoding (with preprocessing and
        rasterizing) was at least WORKER_SHARE of the batch's whole loop (forward, maps, grounding,
        records included); otherwise this process decodes on."""
        n = min(self.loader_batch, len(items))
        start = time.perf_counter()
        first = [items[i] for i in range(n)]
        decode = time.perf_counter() - start
        start = time.perf_counter()
        yield first
        if n == len(items):
            info["loader"] = "in process: one batch"
            return
        share = decode / max(decode + time.perf_counter() - start, 1e-9)
        if share < WORKER_SHARE:
            workers = 0
            info["loader"] = (f"in process: decoding was {share:.0%} of the first batch's loop "
                              f"(loader workers start from {WORKER_SHARE:.0%})")
        else:
            info["loader"] = f"{workers} workers from the second batch (decoding was {share:.0%} of the first's loop)"
        rest = copy.copy(items)
        rest.indices = items.indices[n:]
        yield from self._loader(rest, workers)

    def _run_dataset(
        self,
        dataset: Any,
        models: list[ModelRun],
        findings: dict[str, list[str]],
        todo: list[int],
        comp: Any,
        info: dict[str, Any],
    ) -> None:
        from tqdm import tqdm

        # on an accelerator, loader workers start on the first batches while the models encode their queries
        batches = iter(self._batches(self._items(dataset, models, todo, comp), info))
        queries = {m.name: calls.encode_queries(m.model, findings[m.name]) for m in models}

        where = (dataset.name, comp.options.get("split"))
        bar = tqdm(
            total=len(todo) if self.progress_total is None else self.progress_total(len(todo)),
            desc=f"{dataset.name} [{', '.join(m.name for m in models)}]",
            unit="img",
            disable=self.quiet or self.rank != 0,
            dynamic_ncols=True,
        )
        try:
            for batch in batches:
                batch = unpack_masks(batch)
                for m in models:
                    self._model_batch(where, m, findings[m.name], queries[m.name], batch)
                bar.update(len(batch) * (self.world if self.progress_total is not None else 1))
        finally:
            bar.close()

    def _model_batch(
        self, where: Where, m: ModelRun, findings: list[str], queries: Any, batch: list[dict[str, Any]]
    ) -> None:
        good = [it for it in batch if "error" not in it and m.name not in it["model_errors"]]
        for it in batch:
            if it not in good:
                reason = it.get("error") or it["model_errors"][m.name]
                self._fail(where, m, it["id"], reason)
        if not good:
            return
        if not findings:  # the model supports none of the dataset's findings: mark the samples seen
            for ename, _, _ in m.explainers:
                self._records(where, m, ename, [], good, np.zeros((len(good), 0)), None)
            return
        start = 0
        while start < len(good):
            # with batch_size: auto, the model's size after its out-of-memory halvings (manifest)
            limit = self.info["models"][m.name].get("batch_size", len(good))
            size = min(limit, len(good) - start)
            try:
                self._model_part(where, m, findings, queries, good[start : start + size])
            except _OutOfMemory:
                self._free_memory()
                self.info["models"][m.name]["batch_size"] = size // 2  # and the same images again
                continue
            start += size

    def _model_part(
        self, where: Where, m: ModelRun, findings: list[str], queries: Any, good: list[dict[str, Any]]
    ) -> None:
        """One forward pass, every explainer and the records of `good`; out-of-memory with
        `batch_size: auto` and more than one image raises _OutOfMemory (the caller halves)."""
        import torch

        pixels = torch.stack([it["pixels"][m.name] for it in good])
        pixels = pixels.to(self.device, non_blocking=True)
        try:
            queries, columns = batch_queries(m.model, findings, queries, good)
            names = column_names(findings, columns)
            output = calls.forward(m.model, pixels, queries, self.device, self.cfg.precision)
            if problem := scores_problem(m.name, output.scores, len(good), names):
                raise MapError(problem)
            scores = output.scores.float().cpu().numpy()
        except Exception as exc:
            self._raise_if_retry(exc, len(good))
            if self.cfg.fail_fast:
                raise
            for it in good:
                self._fail(where, m, it["id"], f"forward failed: {_reason(exc, len(good))}")
            return
        fp = self.faithfulness
        if fp is None:
            part = None
        elif columns is None:
            part = self._faithful(lambda: fp.part(m.model, pixels, queries, scores, findings, good, m.name), len(good))
        else:  # its passes read finding columns, not phrases': not run at all
            part = "faithfulness is not computed for phrase queries"
        for ename, explainer, espec in m.explainers:
            try:
                maps = calls.explain(explainer, espec.needs_grad, m.model, pixels, queries, output, self.device, self.cfg.precision)
                if problem := maps_problem(f"model {m.name} with explainer {ename}", maps, len(good), names):
                    raise MapError(problem)
            except Exception as exc:
                self._raise_if_retry(exc, len(good))
                if self.cfg.fail_fast:
                    raise
                for it in good:
                    self._fail(where, m, it["id"], f"explainer {ename} failed: {_reason(exc, len(good))}", explainer=ename)
                continue
            faith = None
            if isinstance(part, str):
                faith = part
            elif part is not None:
                def again(model: Any, x: Any, q: Any, explainer: Any = explainer, espec: Any = espec) -> Any:
                    out = calls.forward(model, x, q, self.device, self.cfg.precision)
                    return calls.explain(explainer, espec.needs_grad, model, x, q, out, self.device, self.cfg.precision)

                faith = self._faithful(lambda maps=maps, again=again: part.measure(maps, again), len(good))
            self._records(where, m, ename, findings, good, scores, maps, faith, columns)

    def _faithful(self, compute: Any, images: int) -> Any:
        """The faithfulness pass's values (None when it is off), or the reason it failed (stored in
        the records' `faithfulness` field: the grounding records are kept)."""
        if self.faithfulness is None:
            return None
        try:
            return compute()
        except Exception as exc:
            self._raise_if_retry(exc, images)
            if self.cfg.fail_fast:
                raise
            return f"faithfulness pass failed: {_reason(exc, images)}"

    def _raise_if_retry(self, exc: BaseException, images: int) -> None:
        if self.cfg.auto_batch and images > 1 and _is_out_of_memory(exc):
            raise _OutOfMemory from exc

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def _records(
        self,
        where: Where,
        m: ModelRun,
        explainer: str,
        findings: list[str],
        items: list[dict[str, Any]],
        scores: np.ndarray,
        maps: Any,
        faith: Any = None,
        columns: Columns | None = None,
    ) -> None:
        import torch

        from ..grounding_batch import evaluate_batch
        from ..protocols import protocol_values

        dataset, split = where
        records: list[Record] = []
        saved: dict[str, Any] = {}
        geometries: dict[str, Any] = {}
        # one finiteness check and one grounding call for the whole batch (one sync on a device)
        finite = (torch.isfinite(maps).flatten(2).all(2).cpu().numpy() if maps is not None and findings
                  else np.zeros((len(items), 0), bool))
        item_rows: list[dict[str, dict[str, Any]]] = []
        grounded: list[tuple[int, int, str]] = []  # (b, j, finding) of the maps to ground
        for b, it in enumerate(items):
            known = (columns[b] if columns is not None  # phrase queries: the sample's own columns
                     else [(j, f) for j, f in enumerate(findings) if it["labels"].get(f) is not None])
            rows: dict[str, dict[str, Any]] = {}
            for j, f in known:
                score = float(scores[b, j])
                rows[f] = {"label": int(it["labels"][f]), "score": score if np.isfinite(score) else None}
                if not np.isfinite(score):
                    rows[f]["error"] = "score is NaN or infinite"
                if self.cfg.save_maps:
                    saved[f"{it['id']}|{f}"] = maps[b, j]
                    geometries[it["id"]] = it["geometry"][m.name]
            for j, f in known:
                if f in it["masks"] and "error" not in rows[f]:
                    if finite[b, j]:
                        grounded.append((b, j, f))
                    else:
                        rows[f]["error"] = str(MapError("map has NaN or infinite values"))
            item_rows.append(rows)
        if grounded:
            bs, js = (torch.tensor(v, device=maps.device) for v in zip(*[(b, j) for b, j, _ in grounded]))
            picked = maps[bs, js]  # the maps to ground, [len(grounded), gh, gw]
            stats = evaluate_batch(picked, [items[b]["geometry"][m.name] for b, _, _ in grounded],
                                   [items[b]["eval_size"] for b, _, _ in grounded],
                                   [items[b]["masks"][f] for b, _, f in grounded])
            # another protocol's values are computed on the host: one copy of the batch's maps
            host = picked.detach().float().cpu().numpy() if self.cfg.protocol.name != "xbench" else None
            for k, ((b, _, f), st) in enumerate(zip(grounded, stats)):
                it, row = items[b], item_rows[b][f]
                if st["region_px"] == 0:
                    row["error"] = "region is empty at the eval frame (raise grounding.eval_size)"
                else:
                    row["stats"] = st
                    if faith is not None:
                        row["faithfulness"] = faith.get((b, f)) if isinstance(faith, dict) else {"error": faith}
                    if host is not None:
                        st["extra"].update(protocol_values(
                            self.cfg.protocol, host[k], it["geometry"][m.name], it["masks"][f], row["score"], f))
        for it, rows in zip(items, item_rows):
            for f, row in rows.items():
                records.append(make_record(dataset, split, it["id"], m.name, explainer, f, len(rows), **row))
                if row.get("error"):
                    self.info["errors"] += 1
                    if self.cfg.fail_fast:
                        self.store.append(dataset, m.name, explainer, self.shard, records)
                        raise XBenchError(f"{dataset}/{it['id']}/{f}: {row['error']} (--fail-fast)")
            if not rows:  # nothing known for this model: record that the sample was seen
                records.append(make_record(dataset, split, it["id"], m.name, explainer, None, 1))
        self.store.append(dataset, m.name, explainer, self.shard, records)
        if saved:
            self.store.save_maps(dataset, split, m.name, explainer, self.shard, saved, geometries)

    def _fail(self, where: Where, m: ModelRun, sample_id: str, reason: str, explainer: str | None = None) -> None:
        """The sample failed as a whole for this model (all its explainers, or one)."""
        dataset, split = where
        self.info["errors"] += 1
        for ename in [explainer] if explainer else [e[0] for e in m.explainers]:
            record = make_record(dataset, split, sample_id, m.name, ename, None, 1, error=reason)
            self.store.append(dataset, m.name, ename, self.shard, [record])
        if self.cfg.fail_fast:
            raise XBenchError(f"{dataset}/{sample_id}: {reason} (--fail-fast)")


class _OutOfMemory(Exception):
    """A batch did not fit on the device (batch_size: auto halves it and tries again)."""


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def build_failure(name: str, options: dict[str, Any], exc: BaseException) -> str:
    """The one-line message of a model that could not be built, naming the files it was given."""
    lines = str(exc).strip().splitlines() or [""]
    first = lines[0]
    blocked = [ln.strip() for ln in lines if ln.strip().startswith("WeightsUnpickler error")]
    if blocked:  # torch refused a pickle that is not plain weights: say so, not its long advice
        first = f"the file holds more than weights and was not loaded ({blocked[0]})"
    first = first if len(first) <= 300 else first[:297] + "..."
    files = [f"{k}={v}" for k, v in options.items() if isinstance(v, str) and ("/" in v or os.sep in v)]
    where = f"; check the files it was given ({', '.join(files)})" if files else ""
    return (f"model {name} could not be built: {type(exc).__name__}: {first}{where}. "
            "Set XBENCH_DEBUG=1 for the traceback")


def _reason(exc: BaseException, images: int) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if _is_out_of_memory(exc):
        hint = "set batch_size: auto (halves batches that do not fit)" if images > 1 else "the device cannot hold one image"
        text += f" ({images} image(s) at once; {hint})"
    return text


def check_identity(store: RunStore, cfg: RunConfig, overwrite: bool) -> None:
    """A run directory is resumed only with the same evaluation identity (one without records, a
    run that failed while setting up, is simply taken)."""
    if not store.manifest_path.exists() or overwrite or not store.shard_files():
        return
    manifest = store.read_manifest()
    if manifest.get("schema") is None:
        raise ConfigError(
            f"{store.directory} was written by an older XBench (records without their split): "
            "`xbench report` reads it, but it cannot be resumed; pass --out NEW_DIR or --overwrite"
        )
    old = manifest.get("identity")
    if old is not None and not _same_evaluation(old, _jsonable(cfg.evaluation_identity())):
        raise ConfigError(
            f"{store.directory} holds a run with a different configuration; "
            "pass --out NEW_DIR for a new run, or --overwrite to replace it"
        )


def _same_evaluation(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Identities agree; explainers are compared only where both runs have them (a run directory
    takes more explainers later)."""
    old_e, new_e = old.get("explainers", {}), new.get("explainers", {})
    rest = lambda identity: {k: v for k, v in identity.items() if k != "explainers"}  # noqa: E731
    return rest(old) == rest(new) and all(old_e[e] == new_e[e] for e in old_e.keys() & new_e.keys())


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


@contextlib.contextmanager
def timed(info: dict[str, Any], key: str) -> Any:
    start = time.time()
    yield
    info[key] = time.time() - start
