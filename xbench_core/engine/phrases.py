"""Per-sample phrase queries (phrase grounding): a batch's phrases encoded once, one column each.

A findings-only batch keeps the run's finding queries (encoded once per dataset) and its columns are
the findings. A batch whose samples carry phrases (`Sample.phrases`), on a model that encodes phrases
(`Model.encode_phrases`), is queried with the batch's distinct (finding, text) pairs: each sample's
records are its phrases, each reading its own column. A model without phrase support is queried with
the phrases' findings, as on any dataset (the run manifest says which models read the text).
"""

from __future__ import annotations

from typing import Any

from ..types import Phrase
from . import calls

Columns = list[list[tuple[int, str]]]  # per sample of the batch: (column, finding) pairs


def sample_phrases(sample: Any) -> tuple[Phrase, ...]:
    """A sample's phrases without their regions (what loader workers send to the main process)."""
    return tuple(Phrase(p.text, p.finding) for p in getattr(sample, "phrases", ()))


def batch_queries(
    model: Any, findings: list[str], queries: Any, items: list[dict[str, Any]]
) -> tuple[Any, Columns | None]:
    """(queries, per-sample columns) of one batch; columns None: the finding columns as usual."""
    if "phrases" not in model.capabilities() or not any(it.get("phrases") for it in items):
        return queries, None
    supported = set(findings)
    order: dict[Phrase, int] = {}
    columns: Columns = []
    for it in items:
        mine = []
        for phrase in it.get("phrases", ()):
            if phrase.finding in supported:
                mine.append((order.setdefault(phrase, len(order)), phrase.finding))
        columns.append(mine)
    if not order:  # no phrase of a finding the run scores: nothing to query by text
        return queries, None
    return calls.encode_phrases(model, list(order)), columns


def column_names(findings: list[str], columns: Columns | None) -> list[str]:
    """The finding of each query column of a batch: the output shapes are checked against these."""
    if columns is None:
        return findings
    names: dict[int, str] = {j: f for mine in columns for j, f in mine}
    return [names[j] for j in range(len(names))]
