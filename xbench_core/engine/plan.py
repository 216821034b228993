"""Which samples a run evaluates, shared by the runner (what is left to do on this rank) and
`xbench merge` (what no shard has done yet).

A dataset's samples are taken in sorted id order, the first `limit` of them; rank r of a world of
size W takes positions r, r + W, ...; a sample is done when every (model, explainer) pair that runs
on it (explainers a model cannot serve are skipped, not planned) has a complete record group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Pair = tuple[str, str]  # (model, explainer)


@dataclass(frozen=True)
class DatasetPlan:
    """The samples of one dataset (and split) and the (model, explainer) pairs that run on them."""

    dataset: str
    split: Any
    ids: Sequence[str]
    order: list[int]  # dataset indices in sorted id order, limited: the run's samples
    pairs: list[Pair]

    def mine(self, rank: int = 0, world: int = 1) -> list[int]:
        return [i for pos, i in enumerate(self.order) if pos % world == rank]

    def missing(self, done: set[tuple[Any, ...]], indices: Iterable[int] | None = None) -> list[tuple[int, Pair]]:
        """(index, pair) of every pair and sample among `indices` (default: all) without records,
        pair by pair."""
        chosen = self.order if indices is None else list(indices)
        return [
            (i, pair)
            for pair in self.pairs
            for i in chosen
            if (self.dataset, self.split, self.ids[i], *pair) not in done
        ]

    def todo(self, done: set[tuple[Any, ...]], rank: int = 0, world: int = 1) -> list[int]:
        """This rank's samples that some pair has not done yet, in plan order."""
        mine = self.mine(rank, world)
        left = {i for i, _ in self.missing(done, mine)}
        return [i for i in mine if i in left]


def plan_dataset(dataset: str, split: Any, ids: Sequence[str], limit: int | None, pairs: Iterable[Pair]) -> DatasetPlan:
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    if limit is not None:
        order = order[:limit]
    return DatasetPlan(dataset, split, ids, order, list(pairs))


def planned_pairs(models: Iterable[str], explainers: Iterable[str], skipped: Iterable[dict[str, str]]) -> list[Pair]:
    """Every (model, explainer) of a config but the skipped ones (as recorded in a manifest)."""
    left_out = {(s["model"], s["explainer"]) for s in skipped}
    explainers = list(explainers)
    return [(m, e) for m in models for e in explainers if (m, e) not in left_out]
