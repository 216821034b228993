"""CARZero's image preprocessing: letterbox to 256 with cv2 INTER_AREA, center crop 224, CXR_MAE norm.

Followed: laihaoran/CARZero (fa4e09c)
- `CARZeroDQNWOSAGLMLP.process_img` / `_resize_img`: 8-bit grey image (cv2.imread(path, 0)), the
  longest side resized to 256 with `cv2.INTER_AREA` (short side `int(side * 256 / longest)`), zero
  padding centered (floor before, ceil after), PIL RGB (grey copied to 3 channels);
- `CARZero/builder.py`, `build_transformation(split="test")`: CenterCrop(224), ToTensor,
  Normalize(mean=[0.4978], std=[0.2449]) ("CXR_MAE").

The geometry (resize factors, padding and crop offsets) is the core's `Geometry.letterbox_crop`,
which matches `_resize_img` and torchvision's CenterCrop arithmetic. The pixels are resampled here
by exact area averaging, which is what cv2.INTER_AREA computes (checked against OpenCV to 1e-7 on
float images, downscaling and upscaling):
# CORE-REQUEST: `xbench_core.resize(method="area")` is Pillow's BOX filter, which gives each input
# pixel weight 0 or 1 by where its center falls, not its fractional overlap; it equals
# cv2.INTER_AREA only for integer factors (for 2000 x 1700 -> 256 x 217 the mean difference on
# noise is 0.006, for 300 x 260 -> 256 x 221 it is 0.10). An exact-area method in the core would
# let this module call `xbench_core.letterbox_crop` directly.
"""

from __future__ import annotations

import numpy as np

from xbench_core import Geometry

CANVAS = 256  # data.image.imsize
CROP = 224  # transforms.random_crop.crop_size (CenterCrop at test time)
MEAN = 0.4978  # transforms.norm "CXR_MAE"
STD = 0.2449


def _area_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Resample one axis by exact area averaging (each output pixel is the mean of the input
    interval it covers, partial pixels weighted by their overlap), from prefix sums."""
    n = image.shape[axis]
    if n == size:
        return np.asarray(image, dtype=np.float64)
    moved = np.moveaxis(image, axis, 0)
    prefix = np.empty((n + 1, *moved.shape[1:]), np.float64)
    prefix[0] = 0.0
    np.cumsum(moved, axis=0, dtype=np.float64, out=prefix[1:])
    edges = np.arange(size + 1, dtype=np.float64) * (n / size)
    edges[-1] = n
    whole = np.minimum(np.floor(edges).astype(np.int64), n - 1)
    part = (edges - whole).reshape(-1, *([1] * (moved.ndim - 1)))
    # Integral of the image from 0 to each edge: whole pixels plus the covered part of the next.
    integral = prefix[whole] + part * moved[whole]
    out = (integral[1:] - integral[:-1]) / (n / size)
    return np.moveaxis(out, 0, axis)


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D image to (height, width) as cv2.resize(..., interpolation=INTER_AREA) does."""
    return _area_axis(_area_axis(image, size[0], 0), size[1], 1)


def letterbox_area(
    image: np.ndarray, canvas: int = CANVAS, crop: int = CROP
) -> tuple[np.ndarray, Geometry]:
    """Longest side to `canvas` by area averaging, centered zero padding, centered `crop`, with the
    core's Geometry (the pixels are placed where that geometry says they go)."""
    h, w = image.shape
    geometry = Geometry.letterbox_crop((h, w), canvas, crop)
    # The resized size, as `_resize_img` computes it: the long side `canvas`, the short side
    # int(float(side) * (canvas / float(longest))) (the core keeps at least one pixel).
    rh, rw = round(geometry.scale[0] * h), round(geometry.scale[1] * w)
    resized = area_resize(image, (rh, rw))
    top, left = int(geometry.offset[0]), int(geometry.offset[1])  # resized image in crop frame
    out = np.zeros((crop, crop), np.float64)
    ys, xs = max(top, 0), max(left, 0)
    ye, xe = min(top + rh, crop), min(left + rw, crop)
    out[ys:ye, xs:xe] = resized[ys - top : ye - top, xs - left : xe - left]
    return out, geometry


def preprocess_image(image: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """Original H x W float image in [0, 1] -> (3 x 224 x 224 float32 normalized, Geometry).

    The official pipeline reads 8-bit images and resizes them as uint8, so the image is quantized
    to 256 levels before and after the resize, as cv2 does.
    """
    if image.ndim != 2:
        raise ValueError(f"CARZero preprocessing takes a 2-D grey image, got shape {image.shape}")
    # float32 holds the 256 levels exactly; the resize accumulates in float64.
    levels = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
    levels = np.round(levels, out=levels)
    board, geometry = letterbox_area(levels)
    pixels = (np.round(board) / 255.0 - MEAN) / STD
    return np.repeat(pixels[None].astype(np.float32), 3, axis=0), geometry
