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

Pointing Game: the share of the maximal pixels that lie in the region (1 or 0 without ties), and
the other tie rules beside it (`pointing_any`: any maximal pixel in the region; `pointing_first`:
the first one, row-major); `grounding.pointing` picks one at aggregation. EBPG: the share of the
map's mass in the region. A constant map is read as uniform: both equal the region's area fraction.
Extras per pair (`extra`): the contrast-to-noise ratio on the normalized map and the mean IoU over
the raw thresholds 0.1..0.5 (`>=`, before normalization), see xbench_core.protocols.
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
    pointing_any: Any = None  # [N] float64: 1 when any maximal pixel is in the region
    pointing_first: Any = None  # [N] float64: 1 when the first maximal pixel (row-major) is
    extra: list[dict[str, Any]] | None = None  # per pair: cnr, miou_raw

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
        ties = {k: getattr(self, k) for k in ("pointing_any", "pointing_first") if getattr(self, k) is not None}
        ties = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in ties.items()}
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
                    **{k: float(v[i]) for k, v in ties.items()},
                    **({"extra": self.extra[i]} if self.extra is not None else {}),
                }
            )
        return out


def interpolation_matrix(coords: np.ndarray, cells: int) -> np.ndarray:
    """Bilinear weights [len(coords), cells] of `grid_sample(align_corners=False, padding="border")`
    at normalized coordinates `coords` over a 1-D grid of `cells` cells."""
    p = np.clip(((coords + 1.0) * cells - 1.0) / 2.0, 0.0, cells - 1.0)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, cells - 1)
    w1 = p - i0
    out = np.zeros((len(coords), cells), np.float64)
    rows = np.arange(len(coords))
    np.add.at(out, (rows, i0), 1.0 - w1)
    np.add.at(out, (rows, i1), w1)
    return out.astype(np.float32)


def to_eval_frame(maps: Any, geometry: Geometry, eval_size: tuple[int, int]) -> Any:
    """Map [F, gh, gw] input-frame maps to [F, He, We] in the eval frame (bilinear).

    The geometries are axis-aligned, so bilinear sampling is separable: two small matrix products
    (rows x grid, grid x columns) instead of a per-pixel gather. numpy arrays stay in numpy (the
    CPU path); tensors stay on their device.
    """
    gy, gx = geometry.sampling_grid(eval_size)
    gh, gw = maps.shape[-2:]
    wy, wx = interpolation_matrix(gy, gh), interpolation_matrix(gx, gw)
    outside_rows = np.flatnonzero(np.abs(gy) > 1)
    outside_cols = np.flatnonzero(np.abs(gx) > 1)
    if isinstance(maps, np.ndarray):
        # float64 products, rounded once to float32: BLAS thread counts and kernels change the
        # order of the sums, and float64 keeps that from reaching the float32 map (and the counts)
        maps = maps.astype(np.float32, copy=False)
        wy64, wxt = wy.astype(np.float64), np.ascontiguousarray(wx.T, dtype=np.float64)
        # one 2-D BLAS product pair per map (a stacked matmul can miss the BLAS path)
        out = np.stack([(wy64 @ (m.astype(np.float64) @ wxt)).astype(np.float32) for m in maps])
        if outside_rows.size or outside_cols.size:
            low = maps.reshape(len(maps), -1).min(axis=1)[:, None]
            out[:, outside_rows, :] = low[:, :, None]
            out[:, :, outside_cols] = low[:, None, :]
        return out
    import torch

    maps = maps.float()
    frame = torch.matmul(torch.from_numpy(wy).to(maps.device), torch.matmul(maps, torch.from_numpy(wx).to(maps.device).T))
    if outside_rows.size or outside_cols.size:
        low = maps.flatten(1).amin(dim=1).view(-1, 1, 1)
        frame[:, torch.from_numpy(outside_rows).to(maps.device), :] = low
        frame[:, :, torch.from_numpy(outside_cols).to(maps.device)] = low
    return frame


