"""The run store: which records count when a group was written more than once or half written."""

from __future__ import annotations

import json
from pathlib import Path

from xbench_core.store import RunStore


def _rec(sample: str, finding: str | None, n: int, score: float) -> dict:
    return {"dataset": "d", "id": sample, "model": "m", "explainer": "native", "finding": finding,
            "n": n, "label": 1, "score": score, "stats": None, "error": None}


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
    assert store.completed() == {("d", "a", "m", "native"), ("d", "b", "m", "native")}
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
