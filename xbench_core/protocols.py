"""Grounding protocols: named sets of choices that reproduce a published evaluation exactly.

XBench's own evaluation (`xbench`) is one protocol among the conventions papers use. Each protocol
fixes the frame a map is scored in, how it is brought there, how it is binarized and how the
pointing game reads ties; `grounding.protocol` chooses one per run (`xbench run`, `xbench score`).
Whatever the protocol, the `xbench` statistics are recorded too (so the xbench metrics stay
comparable); a protocol adds its own per-(image, finding) values under `stats["protocol"]`, and
the `protocol` metric turns them into row fields named `<protocol>_<metric>`.

- `xbench`: original-resolution eval frame, bilinear, min-max per map, the grid thresholds
  k/100 with `>=`, pointing game with the tie rule `grounding.pointing` (default `share`).
- `chexlocalize` (Saporta et al., NMI 2022; rajpurkarlab/cheXlocalize `heatmap_to_segmentation.py`
  and `eval.py`): the map bilinearly resized to the original CXR (`align_corners=False`), min-max
  normalized, then either Otsu's threshold on the 0-255 scale (`uint8(255 * map)`, pixels `> t`)
  with the contours filled (holes filled, isolated single pixels dropped, as `cv2.findContours` +
  Pillow polygons do), or a fixed threshold `map > tau` (`chexlocalize.threshold`, the value the
  official tuning picks on validation from 0.2-0.8); optional probability gating (a map whose
  probability is below `chexlocalize.prob_cutoff` predicts nothing); IoU with `true_pos_only`
  (NaN when the prediction or the ground truth is empty; with `true_pos_only: false` NaN only
  when both are); hit = the first argmax (row-major) of the resized map lies in the region; pixel
  TP/FP/FN/TN pooled over images for precision, recall and specificity
  (`precision_recall_specificity.py`).
- `medklip` (Wu et al., ICCV 2023; MedKLIP `Sample_Zero-Shot_Grounding_RSNA/test.py`): the map on
  the model-input frame (224), upsampled by nearest repetition (14x14 repeated 16x), not
  normalized; the region brought to that frame by nearest resizing; binarized by `map > 0.008`
  (`medklip.threshold`); IoU and Dice per positive image, averaged; pointing game counts a hit when
  ANY maximal pixel lies in the region.
- `mavl` (Phan et al., CVPR 2024; CVPR2024_MAVL `Zero-shot_grounding/test.py`): as `medklip` but
  upsampled bilinearly with `align_corners=True`, and the threshold the best of the raw sweep
  `numpy.arange(0.0001, 0.1, 0.00001)` by mean Dice over the finding's images (float32 `>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError
from .geometry import Geometry

PROTOCOLS = {
    "xbench": "original frame, bilinear, min-max per map, grid thresholds (>=), pointing game tie rule "
    "grounding.pointing (default share)",
    "chexlocalize": "cheXlocalize: original frame, Otsu on uint8(255 * min-max map) with filled contours "
    "(or a tuned threshold), true-positive-only IoU, hit = first argmax, pooled pixel precision/recall/"
    "specificity",
    "medklip": "MedKLIP: 224 input frame, nearest repetition, raw map > 0.008, IoU and Dice per image, "
    "pointing game hit when any maximum is in the region",
    "mavl": "MAVL: 224 input frame, bilinear align_corners=True, best raw threshold of "
    "arange(0.0001, 0.1, 0.00001) by mean Dice, pointing game hit when any maximum is in the region",
}
TIE_RULES = ("share", "any", "first")
# The MAVL sweep, as its test.py builds it (float64 arange, compared in float32 by torch).
MAVL_THRESHOLDS = np.arange(0.0001, 0.1, 0.00001).astype(np.float32)
# cheXlocalize tune_heatmap_threshold.py: np.arange(0.2, .8, .1), which float rounding makes 0.2 ... 0.8
CHEXLOCALIZE_TUNING = np.arange(0.2, 0.8, 0.1).astype(np.float32)
RAW_THRESHOLDS = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)  # MS-CXR mIoU on cosine maps


@dataclass(frozen=True)
class Protocol:
    """A protocol and its options (validated): `options` as given (for the manifest and the run's
    identity), `per_finding` the per-finding values read from them (cheXlocalize's tuning CSVs)."""

    name: str = "xbench"
    options: dict[str, Any] = field(default_factory=dict)
    per_finding: dict[str, dict[str, float]] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options, "definition": PROTOCOLS[self.name]}

    def value(self, key: str, finding: str | None) -> Any:
        """An option's value for one finding (a number, or null)."""
        if key in self.per_finding:
            return self.per_finding[key].get(finding or "")
        return self.options.get(key)