def normalize(maps: Any) -> tuple[Any, Any]:
    """Min-max normalize each of N maps to [0, 1]; returns (maps, constant flags).

    (m - min) / (max - min) is exactly 1 at the maximum and within [0, 1] everywhere under float
    rounding, so no clipping is needed. numpy arrays are normalized in place.
    """
    if isinstance(maps, np.ndarray):
        flat = maps.reshape(len(maps), -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        constant = hi <= lo
        for i in range(len(flat)):
            if constant[i]:
                flat[i] = 0.0
            else:
                np.subtract(flat[i], lo[i], out=flat[i])
                np.divide(flat[i], hi[i] - lo[i], out=flat[i])
        return maps, constant
    import torch

    flat = maps.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    span = hi - lo
    constant = span.squeeze(1) <= 0
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return out.view_as(maps), constant


def evaluate_maps(maps: Any, geometry: Geometry, eval_size: tuple[int, int], masks: Any) -> GroundingStats:
    """The whole per-image step: [F, gh, gw] input-frame maps and F region masks [He, We] ->
    statistics. On the CPU it runs in numpy; on an accelerator in torch, on the device."""
    return frame_stats(to_eval_frame(numpy_on_cpu(maps), geometry, eval_size), masks)


def numpy_on_cpu(maps: Any) -> Any:
    """Maps as the grounding step takes them: numpy on the CPU (faster there), a detached tensor
    on an accelerator."""
    if isinstance(maps, np.ndarray):
        return maps
    maps = maps.detach()
    return maps.float().numpy() if maps.device.type == "cpu" else maps


def frame_stats(frame: Any, masks: Any) -> GroundingStats:
    """The step after `to_eval_frame`: statistics and extras of eval-frame maps [N, He, We] against
    N region masks [He, We]. A numpy frame (float32, normalized in place) runs in numpy; a tensor
    runs in torch on its device (`_stats_on_device`)."""
    regions = np.stack([np.asarray(m, dtype=bool) for m in masks])
    if not isinstance(frame, np.ndarray):
        import torch

        return _stats_on_device(frame, torch.from_numpy(regions).to(frame.device, non_blocking=True))
    raw_iou = _raw_miou(frame, regions)  # before normalize, which works in place
    normed, _ = normalize(frame)
    stats = _stats_numpy(normed, regions)
    stats.extra = _extras(normed, regions, raw_iou)
    return stats


RAW_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)  # MS-CXR's mIoU thresholds on raw (cosine) maps


def _raw_miou(frame: np.ndarray, regions: np.ndarray) -> list[float]:
    """Per map, the mean over RAW_THRESHOLDS of the IoU of `raw >= t` with the region."""
    out = []
    for v, r in zip(frame, regions):
        tp, pred = [], []
        for t in RAW_THRESHOLDS:
            above = v >= np.float32(t)
            tp.append(int((above & r).sum()))
            pred.append(int(above.sum()))
        out.append(_mean_iou(tp, pred, int(r.sum())))
    return out


def _mean_iou(tp: Any, pred: Any, n_region: int) -> float:
    """The mean over thresholds of the IoU from integer counts (0 for an empty union)."""
    ious = []
    for tp_t, pred_t in zip(tp, pred):
        union = int(pred_t) + n_region - int(tp_t)
        ious.append(int(tp_t) / union if union else 0.0)
    return float(np.mean(ious))


def _extras(normed: Any, regions: Any, raw_iou: list[float]) -> list[dict[str, Any]]:
    """Per pair: contrast-to-noise ratio |mean_in - mean_out| / sqrt(var_in + var_out) (population
    variances, float64) on the normalized map, and the raw-threshold mIoU."""
    out = []
    for v, r, miou in zip(normed, regions, raw_iou):
        v64 = v.reshape(-1).astype(np.float64)
        inside_mask = r.reshape(-1)
        inside, outside = v64[inside_mask], v64[~inside_mask]
        cnr = None
        if inside.size and outside.size:
            spread = float(np.sqrt(inside.var() + outside.var()))
            if spread > 0:
                cnr = float(abs(inside.mean() - outside.mean()) / spread)
        out.append({"cnr": cnr, "miou_raw": miou})
    return out


# The thresholds with a sentinel above 1, so that "value >= next threshold" needs no bounds check.
_PADDED = np.concatenate([THRESHOLDS, np.array([2.0], np.float32)])
_NEXT = _PADDED[1:].copy()  # _NEXT[k] is the threshold above tau_k


def threshold_bins(values: Any) -> Any:
    """For each value in [0, 1], the largest k with value >= THRESHOLDS[k] (numpy or torch, same shape)."""
    if isinstance(values, np.ndarray):
        k = (values * np.float32(100)).astype(np.intp)
        np.clip(k, 0, N_THRESHOLDS - 1, out=k)
        # floor(v * 100) can be one off next to a threshold: correct it by exact comparison
        k -= values < np.take(_PADDED, k)
        k += values >= np.take(_NEXT, k)
        return k
    import torch

    thr = torch.as_tensor(_PADDED, device=values.device)
    k = (values * 100).to(torch.int64).clamp_(0, N_THRESHOLDS - 1)
    k -= (values < thr[k]).to(torch.int64)
    k += (values >= thr[k + 1]).to(torch.int64)
    return k


