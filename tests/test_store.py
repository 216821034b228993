"""The run store: which records count when a group was written more than once or half written."""

from __future__ import annotations

import json
from pathlib import Path

from xbench_core.schema import make_record
from xbench_core.store import RunStore


def _rec(sample: str, finding: str | None, n: int, score: float, split: str | None = "test") -> dict:
    return dict(make_record("d", split, sample, "m", "native", finding, n, label=1, score=score))


def test_latest_complete_attempt_wins_and_partial_lines_are_ignored(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.append("d", "m", "native", "0", [_rec("a", "x", 2, 0.1), _rec("a", "y", 2, 0.2)])
    store.append("d", "m", "native", "0", [_rec("b", "x", 1, 0.3)])
    store.append("d", "m", "native", "0", [_rec("a", "x", 2, 0.9)])  # a redo killed half way
    store.append("d", "m", "native", "1", [_rec("b", "x", 1, 0.4)])  # b redone on another rank
    store.close()
    shard = store.record_dir("d", "m", "native") / "shard-1.jsonl"
    with open(shard, "a") as fh:  # a killed process's half line
        fh.write(json.dumps(_rec("c", "x", 1, 0.5))[:30])
    got = sorted((r["id"], r["finding"], r["score"]) for r in store.records())
    assert got == [("a", "x", 0.1), ("a", "y", 0.2), ("b", "x", 0.4)]
    assert store.completed() == {("d", "test", "a", "m", "native"), ("d", "test", "b", "m", "native")}
    # appending again cuts the half line first
    store.append("d", "m", "native", "1", [_rec("c", "x", 1, 0.6)])
    store.close()
    assert ("c", "x", 0.6) in {(r["id"], r["finding"], r["score"]) for r in store.records()}


def test_records_stream_one_folder_at_a_time(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for model in ("m1", "m2"):
        store.append("d", model, "native", "0", [{**_rec("a", "x", 1, 0.5), "model": model}])
    store.close()
    records = store.records()
    assert iter(records) is records  # a generator, not a list
    assert sorted(r["model"] for r in records) == ["m1", "m2"]


def test_a_group_is_per_split(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.append("d", "m", "native", "0", [_rec("a", "x", 1, 0.1, "val"), _rec("a", "x", 1, 0.2, "test")])
    store.append("d", "m", "native", "0", [_rec("b", "x", 1, 0.3, None)])  # written before records had a split
    store.close()
    assert sorted((r["split"] or "", r["id"], r["score"]) for r in store.records()) == [
        ("", "b", 0.3), ("test", "a", 0.2), ("val", "a", 0.1)]
    assert store.completed() == {("d", "val", "a", "m", "native"), ("d", "test", "a", "m", "native"),
                                 ("d", None, "b", "m", "native")}


def test_maps_are_kept_per_split(tmp_path: Path) -> None:
    """Two splits of one dataset in a run may share a sample id: each keeps its own map."""
    import torch

    from xbench_core.geometry import Geometry

    store = RunStore(tmp_path)
    for split, value in (("val", 1.0), ("test", 2.0), (None, 3.0)):
        store.save_maps("d", split, "m", "native", "0", {"a|x": torch.full((2, 2), value)}, {"a": Geometry.identity((2, 2))})
    for split, value in (("val", 1.0), ("test", 2.0), (None, 3.0)):
        assert float(store.load_map("d", split, "m", "native", "a", "x")[0, 0]) == value
    assert store.load_map("d", "train", "m", "native", "a", "x") is None
