"""Per-(image, finding) grounding statistics, computed in one pass on the device.

For a map in the model-input frame and a ground-truth region:
1. `to_eval_frame` maps the map through the inverse Geometry to the eval frame (bilinear; pixels the
   input never covered take the map's minimum).
2. `normalize` rescales each map min-max to [0, 1]; a constant map becomes all zeros and is flagged.
3. `grounding_stats` returns, for the thresholds tau_k = float32(k / 100), k = 0..100, the number of
   all pixels and of region pixels with value >= tau_k (two cumulative histograms), plus the region
   size, the area fraction, the Pointing Game and the energy-based pointing game.

Exactness: a pixel's bin is the largest k with value >= tau_k, decided by comparison with the same
float32 thresholds that a naive `map >= tau_k` loop uses (never by `floor(v * 100)` alone, which
disagrees at values next to a threshold), so the counts equal the naive loop's exactly.

Pointing Game: the share of the maximal pixels that lie in the region (1 or 0 without ties). EBPG:
the share of the map's mass in the region. A constant map is read as uniform: both equal the
region's area fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Geometry

N_THRESHOLDS = 101
THRESHOLDS = (np.arange(N_THRESHOLDS, dtype=np.float64) / 100).astype(np.float32)


@dataclass
class GroundingStats:
    """Statistics of N (map, region) pairs, as tensors on the device."""

    hits_all: Any  # [N, 101] int64: pixels with value >= tau_k
    hits_region: Any  # [N, 101] int64: region pixels with value >= tau_k
    region_pixels: Any  # [N] int64
    total_pixels: Any  # [N] int64
    pointing_game: Any  # [N] float64
    ebpg: Any  # [N] float64
    constant: Any  # [N] bool

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per pair, for the record store."""
        cols = {
            k: getattr(self, k).detach().cpu().numpy()
            for k in (
                "hits_all",
                "hits_region",
                "region_pixels",
                "total_pixels",
                "pointing_game",
                "ebpg",
                "constant",
            )
        }
        out = []
        for i in range(len(cols["region_pixels"])):
            region, total = int(cols["region_pixels"][i]), int(cols["total_pixels"][i])
            out.append(
                {
                    "region_px": region,
                    "total_px": total,
                    "area_fraction": region / total,
                    "pointing_game": float(cols["pointing_game"][i]),
                    "ebpg": float(cols["ebpg"][i]),
                    "constant_map": bool(cols["constant"][i]),
                    "hits_region": cols["hits_region"][i].tolist(),
                    "hits_all": cols["hits_all"][i].tolist(),
                }
            )
        return out


def to_eval_frame(maps: Any, geometry: Geometry, eval_size: tuple[int, int]) -> Any:
    """Map [F, gh, gw] input-frame maps to [F, He, We] in the eval frame (bilinear)."""
    import torch
    import torch.nn.functional as F

    maps = maps.float()
    gy, gx = geometry.sampling_grid(eval_size)
    dev = maps.device
    ty = torch.as_tensor(gy, dtype=torch.float32, device=dev)
    tx = torch.as_tensor(gx, dtype=torch.float32, device=dev)
    he, we = eval_size
    grid = torch.stack(
        [tx.view(1, we).expand(he, we), ty.view(he, 1).expand(he, we)], dim=-1
    ).unsqueeze(0)
    out = F.grid_sample(
        maps.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    outside_rows = (ty.abs() > 1).view(he, 1)
    outside_cols = (tx.abs() > 1).view(1, we)
    outside = outside_rows | outside_cols
    if bool(outside.any()):
        low = maps.flatten(1).amin(dim=1).view(-1, 1, 1)
        out = torch.where(outside.unsqueeze(0), low.expand_as(out), out)
    return out


def normalize(maps: Any) -> tuple[Any, Any]:
    """Min-max normalize each of N maps to [0, 1]; returns (maps, constant flags)."""
    import torch

    flat = maps.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    span = hi - lo
    constant = span.squeeze(1) <= 0
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return out.view_as(maps).clamp_(0.0, 1.0), constant


def threshold_bins(values: Any) -> Any:
    """For each value in [0, 1], the largest k with value >= THRESHOLDS[k] (int64, same shape)."""
    import torch

    thr = torch.as_tensor(THRESHOLDS, device=values.device)
    k = (values * 100).to(torch.int64).clamp_(0, N_THRESHOLDS - 1)
    # floor(v * 100) can be one off next to a threshold: correct it by exact comparison
    k = k - (values < thr[k]).to(torch.int64)
    up = (k + 1).clamp_(max=N_THRESHOLDS - 1)
    k = k + ((k < N_THRESHOLDS - 1) & (values >= thr[up])).to(torch.int64)
    return k.clamp_(min=0)


def grounding_stats(maps: Any, masks: Any, *, normalized: bool = True) -> GroundingStats:
    """Statistics of N normalized maps [N, H, W] against boolean region masks [N, H, W]."""
    import torch

    if not normalized:
        maps, constant = normalize(maps)
    else:
        flat = maps.flatten(1)
        constant = flat.amax(dim=1) <= flat.amin(dim=1)
    n = maps.shape[0]
    values = maps.reshape(n, -1).float()
    region = masks.reshape(n, -1).bool()
    bins = threshold_bins(values)
    offsets = torch.arange(n, device=values.device).view(n, 1) * N_THRESHOLDS
    flat_bins = (bins + offsets).view(-1)
    counts_all = torch.bincount(flat_bins, minlength=n * N_THRESHOLDS).view(n, N_THRESHOLDS)
    counts_region = torch.bincount(
        flat_bins[region.view(-1)], minlength=n * N_THRESHOLDS
    ).view(n, N_THRESHOLDS)
    # counts >= tau_k: reverse cumulative sums over the bins
    hits_all = counts_all.flip(1).cumsum(1).flip(1)
    hits_region = counts_region.flip(1).cumsum(1).flip(1)
    region_pixels = region.sum(1)
    total = torch.full((n,), values.shape[1], dtype=torch.int64, device=values.device)
    peak = values.amax(dim=1, keepdim=True)
    ties = values == peak
    pointing = (ties & region).sum(1).double() / ties.sum(1).double()
    mass = values.double().sum(1)
    inside = (values.double() * region).sum(1)
    fraction = region_pixels.double() / total.double()
    ebpg = torch.where(mass > 0, inside / torch.where(mass > 0, mass, torch.ones_like(mass)), fraction)
    return GroundingStats(hits_all, hits_region, region_pixels, total, pointing, ebpg, constant)


def naive_counts(values: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: for each threshold, count `values >= tau` over all pixels and region pixels."""
    hits_all = np.empty(N_THRESHOLDS, np.int64)
    hits_region = np.empty(N_THRESHOLDS, np.int64)
    for k, tau in enumerate(THRESHOLDS):
        b = values >= tau
        hits_all[k] = np.count_nonzero(b)
        hits_region[k] = np.count_nonzero(b & region)
    return hits_all, hits_region
