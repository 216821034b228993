"""The label problems of a run's datasets, surfaced: the rows a dataset skipped, clipped or
dropped while parsing (what `xbench inspect` lists) are written in full to
`<run>/problems/<dataset>.jsonl`, and summarized (count per kind, the first few, where the full
list is) in the manifest, `results.json`, the run's summary and the report."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SHOWN = 5  # problems quoted in the summary; the rest are in the file


def problem_kind(message: str) -> str:
    """What happened to the row, from the message's last clause (`...; row skipped` -> `row
    skipped`); `other` when the message does not say."""
    tail = message.rsplit("; ", 1)[-1].strip() if "; " in message else ""
    return tail if tail and len(tail) <= 40 else "other"


def summarize_problems(run: Path, dataset: str, problems: Sequence[Any], *, write: bool) -> dict[str, Any]:
    """The summary of one dataset's problems; with `write`, the full list goes to the run folder."""
    if not problems:
        return {"count": 0}
    relative = f"problems/{''.join(c if c.isalnum() or c in '-_.' else '_' for c in dataset)}.jsonl"
    if write:
        path = run / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(p.as_dict()) + "\n" for p in problems))
    kinds = Counter(problem_kind(p.message) for p in problems)
    return {
        "count": len(problems),
        "by_kind": dict(kinds.most_common()),
        "first": [str(p) for p in problems[:SHOWN]],
        "file": relative,
    }


def problem_lines(problems: dict[str, dict[str, Any]], run: str | Path) -> list[str]:
    """The run summary's lines about label problems (none when there are none)."""
    lines = []
    for dataset, p in problems.items():
        if not p.get("count"):
            continue
        kinds = ", ".join(f"{n} {k}" for k, n in p["by_kind"].items())
        lines.append(f"{p['count']} label problems in {dataset} ({kinds}); all in {Path(run) / p['file']}:")
        lines += [f"  {text}" for text in p["first"]]
        if p["count"] > len(p["first"]):
            lines.append(f"  ... {p['count'] - len(p['first'])} more")
    return lines