def grounding_stats(maps: Any, masks: Any, *, normalized: bool = True) -> GroundingStats:
    """Statistics of N maps [N, H, W] (normalized to [0, 1] unless `normalized=False`) against
    boolean region masks [N, H, W]. Runs in numpy for CPU tensors (faster there) and in torch on
    accelerators; both give the same counts."""

    if not normalized:
        maps, _ = normalize(maps)
    if maps.device.type == "cpu":
        return _stats_numpy(maps.detach().float().numpy(), masks.detach().bool().numpy())
    return _stats_torch(maps.float(), masks.bool())


# float32 rounding moves v * 100 by at most ~1.2e-5 relative to the float32 thresholds, so a value
# whose v * 100 lies farther than this from an integer is binned right by truncation alone.
_NEAR = np.float32(1e-4)


def _bin_counts(values: np.ndarray) -> np.ndarray:
    """Pixels per threshold bin, equal to `bincount(threshold_bins(values))`: truncation of
    v * 100 for all values, and the exact comparisons only for the few values near a threshold."""
    scaled = values * np.float32(100)
    np.clip(scaled, 0, N_THRESHOLDS - 1, out=scaled)
    k = scaled.astype(np.uint8)
    counts = np.bincount(k, minlength=N_THRESHOLDS)
    frac = scaled - k
    near = np.flatnonzero((frac < _NEAR) | (frac > 1 - _NEAR))
    if near.size:
        counts -= np.bincount(k[near], minlength=N_THRESHOLDS)
        counts += np.bincount(threshold_bins(values[near]), minlength=N_THRESHOLDS)
    return counts


def _stats_numpy(maps: np.ndarray, masks: np.ndarray) -> GroundingStats:
    import torch

    n = maps.shape[0]
    hits_all = np.empty((n, N_THRESHOLDS), np.int64)
    hits_region = np.empty((n, N_THRESHOLDS), np.int64)
    region_px = np.empty(n, np.int64)
    pointing = np.empty(n, np.float64)
    pointing_any = np.empty(n, np.float64)
    pointing_first = np.empty(n, np.float64)
    ebpg = np.empty(n, np.float64)
    constant = np.empty(n, bool)
    total = maps[0].size if n else 0
    for i in range(n):
        v = maps[i].reshape(-1)
        inside = np.flatnonzero(masks[i].reshape(-1))
        counts = _bin_counts(v)
        counts_r = np.bincount(threshold_bins(v[inside]), minlength=N_THRESHOLDS)
        hits_all[i] = np.cumsum(counts[::-1])[::-1]
        hits_region[i] = np.cumsum(counts_r[::-1])[::-1]
        region_px[i] = inside.size
        peak, low = v.max(), v.min()
        constant[i] = peak <= low
        at_peak = np.count_nonzero(v[inside] == peak)
        pointing[i] = at_peak / np.count_nonzero(v == peak)
        pointing_any[i] = float(at_peak > 0)
        pointing_first[i] = float(masks[i].reshape(-1)[int(np.argmax(v))])
        mass = float(v.sum(dtype=np.float64))
        ebpg[i] = float(v[inside].sum(dtype=np.float64)) / mass if mass > 0 else inside.size / total
    tensor = torch.from_numpy
    return GroundingStats(
        tensor(hits_all), tensor(hits_region), tensor(region_px), torch.full((n,), total, dtype=torch.int64),
        tensor(pointing), tensor(ebpg), tensor(constant), tensor(pointing_any), tensor(pointing_first),
    )


