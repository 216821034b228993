"""The run directory: manifest, record shards, map cache and results.

    runs/<name>/
      manifest.json                                        config, versions, device, times
      records/<dataset>/<model>/<explainer>/shard-<k>.jsonl  one record per (image, finding)
      maps/<dataset>/<model>/<explainer>/shard-<k>-<n>.safetensors  input-frame maps, float16,
                                                           with each image's Geometry (metadata)
      results.json                                         aggregated metrics

      shards/<k>.json                                      what job-array shard k built (models, skipped
                                                           explainers), read by `xbench merge`

Records are keyed by content (dataset, split, sample id, model, explainer, finding; see schema.py),
so shards written by any number of processes merge, and a run resumes with another number of ranks.
Each record carries `n`, the number of records of its group: a group is complete when all
`n` are present; an incomplete group (a run killed mid-batch) is recomputed. A half-written last
line is ignored and cut away before appending.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError
from .io.output import publish, writing
from .schema import GroupKey, record_group


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._writers: dict[tuple[str, str, str, str], TextIO] = {}
        self._map_counter: dict[tuple[str, str | None, str, str, str], int] = {}

    # ---- manifest and results ----------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    @property
    def results_path(self) -> Path:
        return self.directory / "results.json"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            raise ConfigError(f"{self.directory} is not an XBench run directory (no manifest.json)")
        return _read_json(self.manifest_path, "it is written by `xbench run`; rerun into a new --out")

    def read_results(self) -> dict[str, Any]:
        return _read_json(self.results_path, "delete it: `xbench report` rebuilds it from the records")

    def write_json(self, path: Path, obj: Any) -> None:
        """Write JSON atomically (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
        with writing(path, temporary=tmp):
            tmp.write_text(text)
            os.replace(tmp, path)

    def write_shard_info(self, shard: str, info: Mapping[str, Any]) -> None:
        """What one job-array shard built, for `xbench merge` (shards do not write the manifest)."""
        self.write_json(self.directory / "shards" / f"{_safe(shard)}.json", info)

    def shard_infos(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.directory / "shards").glob("*.json"))]

    # ---- records -----------------------------------------------------------------------------
    def record_dir(self, dataset: str, model: str, explainer: str) -> Path:
        return self.directory / "records" / _safe(dataset) / _safe(model) / _safe(explainer)

    def append(self, dataset: str, model: str, explainer: str, shard: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one batch of records and flush them to disk."""
        key = (dataset, model, explainer, shard)
        fh = self._writers.get(key)
        if fh is None:
            path = self.record_dir(dataset, model, explainer) / f"shard-{shard}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            _cut_partial_line(path)
            fh = self._writers[key] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        attempt = time.time_ns()
        text = "".join(json.dumps({**r, "attempt": attempt}, allow_nan=False) + "\n" for r in records)
        with writing(fh.name):  # a half-written line is cut away when the run resumes
            fh.write(text)
            fh.flush()

    def close(self) -> None:
        for fh in self._writers.values():
            fh.close()
        self._writers.clear()

    def shard_files(self) -> list[Path]:
        return sorted((self.directory / "records").glob("*/*/*/shard-*.jsonl"))

    def iter_records(self, folder: Path | None = None) -> Iterator[dict[str, Any]]:
        """Every complete line of every shard (of one record folder), as written; a half-written
        line is skipped."""
        paths = self.shard_files() if folder is None else sorted(folder.glob("shard-*.jsonl"))
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # half-written by a killed process
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    def records(self) -> Iterator[dict[str, Any]]:
        """For each record group (schema.record_group), the records of its latest complete write.

        Every append stamps its records with an `attempt` number; a group written again (a resumed
        run redoing a half-written batch) keeps its newest attempt whose `n` records are all present.
        Streams: each record folder (dataset, model, explainer) is read twice, once to choose the
        attempts and once to yield their records, so memory never holds a folder's records. The
        order is the files' order: consumers that need one sort (aggregation sorts by sample id).
        """
        for folder in self._record_folders():
            chosen = _complete_attempts(self.iter_records(folder))
            for r in self.iter_records(folder):
                if chosen.get(record_group(r)) == int(r.get("attempt", 0)):
                    yield r

    def completed(self) -> set[GroupKey]:
        """Record groups (dataset, split, sample id, model, explainer) whose records are all on disk."""
        done: set[GroupKey] = set()
        for folder in self._record_folders():
            done.update(_complete_attempts(self.iter_records(folder)))
        return done

    def _record_folders(self) -> list[Path]:
        return sorted({p.parent for p in self.shard_files()})

    # ---- maps --------------------------------------------------------------------------------
    def _map_folder(self, dataset: str, split: str | None, model: str, explainer: str) -> Path:
        """maps/<dataset>/split-<split>/<model>/<explainer>: two splits of one dataset in a run may
        share sample ids, so the split is part of a map's place."""
        where = "split-none" if split is None else f"split-{_safe(str(split))}"
        return self.directory / "maps" / _safe(dataset) / where / _safe(model) / _safe(explainer)

    def save_maps(
        self, dataset: str, split: str | None, model: str, explainer: str, shard: str, maps: dict[str, Any],
        geometries: dict[str, Any] | None = None,
    ) -> None:
        """Save a batch of input-frame maps ({"<id>|<finding>": [gh, gw] tensor}) as float16, with
        the Geometry of each image ({"<id>": Geometry}) in the file's metadata, so that a report
        maps them back to the image without the model."""
        if not maps:
            return
        from safetensors.torch import save_file

        key = (dataset, split, model, explainer, shard)
        n = self._map_counter.get(key)
        folder = self._map_folder(dataset, split, model, explainer)
        if n is None:
            folder.mkdir(parents=True, exist_ok=True)
            n = len(list(folder.glob(f"shard-{shard}-*.safetensors")))
        self._map_counter[key] = n + 1
        tensors = {k: v.detach().to("cpu").half().contiguous() for k, v in maps.items()}
        tmp = folder / f".shard-{shard}-{n:06d}.tmp"
        target = folder / f"shard-{shard}-{n:06d}.safetensors"
        meta = {"geometries": json.dumps({k: g.as_dict() for k, g in (geometries or {}).items()})}
        with writing(target, temporary=tmp):
            save_file(tensors, str(tmp), metadata=meta)
            publish(tmp, target)

    def load_map(self, dataset: str, split: str | None, model: str, explainer: str, sample_id: str, finding: str) -> Any:
        """One cached map as a float32 tensor, or None."""
        key = f"{sample_id}|{finding}"
        return self.load_maps(dataset, split, model, explainer, {key})[0].get(key)

    def load_maps(
        self, dataset: str, split: str | None, model: str, explainer: str, keys: set[str], *, numpy: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Cached maps {"<id>|<finding>": float32 tensor} of one (dataset, model, explainer) and the
        Geometry of their images {"<id>": Geometry} (absent for maps saved without one), reading
        each map file once (the first file holding a key wins). `numpy`: float32 arrays instead,
        without importing torch (the report's gallery)."""
        import numpy as np
        from safetensors import safe_open

        from .geometry import Geometry

        folder = self._map_folder(dataset, split, model, explainer)
        maps: dict[str, Any] = {}
        geometries: dict[str, Any] = {}
        for path in sorted(folder.glob("shard-*.safetensors")):
            wanted = keys - set(maps)
            if not wanted:
                break
            with safe_open(str(path), framework="np" if numpy else "pt") as fh:
                found = wanted & set(fh.keys())
                if not found:
                    continue
                stored = json.loads((fh.metadata() or {}).get("geometries") or "{}")
                for k in found:
                    value = fh.get_tensor(k)
                    maps[k] = value.astype(np.float32) if numpy else value.float()
                    sample_id = k.rpartition("|")[0]
                    if sample_id in stored and sample_id not in geometries:
                        geometries[sample_id] = Geometry.from_dict(stored[sample_id])
        return maps, geometries


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object; {fix}")
    return data


def _cut_partial_line(path: Path) -> None:
    """Drop a half-written last line so that appended records start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def _complete_attempts(records: Iterator[dict[str, Any]]) -> dict[GroupKey, int]:
    """Per record group: the newest attempt whose `n` records are all there."""
    seen: dict[GroupKey, dict[int, tuple[int, set[Any]]]] = {}
    for r in records:
        attempts = seen.setdefault(record_group(r), {})
        n, findings = attempts.setdefault(int(r.get("attempt", 0)), (int(r["n"]), set()))
        findings.add(r.get("finding"))
    out = {}
    for g, attempts in seen.items():
        for a in sorted(attempts, reverse=True):
            n, findings = attempts[a]
            if len(findings) == n:
                out[g] = a
                break
    return out
