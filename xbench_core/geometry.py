"""Preprocessing geometries: how an original image became a model's input, and the way back.

Every geometry XBench needs (identity, squash resize, shortest-side resize plus center crop,
letterbox plus center crop) is an axis-aligned affine map between continuous pixel coordinates,
where pixel i covers [i, i + 1):

    input = original * scale + offset          (per axis, y and x)

A model's `preprocess` returns its input tensor with the `Geometry` that produced it; the core maps
any input-frame map back to the original (or a capped eval) frame with `sampling_grid`. Input pixels
that no original pixel maps to (letterbox padding) are irrelevant; original pixels that the input
never covered (cropped away) get the map's minimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Size = tuple[int, int]  # (height, width)

_PIL_METHODS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}


@dataclass(frozen=True)
class Geometry:
    """An affine map from original-image pixel coordinates to model-input coordinates."""

    original_size: Size
    input_size: Size
    scale: tuple[float, float]  # (sy, sx)
    offset: tuple[float, float]  # (oy, ox)
    kind: str = "affine"

    # ---- constructors for the geometries the seven models use ------------------------------
    @staticmethod
    def identity(size: Size) -> Geometry:
        return Geometry(tuple(size), tuple(size), (1.0, 1.0), (0.0, 0.0), "identity")  # type: ignore[arg-type]

    @staticmethod
    def squash(original: Size, size: Size) -> Geometry:
        """Resize both axes to `size`, ignoring the aspect ratio (MedKLIP, MAVL, KAD)."""
        (h, w), (th, tw) = original, size
        return Geometry((h, w), (th, tw), (th / h, tw / w), (0.0, 0.0), "squash")

    @staticmethod
    def shortest_side_crop(original: Size, resize: int, crop: int) -> Geometry:
        """torchvision `Resize(resize)` then `CenterCrop(crop)` (CLIP, BiomedCLIP)."""
        h, w = original
        rh, rw = _shortest_side_size(original, resize)
        top, left = _crop_start(rh, crop), _crop_start(rw, crop)
        return Geometry((h, w), (crop, crop), (rh / h, rw / w), (-top, -left), "shortest_side_crop")

    @staticmethod
    def letterbox_crop(original: Size, canvas: int, crop: int) -> Geometry:
        """Longest side to `canvas`, zero-pad centered to a square canvas, center crop (CARZero)."""
        h, w = original
        rh, rw = _longest_side_size(original, canvas)
        pad_top, pad_left = (canvas - rh) // 2, (canvas - rw) // 2
        cut = _crop_start(canvas, crop)
        return Geometry(
            (h, w), (crop, crop), (rh / h, rw / w), (pad_top - cut, pad_left - cut), "letterbox_crop"
        )

    # ---- storage (maps are saved with their geometry) --------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The five numbers pairs and the kind, as JSON-ready lists (floats round-trip exactly)."""
        return {"original_size": list(self.original_size), "input_size": list(self.input_size),
                "scale": list(self.scale), "offset": list(self.offset), "kind": self.kind}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Geometry:
        return Geometry(
            (int(d["original_size"][0]), int(d["original_size"][1])),
            (int(d["input_size"][0]), int(d["input_size"][1])),
            (float(d["scale"][0]), float(d["scale"][1])),
            (float(d["offset"][0]), float(d["offset"][1])),
            str(d.get("kind", "affine")),
        )

    # ---- point mapping ---------------------------------------------------------------------
    def to_input(self, y: Any, x: Any) -> tuple[Any, Any]:
        """Original continuous coordinates -> input coordinates."""
        return y * self.scale[0] + self.offset[0], x * self.scale[1] + self.offset[1]

    def to_original(self, y: Any, x: Any) -> tuple[Any, Any]:
        """Input continuous coordinates -> original coordinates."""
        return (y - self.offset[0]) / self.scale[0], (x - self.offset[1]) / self.scale[1]

    def eval_size(self, cap: int | None) -> Size:
        """The eval frame: the original resolution, its long side capped at `cap` if given."""
        h, w = self.original_size
        if not cap or max(h, w) <= cap:
            return (h, w)
        f = cap / max(h, w)
        return (max(1, round(h * f)), max(1, round(w * f)))

    def sampling_grid(self, eval_size: Size) -> tuple[np.ndarray, np.ndarray]:
        """Where each eval-frame pixel center falls in the input, as `grid_sample` coordinates.

        Returns (gy, gx): 1-D float arrays in the normalized [-1, 1] convention of
        `torch.nn.functional.grid_sample(align_corners=False)`, for rows and columns; a value
        outside [-1, 1] is a pixel the input never covered.
        """
        he, we = eval_size
        h, w = self.original_size
        ye = (np.arange(he, dtype=np.float64) + 0.5) * (h / he)
        xe = (np.arange(we, dtype=np.float64) + 0.5) * (w / we)
        yi, xi = self.to_input(ye, xe)
        hi, wi = self.input_size
        return 2.0 * yi / hi - 1.0, 2.0 * xi / wi - 1.0