def _stats_torch(maps: Any, masks: Any) -> GroundingStats:
    import torch

    n = maps.shape[0]
    values = maps.reshape(n, -1)
    region = masks.reshape(n, -1)
    bins = threshold_bins(values)
    offsets = torch.arange(n, device=values.device).view(n, 1) * N_THRESHOLDS
    flat_bins = (bins + offsets).view(-1)
    counts_all = torch.bincount(flat_bins, minlength=n * N_THRESHOLDS).view(n, N_THRESHOLDS)
    counts_region = torch.bincount(flat_bins[region.view(-1)], minlength=n * N_THRESHOLDS).view(
        n, N_THRESHOLDS
    )
    # counts >= tau_k: reverse cumulative sums over the bins
    hits_all = counts_all.flip(1).cumsum(1).flip(1)
    hits_region = counts_region.flip(1).cumsum(1).flip(1)
    region_pixels = region.sum(1)
    total = torch.full((n,), values.shape[1], dtype=torch.int64, device=values.device)
    peak = values.amax(dim=1, keepdim=True)
    constant = peak.squeeze(1) <= values.amin(dim=1)
    ties = values == peak
    at_peak = (ties & region).sum(1)
    pointing = at_peak.double() / ties.sum(1).double()
    pointing_any = (at_peak > 0).double()
    first = torch.argmax(values, dim=1)  # the first maximal value's index (torch documents it)
    pointing_first = region.gather(1, first.view(n, 1)).squeeze(1).double()
    mass = values.double().sum(1)
    inside = (values.double() * region).sum(1)
    fraction = region_pixels.double() / total.double()
    ebpg = torch.where(mass > 0, inside / torch.where(mass > 0, mass, torch.ones_like(mass)), fraction)
    return GroundingStats(hits_all, hits_region, region_pixels, total, pointing, ebpg, constant, pointing_any, pointing_first)


def _stats_on_device(frame: Any, regions: Any) -> GroundingStats:
    """The statistics and extras of N eval-frame maps [N, He, We] and masks in torch, on their
    device, brought to the host in one transfer."""
    import torch

    n = frame.shape[0]
    flat_raw, region = frame.reshape(n, -1), regions.reshape(n, -1)
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
    n_in = stats.region_pixels.double()
    n_out = stats.total_pixels - n_in
    mean_in = (v * inside).sum(1) / n_in.clamp(min=1)
    mean_out = (v * (1 - inside)).sum(1) / n_out.clamp(min=1)
    var_in = (((v - mean_in[:, None]) ** 2) * inside).sum(1) / n_in.clamp(min=1)
    var_out = (((v - mean_out[:, None]) ** 2) * (1 - inside)).sum(1) / n_out.clamp(min=1)
    cnr_num, cnr_spread = (mean_in - mean_out).abs(), torch.sqrt(var_in + var_out)
    parts = {
        "hits_all": stats.hits_all, "hits_region": stats.hits_region, "region_px": stats.region_pixels,
        "total": stats.total_pixels, "pointing": stats.pointing_game, "ebpg": stats.ebpg,
        "constant": stats.constant, "pointing_any": stats.pointing_any, "pointing_first": stats.pointing_first,
        "tp": torch.stack(tp, 1), "pred": torch.stack(pred, 1),
        "cnr_num": cnr_num, "cnr_spread": cnr_spread,
    }
    columns = [c.double().reshape(n, -1) for c in parts.values()]
    host = torch.cat(columns, 1).cpu().numpy()  # the one synchronization
    h: dict[str, np.ndarray] = {}
    at = 0
    for name, c in zip(parts, columns):
        h[name] = host[:, at : at + c.shape[1]] if c.shape[1] > 1 else host[:, at].copy()
        at += c.shape[1]
    ints = {k: h[k].astype(np.int64) for k in ("hits_all", "hits_region", "region_px", "total", "tp", "pred")}
    extra = []
    for i in range(n):
        n_in = int(ints["region_px"][i])
        cnr = None
        if 0 < n_in < ints["total"][i] and h["cnr_spread"][i] > 0:
            cnr = float(h["cnr_num"][i] / h["cnr_spread"][i])
        extra.append({"cnr": cnr, "miou_raw": _mean_iou(ints["tp"][i], ints["pred"][i], n_in)})
    tensor = torch.from_numpy
    return GroundingStats(
        tensor(ints["hits_all"]), tensor(ints["hits_region"]), tensor(ints["region_px"]), tensor(ints["total"]),
        tensor(h["pointing"]), tensor(h["ebpg"]), tensor(h["constant"] > 0), tensor(h["pointing_any"]),
        tensor(h["pointing_first"]), extra,
    )


def naive_counts(values: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: for each threshold, count `values >= tau` over all pixels and region pixels."""
    hits_all = np.empty(N_THRESHOLDS, np.int64)
    hits_region = np.empty(N_THRESHOLDS, np.int64)
    for k, tau in enumerate(THRESHOLDS):
        b = values >= tau
        hits_all[k] = np.count_nonzero(b)
        hits_region[k] = np.count_nonzero(b & region)
    return hits_all, hits_region