DEFAULTS: dict[str, dict[str, Any]] = {
    "xbench": {},
    "chexlocalize": {"threshold": None, "prob_cutoff": 0.0, "true_pos_only": True},
    "medklip": {"threshold": 0.008},
    "mavl": {},
}
# cheXlocalize's tuning files: the column each option reads (probability cutoffs: the row of the
# best mIoU per task, as heatmap_to_segmentation.py picks it)
_TUNING_COLUMNS = {"threshold": "threshold", "prob_cutoff": "prob_threshold"}


def parse_protocol(value: Any) -> Protocol:
    """`grounding.protocol`: a name, or {name, ...options} (e.g. {name: chexlocalize, threshold: 0.4}).
    cheXlocalize's `threshold` and `prob_cutoff` may also be {finding: value} or the path of the
    official tuning CSV (`tuning_results.csv`: task,threshold; `probability_tuning_results.csv`:
    task,prob_threshold,mIoU)."""
    if value is None:
        return Protocol()
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"grounding.protocol must be a name ({', '.join(PROTOCOLS)}) or {{name, ...options}}, got {value!r}")
    name = str(value["name"])
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown grounding protocol {name!r} (valid: {', '.join(PROTOCOLS)})")
    options = dict(DEFAULTS[name])
    per_finding: dict[str, dict[str, float]] = {}
    for key, v in value.items():
        if key == "name":
            continue
        if key not in options:
            valid = ", ".join(options) or "none"
            raise ConfigError(f"grounding.protocol {name} has no option {key!r} (options: {valid})")
        if key == "true_pos_only":
            if not isinstance(v, bool):
                raise ConfigError(f"grounding.protocol.true_pos_only must be true or false, got {v!r}")
        elif name == "chexlocalize" and isinstance(v, (str, dict)):
            per_finding[key] = _per_finding(key, v)
        elif v is not None:
            v = _number(key, v)
        options[key] = v
    return Protocol(name, options, per_finding)


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"grounding.protocol.{key} must be a number, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"grounding.protocol.{key} must be a number, got {v!r}") from None


def _per_finding(key: str, v: str | dict) -> dict[str, float]:
    from .findings import canonical

    if isinstance(v, dict):
        return {canonical(str(f)): _number(key, x) for f, x in v.items()}
    import csv
    from pathlib import Path

    path = Path(v).expanduser()
    if not path.is_file():
        raise ConfigError(f"grounding.protocol.{key}: {path} is not a file (a number, {{finding: value}} or "
                          "cheXlocalize's tuning CSV)")
    column = _TUNING_COLUMNS[key]
    best: dict[str, tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"task", column} <= set(reader.fieldnames or []):
            raise ConfigError(f"{path}: needs the columns task and {column} (cheXlocalize's tuning CSV)")
        for line, row in enumerate(reader, start=2):
            try:
                finding = canonical(row["task"])
                x = float(row[column])
                score = float(row["mIoU"]) if "mIoU" in row and row["mIoU"] not in (None, "") else 0.0
            except (ConfigError, ValueError) as exc:
                raise ConfigError(f"{path} line {line}: {exc}") from None
            if finding not in best or score > best[finding][1]:  # idxmax: the first best row
                best[finding] = (x, score)
    return {f: x for f, (x, _) in best.items()}


def parse_tie_rule(value: Any) -> str:
    rule = "share" if value is None else str(value)
    if rule not in TIE_RULES:
        raise ConfigError(f"grounding.pointing must be one of {', '.join(TIE_RULES)}, got {value!r}")
    return rule


# ---- the pieces ---------------------------------------------------------------------------------
def pointing(values: np.ndarray, region: np.ndarray, rule: str) -> float:
    """Pointing game of one map against a boolean region of the same shape, by tie rule:
    `share` = the share of the maximal pixels in the region, `any` = 1 when any maximal pixel is,
    `first` = 1 when the first maximal pixel (row-major, `numpy.argmax`) is."""
    v = values.reshape(-1)
    r = region.reshape(-1)
    if rule == "first":
        return float(r[int(np.argmax(v))])
    top = v == v.max()
    inside = np.count_nonzero(top & r)
    if rule == "any":
        return float(inside > 0)
    return inside / np.count_nonzero(top)