def _crop_start(size: int, crop: int) -> int:
    # torchvision center_crop: int(round((size - crop) / 2)) inside the image; when the crop is
    # larger it first pads (crop - size) // 2 on the top/left (round() would differ at odd halves)
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


def _shortest_side_size(original: Size, size: int) -> Size:
    # torchvision.transforms.functional.resize with an int: the long side is truncated, not rounded
    h, w = original
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _longest_side_size(original: Size, size: int) -> Size:
    # CARZero's resize_img: int(side * size / longest) for the short side (at least one pixel:
    # an aspect ratio beyond size:1 would otherwise give an empty image and a zero scale)
    h, w = original
    if h >= w:
        return size, max(1, int(float(w) * (size / float(h))))
    return max(1, int(float(h) * (size / float(w)))), size


def resize(image: np.ndarray, size: Size, method: str = "bilinear") -> np.ndarray:
    """Resize a float32 H x W image: Pillow (mode F) for nearest, bilinear, bicubic and lanczos, as
    the official pipelines' PIL resizes do; "area" is exact area averaging, what OpenCV's
    INTER_AREA computes (Pillow's BOX filter is not: it weighs whole pixels by their centers)."""
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image.astype(np.float32, copy=False)
    if method == "area":
        src = np.asarray(image)  # float32 stays float32: the sums accumulate in float64
        src = src if src.dtype in (np.float32, np.float64) else src.astype(np.float64)
        out64 = _area_axis(_area_axis(src, size[0], 0), size[1], 1)
        return out64.astype(np.float32)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    out = pil.resize((size[1], size[0]), resample=_PIL_METHODS[method])
    return np.array(out, dtype=np.float32)  # writable: torch.from_numpy wants it


def _area_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Resample one axis by exact area averaging: each output pixel is the mean of the input
    interval it covers, partial pixels weighted by their overlap.

    The whole input pixels of each interval are summed in float64 block by block (one pass over
    the image, no float64 copy of it), then the fractions at both ends are added; this equals the
    integral from prefix sums to within float64 rounding (tests/test_geometry.py)."""
    n = image.shape[axis]
    if n == size:
        return image
    moved = np.moveaxis(image, axis, 0)
    if axis != 0:  # sum contiguous blocks (the second pass runs on the first pass's small output)
        moved = np.ascontiguousarray(moved)
    edges = np.arange(size + 1, dtype=np.float64) * (n / size)
    edges[-1] = n
    whole = np.floor(edges).astype(np.int64)  # the first input pixel each edge falls in (n at the end)
    part = edges - whole  # how far into it
    out = np.zeros((size, *moved.shape[1:]), np.float64)
    for i, (a, b) in enumerate(zip(whole[:-1].tolist(), whole[1:].tolist())):
        if b > a:  # the whole input pixels a .. b-1 (none when the interval lies inside one pixel)
            np.sum(moved[a:b], axis=0, dtype=np.float64, out=out[i])
    shape = (-1, *([1] * (moved.ndim - 1)))
    last = np.minimum(whole, n - 1)  # the end edge's fraction is 0 where it lies at n
    out += part[1:].reshape(shape) * moved[last[1:]] - part[:-1].reshape(shape) * moved[last[:-1]]
    out /= n / size
    return np.moveaxis(out, 0, axis)


def squash(image: np.ndarray, size: Size, method: str = "bilinear") -> tuple[np.ndarray, Geometry]:
    """Squash-resize an image and return it with its Geometry."""
    return resize(image, size, method), Geometry.squash(image.shape[:2], size)


def shortest_side_crop(
    image: np.ndarray, resize_to: int, crop: int, method: str = "bicubic"
) -> tuple[np.ndarray, Geometry]:
    """Shortest side to `resize_to`, then a centered `crop` square, with its Geometry."""
    geom = Geometry.shortest_side_crop(image.shape[:2], resize_to, crop)
    rh, rw = _shortest_side_size(image.shape[:2], resize_to)
    out = resize(image, (rh, rw), method)
    top, left = int(-geom.offset[0]), int(-geom.offset[1])
    return _crop_or_pad(out, top, left, crop), geom


def letterbox_crop(
    image: np.ndarray, canvas: int, crop: int, method: str = "area"
) -> tuple[np.ndarray, Geometry]:
    """Longest side to `canvas`, zero padding to a centered square, centered `crop`."""
    geom = Geometry.letterbox_crop(image.shape[:2], canvas, crop)
    rh, rw = _longest_side_size(image.shape[:2], canvas)
    out = resize(image, (rh, rw), method)
    board = np.zeros((canvas, canvas), np.float32)
    pt, pl = (canvas - rh) // 2, (canvas - rw) // 2
    board[pt : pt + rh, pl : pl + rw] = out
    cut = _crop_start(canvas, crop)
    return _crop_or_pad(board, cut, cut, crop), geom


def _crop_or_pad(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    h, w = image.shape
    ys, xs = max(top, 0), max(left, 0)
    ye, xe = min(top + size, h), min(left + size, w)
    out[ys - top : ye - top, xs - left : xe - left] = image[ys:ye, xs:xe]
    return out
