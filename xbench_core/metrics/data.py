"""What a metric sees: one finding's labels, scores and grounding statistics as arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..grounding import N_THRESHOLDS, THRESHOLDS


@dataclass(frozen=True)
class Undefined:
    """A metric value that does not exist for this data, with the reason (stored as null)."""

    reason: str


@dataclass
class FindingData:
    """Arrays for one (dataset, model, explainer, finding).

    Classification: `labels` and `scores` over the images whose label is known (and scored).
    Grounding: one row per positive image with a region: cumulative threshold counts
    `hits_all`/`hits_region` [m, 101], `region_px`, `total_px`, `pointing_game`, `ebpg`.
    `image_ids` [n] and `region_ids` [m] name the images of both (empty when unknown); the bootstrap
    uses them to resample an image of several findings as a unit.

    Inside `sharing()`, the metrics of one batch of resample weights share their products (the mean
    Dice curve serves Dice, IoU's best threshold and the threshold modes).
    """

    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    hits_all: np.ndarray = field(default_factory=lambda: np.zeros((0, N_THRESHOLDS), np.int64))
    hits_region: np.ndarray = field(default_factory=lambda: np.zeros((0, N_THRESHOLDS), np.int64))
    region_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    total_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pointing_game: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    ebpg: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    fixed_threshold: float = 0.5
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    region_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    _shared: dict[tuple[str, int], tuple[Any, Any]] | None = field(default=None, repr=False, compare=False)
    # per grounding row, the values a protocol and the extra metrics recorded (`stats["extra"]`):
    # [m] scalars (NaN where a value does not exist) or [m, K] counts (the MAVL sweep)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    protocol: str = "xbench"  # the grounding protocol the values were recorded under

    @property
    def n_regions(self) -> int:
        return int(len(self.region_px))

    @property
    def area_fraction(self) -> np.ndarray:
        return self.region_px / np.maximum(self.total_px, 1)

    @property
    def fixed_index(self) -> int:
        k = int(round(self.fixed_threshold * 100))
        if not 0 <= k < N_THRESHOLDS or abs(THRESHOLDS[k] - self.fixed_threshold) > 1e-6:
            raise ValueError(f"fixed threshold {self.fixed_threshold} is not on the 0.01 grid")
        return k

    @contextlib.contextmanager
    def sharing(self) -> Iterator[None]:
        """Keep what `shared` computes until the block ends (the caller holds the weights alive)."""
        self._shared = {}
        try:
            yield
        finally:
            self._shared = None

    def shared(self, name: str, weights: Any, compute: Callable[[], Any]) -> Any:
        """`compute()`, kept for these weights (by identity) inside `sharing()`."""
        if self._shared is None:
            return compute()
        key = (name, id(weights))
        hit = self._shared.get(key)
        if hit is None or hit[0] is not weights:
            hit = (weights, compute())
            self._shared[key] = hit
        return hit[1]

    def per_row(self, name: str) -> np.ndarray:
        """A grounding statistic per row: `pointing_game`, `ebpg` [m] or the `dice`, `iou` curves [m, 101]."""
        if name == "dice":
            return self.shared("dice_curve", None, self.dice_curve)
        if name == "iou":
            return self.shared("iou_curve", None, self.iou_curve)
        return getattr(self, name)

    def weighted_sum(self, name: str, weights: np.ndarray) -> np.ndarray:
        """`weights @ per_row(name)` for weight rows [B, m]: [B] or [B, 101]."""
        return self.shared(f"sum:{name}", weights, lambda: weights @ self.per_row(name))

    def weighted_mean(self, name: str, weights: np.ndarray | None) -> np.ndarray:
        """The mean of a grounding statistic (see `per_row`) over the rows, per weight row: [B] or
        [B, 101] for weights [B, m] (how often each row was drawn; NaN where none was), and [1] or
        [1, 101] for the data as it is (weights None: the plain mean)."""
        if weights is None:
            return self.shared(f"mean:{name}", None, lambda: self.per_row(name).mean(axis=0)[None])

        def compute() -> np.ndarray:
            total = weights.sum(axis=1)
            safe = np.where(total > 0, total, 1.0)
            mean = self.weighted_sum(name, weights) / (safe[:, None] if name in ("dice", "iou") else safe)
            bad = total <= 0
            if bad.any():
                mean[bad] = np.nan
            return mean

        return self.shared(f"mean:{name}", weights, compute)

    def dice_curve(self) -> np.ndarray:
        """Dice per image and threshold, [m, 101]: 2|B n R| / (|B| + |R|)."""
        denom = self.hits_all + self.region_px[:, None]
        return np.where(denom > 0, 2.0 * self.hits_region / np.maximum(denom, 1), 0.0)

    def iou_curve(self) -> np.ndarray:
        """IoU per image and threshold, [m, 101]: |B n R| / |B u R|."""
        union = self.hits_all + self.region_px[:, None] - self.hits_region
        return np.where(union > 0, self.hits_region / np.maximum(union, 1), 0.0)

    def subset(self, grounding_rows: np.ndarray | None = None, images: np.ndarray | None = None) -> FindingData:
        """The same finding restricted to some grounding rows and/or classification images."""
        g = slice(None) if grounding_rows is None else grounding_rows
        c = slice(None) if images is None else images
        return FindingData(
            labels=self.labels[c],
            scores=self.scores[c],
            hits_all=self.hits_all[g],
            hits_region=self.hits_region[g],
            region_px=self.region_px[g],
            total_px=self.total_px[g],
            pointing_game=self.pointing_game[g],
            ebpg=self.ebpg[g],
            fixed_threshold=self.fixed_threshold,
            image_ids=self.image_ids[c] if len(self.image_ids) else self.image_ids,
            region_ids=self.region_ids[g] if len(self.region_ids) else self.region_ids,
            extra={k: v[g] for k, v in self.extra.items()},
            protocol=self.protocol,
        )

    @staticmethod
    def synthetic(seed: int = 0, n: int = 40, m: int = 12) -> FindingData:
        """Random but consistent data, for metric conformance tests."""
        import torch

        from ..grounding import grounding_stats

        rng = np.random.default_rng(seed)
        labels = (rng.random(n) < 0.4).astype(np.int64)
        labels[:2] = [0, 1]
        scores = np.clip(labels * 0.3 + rng.random(n) * 0.7, 0, 1)
        maps = torch.from_numpy(rng.random((m, 16, 16), dtype=np.float32))
        masks = torch.from_numpy(rng.random((m, 16, 16)) < 0.2)
        masks[:, 0, 0] = True
        s = grounding_stats(maps, masks, normalized=False)
        return FindingData(
            labels=labels,
            scores=scores,
            hits_all=s.hits_all.numpy(),
            hits_region=s.hits_region.numpy(),
            region_px=s.region_pixels.numpy(),
            total_px=s.total_pixels.numpy(),
            pointing_game=s.pointing_game.numpy(),
            ebpg=s.ebpg.numpy(),
        )


def as_json_value(value: Any) -> Any:
    """Numbers to plain floats (NaN never leaves: it becomes null)."""
    if isinstance(value, Undefined) or value is None:
        return None
    v = float(value)
    return None if not np.isfinite(v) else v
