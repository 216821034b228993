"""Grounding statistics of a whole batch: every (image, finding) pair of a batch and model at once.

`evaluate_batch(maps, geometries, eval_sizes, masks)` gives the rows that `evaluate_maps` gives per
image (`GroundingStats.rows()`), for N pairs in one call: the pairs are grouped by eval size, each
group's maps are brought to the eval frame with one pair of interpolation matrices per distinct
geometry, and the statistics of the group run in one call (on the CPU in chunks of about
`CPU_CHUNK` eval-frame pixels).

- CPU (numpy): every value is computed per map by the same operations as the per-image path, so
  the rows are equal to it bit for bit (tested); what is saved is per-image work (matrices, mask
  stacks, dispatch).
- Accelerator (torch, on the device): `grounding.frame_stats` per group, as per image, so one
  host-to-device copy of the masks and one device-to-host transfer of every number per group,
  i.e. one per batch when its images share an eval size. The counts are exact integers (carried
  in float64, exact below 2^53 pixels); the CNR's float64 sums are ordered differently from
  numpy's, so it may differ in the last bits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .geometry import Geometry
from .grounding import frame_stats, numpy_on_cpu, to_eval_frame

Size = tuple[int, int]
CPU_CHUNK = 1 << 21  # eval-frame pixels per numpy call (8 MiB of float32 frames; 4x that measured slower)


def evaluate_batch(
    maps: Any, geometries: Sequence[Geometry], eval_sizes: Sequence[Size], masks: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """Rows (as `GroundingStats.rows()`) of N pairs: `maps` [N, gh, gw] (a tensor or an array) in
    the model-input frame, and per pair its image's Geometry, eval size and region mask (bool
    [He, We] at that eval size). On the CPU in numpy, on an accelerator in torch."""
    n = len(masks)
    if not (len(maps) == len(geometries) == len(eval_sizes) == n):
        raise ValueError(f"evaluate_batch: {len(maps)} maps, {len(geometries)} geometries, "
                         f"{len(eval_sizes)} eval sizes and {n} masks")
    maps = numpy_on_cpu(maps)
    on_device = not isinstance(maps, np.ndarray)
    groups: dict[Size, list[int]] = defaultdict(list)
    for i, size in enumerate(eval_sizes):
        groups[(int(size[0]), int(size[1]))].append(i)
    rows: list[dict[str, Any] | None] = [None] * n
    for size, members in groups.items():
        # on the CPU, chunks of about CPU_CHUNK pixels: the work is per map there, and a whole
        # batch's frames (128 MiB for 32 maps at 1024^2) only miss the caches
        step = len(members) if on_device else max(1, CPU_CHUNK // (size[0] * size[1]))
        for start in range(0, len(members), step):
            part = members[start : start + step]
            stats = frame_stats(_frames(maps, [geometries[i] for i in part], size, part), [masks[i] for i in part])
            for i, row in zip(part, stats.rows()):
                rows[i] = row
    return rows  # type: ignore[return-value]


def _frames(maps: Any, geometries: Sequence[Geometry], size: Size, members: list[int]) -> Any:
    """The members' maps in the eval frame [len(members), *size] (float32, numpy or on the maps'
    device): one `to_eval_frame` call per distinct geometry (its interpolation matrices built once)."""
    by_geometry: dict[Geometry, list[int]] = defaultdict(list)
    for k, g in enumerate(geometries):
        by_geometry[g].append(k)
    if len(by_geometry) == 1:
        return to_eval_frame(maps[members], geometries[0], size)
    out: Any
    if isinstance(maps, np.ndarray):
        out = np.empty((len(members), *size), np.float32)
    else:
        import torch

        out = torch.empty((len(members), *size), dtype=torch.float32, device=maps.device)
    for g, ks in by_geometry.items():
        out[ks] = to_eval_frame(maps[[members[k] for k in ks]], g, size)
    return out
