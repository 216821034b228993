"""Best and second-best marks: the report's one marking function, used by every table (the report's
and the paper's layouts; bold and underline in Markdown, LaTeX and the HTML page).

Values are compared as shown (rounded to the digits printed), in each metric's direction
(`MetricSpec.higher_is_better`); every value equal to the best shown value is marked best, every
value equal to the next one second; values whose 95% intervals overlap the leader's share its mark.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, TypeVar

Mark = Literal["best", "second"]
K = TypeVar("K", bound=Hashable)


def rank_marks(
    values: Mapping[K, float | None],
    *,
    higher_is_better: bool = True,
    digits: int | None = 3,
    cis: Mapping[K, Sequence[float] | None] | None = None,
) -> dict[K, Mark]:
    """{key: "best" | "second"} among the values (None left out), compared at `digits` decimals
    (None: as they are); nothing is marked when fewer than two values are present.

    Ties are marked as ties: a value equal to the leader's as shown, or whose 95% interval (`cis`)
    overlaps a leader's, gets the leader's mark (the data do not order them); the next mark goes to
    the best of the rest."""
    shown = {k: (round(v, digits) if digits is not None else v) for k, v in values.items() if v is not None}
    if len(shown) < 2:
        return {}
    cis = cis or {}
    left = dict(shown)
    out: dict[K, Mark] = {}
    for mark in ("best", "second"):
        if not left:
            break
        top = max(left.values()) if higher_is_better else min(left.values())
        leaders = [k for k, v in left.items() if v == top]
        tied = [k for k in left if k in leaders or any(_overlap(cis.get(k), cis.get(j)) for j in leaders)]
        for k in tied:
            out[k] = mark  # type: ignore[assignment]
            del left[k]
    return out


def _overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    """Whether two intervals [lo, hi] overlap (False when either is unknown)."""
    return a is not None and b is not None and len(a) == 2 and len(b) == 2 and a[0] <= b[1] and b[0] <= a[1]


def metric_directions(registry: Any) -> dict[str, bool]:
    """Row field (and metric name) -> higher_is_better, from every registered metric."""
    out: dict[str, bool] = {}
    for name, spec in registry.metrics.items():
        for field in (name, *spec.fields):
            out[field] = bool(spec.higher_is_better)
    return out


def higher_is_better(field: str, directions: Mapping[str, bool]) -> bool:
    """The direction of a row field: its metric's, or that of the metric it derives from (the
    threshold modes `dice_crossval`, `iou_val` follow `dice`, `iou`); higher when unknown."""
    if field in directions:
        return directions[field]
    return directions.get(field.split("_")[0], True)
