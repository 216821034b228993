"""Grounding statistics of a whole batch: every (image, finding) pair of a batch and model at once.

`evaluate_batch(maps, geometries, eval_sizes, masks)` gives the rows that `evaluate_maps` gives per
image (`GroundingStats.rows()`), for N pairs in one call: the pairs are grouped by eval size, each
group's maps are brought to the eval frame with one pair of interpolation matrices per distinct
geometry, and the statistics of the group run in one call (on the CPU in chunks of about
`CPU_CHUNK` eval-frame pixels).

- CPU (numpy): every value is computed per map by the same operations as the per-image path, so
  the rows are equal to it bit for bit (tested); what is saved is per-image work (matrices, mask
  stacks, dispatch).
- Accelerator (torch, on the device): one host-to-device copy of the masks per group, the raw-map
  IoUs and the CNR's sums on the device, and one device-to-host transfer of every number of the
  group, i.e. one per batch when its images share an eval size (the per-image path synchronizes about 2F + 7 times per image and copies every normalized
  map to the host for the CNR). The counts are exact integers (carried in float64, exact below
  2^53 pixels); the CNR's float64 sums are ordered differently from numpy's, so it may differ in
  the last bits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .geometry import Geometry
from .grounding import (
    RAW_THRESHOLDS,
    GroundingStats,
    _stats_torch,
    frame_stats,
    normalize,
    to_eval_frame,
)

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
    if not isinstance(maps, np.ndarray):
        maps = maps.detach()
    on_device = not isinstance(maps, np.ndarray) and maps.device.type != "cpu"
    if not on_device and not isinstance(maps, np.ndarray):
        maps = maps.float().numpy()
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
            stats = (_group_torch if on_device else _group_numpy)(maps, [geometries[i] for i in part], size,
                                                                   [masks[i] for i in part], part)
            for i, row in zip(part, stats.rows()):
                rows[i] = row
    return rows  # type: ignore[return-value]


def _frames(maps: Any, geometries: Sequence[Geometry], size: Size, members: list[int], new: Any) -> Any:
    """The members' maps in the eval frame [len(members), *size]: one `to_eval_frame` call per
    distinct geometry (its interpolation matrices built once); `new(shape)` allocates the result
    when there are several."""
    by_geometry: dict[Geometry, list[int]] = defaultdict(list)
    for k, g in enumerate(geometries):
        by_geometry[g].append(k)
    if len(by_geometry) == 1:
        return to_eval_frame(maps[members], geometries[0], size)
    out = new((len(members), *size))
    for g, ks in by_geometry.items():
        out[ks] = to_eval_frame(maps[[members[k] for k in ks]], g, size)
    return out


def _group_numpy(maps: np.ndarray, geometries: Sequence[Geometry], size: Size, masks: Sequence[np.ndarray],
                 members: list[int]) -> GroundingStats:
    frame = _frames(maps, geometries, size, members, lambda shape: np.empty(shape, np.float32))
    return frame_stats(frame, masks)


def _group_torch(maps: Any, geometries: Sequence[Geometry], size: Size, masks: Sequence[np.ndarray],
                 members: list[int]) -> GroundingStats:
    import torch

    frame = _frames(maps, geometries, size, members,
                    lambda shape: torch.empty(shape, dtype=torch.float32, device=maps.device))
    regions = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks])).to(maps.device, non_blocking=True)
    return _stats_on_device(frame, regions)


def _stats_on_device(frame: Any, regions: Any) -> GroundingStats:
    """The statistics and extras of N eval-frame maps [N, He, We] and masks in torch, on their
    device, brought to the host in one transfer."""
    import torch

    n = frame.shape[0]
    flat_raw, region = frame.reshape(n, -1), regions.reshape(n, -1)
    n_region = region.sum(1)
    # raw-threshold IoUs: true positives and predicted pixels per threshold (integers, finished on the host)
    tp, pred = [], []
    for t in RAW_THRESHOLDS:
        above = flat_raw >= float(np.float32(t))
        tp.append((above & region).sum(1))
        pred.append(above.sum(1))
    normed, _ = normalize(frame)
    stats = _stats_torch(normed, regions)
    # CNR: population means and variances inside and outside the region, float64, two passes
    v = normed.reshape(n, -1).double()
    inside = region.double()
    n_in, n_out = inside.sum(1), (1 - inside).sum(1)
    mean_in = (v * inside).sum(1) / n_in.clamp(min=1)
    mean_out = (v * (1 - inside)).sum(1) / n_out.clamp(min=1)
    var_in = (((v - mean_in[:, None]) ** 2) * inside).sum(1) / n_in.clamp(min=1)
    var_out = (((v - mean_out[:, None]) ** 2) * (1 - inside)).sum(1) / n_out.clamp(min=1)
    cnr_num, cnr_spread = (mean_in - mean_out).abs(), torch.sqrt(var_in + var_out)
    parts = {
        "hits_all": stats.hits_all, "hits_region": stats.hits_region, "region_px": stats.region_pixels,
        "total": stats.total_pixels, "pointing": stats.pointing_game, "ebpg": stats.ebpg,
        "constant": stats.constant, "pointing_any": stats.pointing_any, "pointing_first": stats.pointing_first,
        "tp": torch.stack(tp, 1), "pred": torch.stack(pred, 1), "n_region": n_region,
        "n_in": n_in, "n_out": n_out, "cnr_num": cnr_num, "cnr_spread": cnr_spread,
    }
    columns = [c.double().reshape(n, -1) for c in parts.values()]
    host = torch.cat(columns, 1).cpu().numpy()  # the one synchronization
    h: dict[str, np.ndarray] = {}
    at = 0
    for name, c in zip(parts, columns):
        h[name] = host[:, at : at + c.shape[1]] if c.shape[1] > 1 else host[:, at].copy()
        at += c.shape[1]
    ints = {k: h[k].astype(np.int64) for k in ("hits_all", "hits_region", "region_px", "total", "tp", "pred", "n_region")}
    extra = []
    for i in range(n):
        ious = []
        for t in range(len(RAW_THRESHOLDS)):  # as grounding._raw_miou
            tp_i = int(ints["tp"][i, t])
            union = int(ints["pred"][i, t]) + int(ints["n_region"][i]) - tp_i
            ious.append(tp_i / union if union else 0.0)
        cnr = None
        if h["n_in"][i] > 0 and h["n_out"][i] > 0 and h["cnr_spread"][i] > 0:
            cnr = float(h["cnr_num"][i] / h["cnr_spread"][i])
        extra.append({"cnr": cnr, "miou_raw": float(np.mean(ious))})
    t = torch.from_numpy
    return GroundingStats(
        t(ints["hits_all"]), t(ints["hits_region"]), t(ints["region_px"]), t(ints["total"]), t(h["pointing"]),
        t(h["ebpg"]), t(h["constant"] > 0), t(h["pointing_any"]), t(h["pointing_first"]), extra,
    )
