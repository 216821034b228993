"""The run directory: manifest, record shards, map cache and results.

    runs/<name>/
      manifest.json                                        config, versions, device, times
      records/<dataset>/<model>/<explainer>/shard-<k>.jsonl  one record per (image, finding)
      maps/<dataset>/<model>/<explainer>/shard-<k>-<n>.safetensors  input-frame maps, float16
      results.json                                         aggregated metrics

Records are keyed by content (dataset, sample id, model, explainer, finding), so shards written by
any number of processes merge, and a run resumes with another number of ranks. Each record carries
`n`, the number of records of its (sample, model, explainer) group: a group is complete when all
`n` are present; an incomplete group (a run killed mid-batch) is recomputed. A half-written last
line is ignored and cut away before appending.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._writers: dict[tuple[str, str, str, str], TextIO] = {}
        self._map_counter: dict[tuple[str, str, str, str], int] = {}

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
        return json.loads(self.manifest_path.read_text())

    def write_json(self, path: Path, obj: Any) -> None:
        """Write JSON atomically (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
        os.replace(tmp, path)

    # ---- records -----------------------------------------------------------------------------
    def record_dir(self, dataset: str, model: str, explainer: str) -> Path:
        return self.directory / "records" / _safe(dataset) / _safe(model) / _safe(explainer)

    def append(self, dataset: str, model: str, explainer: str, shard: str, records: list[dict]) -> None:
        """Append one batch of records and flush them to disk."""
        key = (dataset, model, explainer, shard)
        fh = self._writers.get(key)
        if fh is None:
            path = self.record_dir(dataset, model, explainer) / f"shard-{shard}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            _cut_partial_line(path)
            fh = self._writers[key] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        attempt = time.time_ns()
        fh.write("".join(json.dumps({**r, "attempt": attempt}, allow_nan=False) + "\n" for r in records))
        fh.flush()

    def close(self) -> None:
        for fh in self._writers.values():
            fh.close()
        self._writers.clear()

    def shard_files(self) -> list[Path]:
        return sorted((self.directory / "records").glob("*/*/*/shard-*.jsonl"))

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every complete record of every shard (a half-written line is skipped)."""
        for path in self.shard_files():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # half-written by a killed process
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    def records(self) -> list[dict[str, Any]]:
        """For each (dataset, sample, model, explainer), the records of its latest complete write.

        Every append stamps its records with an `attempt` number; a group written again (a resumed
        run redoing a half-written batch) keeps its newest attempt whose `n` records are all present.
        """
        groups: dict[tuple[str, str, str, str], dict[int, dict[Any, dict[str, Any]]]] = {}
        for r in self.iter_records():
            g = (r["dataset"], r["id"], r["model"], r["explainer"])
            groups.setdefault(g, {}).setdefault(int(r.get("attempt", 0)), {})[r.get("finding")] = r
        out: list[dict[str, Any]] = []
        for attempts in groups.values():
            for a in sorted(attempts, reverse=True):
                recs = list(attempts[a].values())
                if len(recs) == recs[0]["n"]:
                    out.extend(recs)
                    break
        # a canonical order, so that aggregates do not depend on how shards split the work
        out.sort(key=lambda r: (r["dataset"], r["model"], r["explainer"], r.get("finding") or "", r["id"]))
        return out

    def completed(self) -> set[tuple[str, str, str, str]]:
        """(dataset, sample id, model, explainer) groups whose records are all on disk."""
        return {(r["dataset"], r["id"], r["model"], r["explainer"]) for r in self.records()}

    # ---- maps --------------------------------------------------------------------------------
    def save_maps(self, dataset: str, model: str, explainer: str, shard: str, maps: dict[str, Any]) -> None:
        """Save a batch of input-frame maps ({"<id>|<finding>": [gh, gw] tensor}) as float16."""
        if not maps:
            return
        from safetensors.torch import save_file

        key = (dataset, model, explainer, shard)
        n = self._map_counter.get(key)
        folder = self.directory / "maps" / _safe(dataset) / _safe(model) / _safe(explainer)
        if n is None:
            folder.mkdir(parents=True, exist_ok=True)
            n = len(list(folder.glob(f"shard-{shard}-*.safetensors")))
        self._map_counter[key] = n + 1
        tensors = {k: v.detach().to("cpu").half().contiguous() for k, v in maps.items()}
        tmp = folder / f".shard-{shard}-{n:06d}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / f"shard-{shard}-{n:06d}.safetensors")

    def load_map(self, dataset: str, model: str, explainer: str, sample_id: str, finding: str) -> Any:
        """One cached map as a float32 tensor, or None."""
        from safetensors import safe_open

        folder = self.directory / "maps" / _safe(dataset) / _safe(model) / _safe(explainer)
        key = f"{sample_id}|{finding}"
        for path in sorted(folder.glob("shard-*.safetensors")):
            with safe_open(str(path), framework="pt") as fh:
                if key in fh.keys():
                    return fh.get_tensor(key).float()
        return None


def _cut_partial_line(path: Path) -> None:
    """Drop a half-written last line so that appended records start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = fh.seek(0) or fh.read()
        fh.truncate(data.rfind(b"\n") + 1)