def otsu_threshold(image: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image as OpenCV computes it (`THRESH_OTSU`: the first level of
    maximal between-class variance, levels skipped where a class is empty up to FLT_EPSILON)."""
    hist = np.bincount(image.reshape(-1), minlength=256).astype(np.float64)
    scale = 1.0 / image.size
    mu = 0.0
    for i in range(256):
        mu += i * hist[i]
    mu *= scale
    mu1 = q1 = 0.0
    best_sigma, best = 0.0, 0
    eps = float(np.finfo(np.float32).eps)
    for i in range(256):
        p_i = hist[i] * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < eps or max(q1, q2) > 1.0 - eps:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > best_sigma:
            best_sigma, best = sigma, i
    return best


def fill_contours(binary: np.ndarray) -> np.ndarray:
    """What cheXlocalize draws from a binary image: every contour that `cv2.findContours`
    (RETR_TREE) finds, with more than one point, filled as a polygon. That is each 8-connected
    component of more than one pixel with its holes (background not 4-connected to the border)
    filled; a component of a single pixel has a one-point contour and is dropped."""
    from scipy import ndimage

    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(binary.shape, bool)
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    keep = sizes > 1
    keep[0] = False
    return ndimage.binary_fill_holes(keep[labels])


def resize_bilinear(values: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """`torch.nn.functional.interpolate(mode="bilinear")` of one float32 map (exactly torch's)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(values, np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=align_corners)
    return out[0, 0].numpy()


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Legacy nearest resizing (`interpolate(mode="nearest")`, torchvision `Resize(NEAREST)` on
    tensors): output pixel i takes input floor(i * in / out). A 14x14 map to 224 is numpy's
    `repeat(16)` (MedKLIP)."""
    h, w = values.shape
    rows = np.minimum((np.arange(size[0]) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size[1]) * (w / size[1])).astype(np.int64), w - 1)
    return values[rows[:, None], cols[None, :]]


def region_in_input_frame(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """An original-resolution mask brought to the model-input frame by nearest sampling (input pixel
    i takes the original pixel floor(to_original(i))): for a squash it is the legacy nearest resize
    MedKLIP and MAVL apply to their masks. Input pixels outside the image are background."""
    h, w = mask.shape
    hi, wi = geometry.input_size
    yo, xo = geometry.to_original(np.arange(hi, dtype=np.float64), np.arange(wi, dtype=np.float64))
    if geometry.kind == "squash":  # exactly torch's floor(i * in / out)
        yo = np.arange(hi) * (h / hi)
        xo = np.arange(wi) * (w / wi)
    rows, cols = np.floor(yo).astype(np.int64), np.floor(xo).astype(np.int64)
    vr, vc = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    out = mask[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]].astype(bool)
    out &= vr[:, None] & vc[None, :]
    return out


def map_to_input_frame(values: np.ndarray, geometry: Geometry, mode: str) -> np.ndarray:
    """A map on its own grid (e.g. 14x14 patches) to the model-input frame (e.g. 224x224)."""
    size = (int(geometry.input_size[0]), int(geometry.input_size[1]))
    if values.shape == size:
        return values.astype(np.float32, copy=False)
    if mode == "nearest":
        return resize_nearest(values, size)
    return resize_bilinear(values, size, align_corners=True)


def to_original_frame(values: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A model-input-frame map on the original image: for a squash exactly cheXlocalize's
    `interpolate(bilinear, align_corners=False)`; other geometries through the core's inverse mapping."""
    from .grounding import to_eval_frame

    if geometry.kind in ("squash", "identity"):
        return resize_bilinear(values, geometry.original_size)
    return to_eval_frame(values[None].astype(np.float32), geometry, geometry.original_size)[0]


# ---- per (image, finding) values of each protocol -----------------------------------------------
def chexlocalize_values(
    values: np.ndarray, region: np.ndarray, *, threshold: float | None = None, prob: float | None = None,
    prob_cutoff: float = 0.0, true_pos_only: bool = True,
) -> dict[str, Any]:
    """cheXlocalize's per-CXR values of one map already on the original frame (float32)."""
    hit = float(region.reshape(-1)[int(np.argmax(values))]) if region.any() else None
    low = values.min()
    shifted = values - low
    top = shifted.max()
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = shifted / top  # as the official code: a constant map gives NaN and predicts nothing
    if prob is not None and prob < prob_cutoff:
        pred = np.zeros(values.shape, bool)
    elif threshold is None:
        scaled = (np.float32(255) * norm).astype(np.uint8) if top > 0 else np.zeros(values.shape, np.uint8)
        pred = fill_contours(scaled > otsu_threshold(scaled))
    else:
        pred = norm > np.float32(threshold) if top > 0 else np.zeros(values.shape, bool)
    tp = int(np.count_nonzero(pred & region))
    n_pred, n_region = int(np.count_nonzero(pred)), int(np.count_nonzero(region))
    union = n_pred + n_region - tp
    if true_pos_only:
        iou = tp / union if n_pred and n_region else None
    else:
        iou = tp / union if union else None
    fp, fn = n_pred - tp, n_region - tp
    # the tuning sweep (no gating, as tune_heatmap_threshold.py): per threshold, TP and predicted
    pred_n, tp_n = [], []
    for t in CHEXLOCALIZE_TUNING:
        above = norm > t if top > 0 else np.zeros(values.shape, bool)
        pred_n.append(int(np.count_nonzero(above)))
        tp_n.append(int(np.count_nonzero(above & region)))
    return {
        "chexlocalize_iou": iou,
        "chexlocalize_hit": hit,
        "px_tp": tp, "px_fp": fp, "px_fn": fn, "px_tn": int(values.size - tp - fp - fn),
        "chexlocalize_sweep_tp": tp_n, "chexlocalize_sweep_pred": pred_n,
    }


def medklip_values(values: np.ndarray, region: np.ndarray, *, threshold: float = 0.008) -> dict[str, Any]:
    """MedKLIP's `score_cal` for one map and region on the input frame (raw values, `>` threshold)."""
    pred = values > np.float32(threshold)
    tp = int(np.count_nonzero(pred & region))
    n_pred, n_region = int(np.count_nonzero(pred)), int(np.count_nonzero(region))
    union = n_pred + n_region - tp
    return {
        "medklip_iou": tp / union if union else None,
        "medklip_dice": 2 * tp / (n_pred + n_region) if n_pred + n_region else None,
        "medklip_pointing": pointing(values, region, "any"),
    }


def mavl_values(values: np.ndarray, region: np.ndarray) -> dict[str, Any]:
    """MAVL's sweep counts for one map and region on the input frame: for every threshold of the
    sweep, the pixels `> t` overall and in the region (the metric picks the best mean Dice)."""
    sweep = MAVL_THRESHOLDS
    flat = np.sort(values.reshape(-1))
    inside = np.sort(values[region])
    above = flat.size - np.searchsorted(flat, sweep, side="right")
    above_in = inside.size - np.searchsorted(inside, sweep, side="right")
    return {
        "mavl_sweep_all": above.tolist(),
        "mavl_sweep_region": above_in.tolist(),
        "mavl_region_px": int(inside.size),
        "mavl_pointing": pointing(values, region, "any"),
    }


def extra_values(normalized: np.ndarray, raw: np.ndarray, region: np.ndarray) -> dict[str, Any]:
    """The protocol-free extras on the xbench eval frame: contrast-to-noise ratio (BioViL/MS-CXR,
    |mean_in - mean_out| / sqrt(var_in + var_out), population variances, on the min-max map: CNR is
    unchanged by it) and the mean IoU over the raw thresholds 0.1..0.5 (MS-CXR on cosine maps, `>=`)."""
    r = region.reshape(-1)
    v = normalized.reshape(-1).astype(np.float64)
    inside, outside = v[r], v[~r]
    cnr = None
    if inside.size and outside.size:
        spread = np.sqrt(inside.var() + outside.var())
        cnr = float(abs(inside.mean() - outside.mean()) / spread) if spread > 0 else None
    raw_flat = raw.reshape(-1)
    n_region = int(inside.size)
    ious = []
    for t in RAW_THRESHOLDS:
        pred = raw_flat >= t
        tp = int(np.count_nonzero(pred & r))
        union = int(np.count_nonzero(pred)) + n_region - tp
        ious.append(tp / union if union else 0.0)
    return {"cnr": cnr, "miou_raw": float(np.mean(ious))}


def at_frame(geometry: Geometry, size: tuple[int, int]) -> Geometry:
    """The same preprocessing seen from an image of `size` (e.g. a capped eval frame) instead of the
    original: the original frame scaled to `size`."""
    if tuple(size) == tuple(geometry.original_size):
        return geometry
    (h, w), (he, we) = geometry.original_size, size
    scale = (geometry.scale[0] * h / he, geometry.scale[1] * w / we)
    return Geometry((he, we), geometry.input_size, scale, geometry.offset, geometry.kind)


def protocol_values(
    protocol: Protocol, values: Any, geometry: Geometry, region_original: Any,
    prob: float | None = None, finding: str | None = None,
) -> dict[str, Any]:
    """The protocol's values for one map given on the model-input frame (`values` [gh, gw]) and its
    region on the original image (or on a scaled copy of it: the geometry follows the mask's size).
    `xbench` has none (its statistics are the engine's)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    values = np.asarray(values, np.float32)
    region_original = np.asarray(region_original, bool)
    geometry = at_frame(geometry, region_original.shape)
    opts = protocol.options
    if protocol.name == "chexlocalize":
        frame = to_original_frame(values, geometry)
        return chexlocalize_values(
            frame, region_original.astype(bool), threshold=protocol.value("threshold", finding), prob=prob,
            prob_cutoff=protocol.value("prob_cutoff", finding) or 0.0, true_pos_only=opts.get("true_pos_only", True),
        )
    if protocol.name in ("medklip", "mavl"):
        region = region_in_input_frame(region_original, geometry)
        if protocol.name == "medklip":
            return medklip_values(map_to_input_frame(values, geometry, "nearest"), region, threshold=opts.get("threshold", 0.008))
        return mavl_values(map_to_input_frame(values, geometry, "bilinear"), region)
    return {}
