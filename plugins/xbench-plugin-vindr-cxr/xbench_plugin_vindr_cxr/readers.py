"""Merging several radiologists' boxes of one finding into one region.

`union`: every reader's boxes (torchxrayvision's `VinBrain_Dataset` mask does the same).
`majority`: the pixels that at least `k` readers' boxes cover (k = 2 of 3 readers). A pixel is
covered by k readers exactly when it lies in the intersection of one box from each of k distinct
readers, so the vote region is the union of such intersections: a list of boxes again, exact at the
image's own resolution and rasterized by the core like any other box region (no mask to carry).
The intersections are taken on each box's covered pixels (the core's edge convention: columns
floor(x1) .. max(ceil(x2), floor(x1) + 1) - 1), so they equal a per-pixel vote of the rasterized
reader masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

Box = tuple[float, float, float, float]


def pixel_box(box: Box) -> tuple[int, int, int, int]:
    """The half-open integer pixel range [c0, c1) x [r0, r1) a box covers (never empty)."""
    x1, y1, x2, y2 = box
    c0, r0 = math.floor(x1), math.floor(y1)
    return c0, r0, max(math.ceil(x2), c0 + 1), max(math.ceil(y2), r0 + 1)


def _intersect(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> tuple[int, int, int, int] | None:
    c0, r0 = max(a[0], b[0]), max(a[1], b[1])
    c1, r1 = min(a[2], b[2]), min(a[3], b[3])
    return (c0, r0, c1, r1) if c1 > c0 and r1 > r0 else None


def vote_boxes(per_reader: Sequence[Sequence[Box]], k: int) -> list[Box]:
    """Boxes whose union is the set of pixels covered by the boxes of at least `k` readers."""
    if k <= 1:  # one reader suffices: the boxes as they are
        return [tuple(map(float, b)) for boxes in per_reader for b in boxes]  # type: ignore[misc]
    readers = [[pixel_box(b) for b in boxes] for boxes in per_reader if boxes]
    out: set[tuple[int, int, int, int]] = set()
    for group in combinations(readers, k):
        parts = list(group[0])
        for other in group[1:]:
            parts = [p for a in parts for b in other if (p := _intersect(a, b)) is not None]
            if not parts:
                break
        out.update(parts)
    # A box inside another adds nothing: drop it to keep the region small.
    kept = [b for b in out if not any(o != b and _contains(o, b) for o in out)]
    return [tuple(map(float, b)) for b in sorted(kept)]  # type: ignore[misc]


def _contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


def majority_threshold(readers: int) -> int:
    """Readers needed for a majority: more than half (2 of 3; 1 of 1 for a consensus file)."""
    return readers // 2 + 1
