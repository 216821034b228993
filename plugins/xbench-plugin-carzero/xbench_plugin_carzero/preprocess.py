"""CARZero's image preprocessing: letterbox to 256 with cv2 INTER_AREA, center crop 224, CXR_MAE norm.

Followed: laihaoran/CARZero (fa4e09c)
- `CARZeroDQNWOSAGLMLP.process_img` / `_resize_img`: 8-bit grey image (cv2.imread(path, 0)), the
  longest side resized to 256 with `cv2.INTER_AREA` (short side `int(side * 256 / longest)`), zero
  padding centered (floor before, ceil after), PIL RGB (grey copied to 3 channels);
- `CARZero/builder.py`, `build_transformation(split="test")`: CenterCrop(224), ToTensor,
  Normalize(mean=[0.4978], std=[0.2449]) ("CXR_MAE").

The letterbox (resize factors, padding, crop offsets, and exact area averaging, which is what
cv2.INTER_AREA computes) is the core's `letterbox_crop(..., method="area")`, which matches
`_resize_img` and torchvision's CenterCrop arithmetic.
"""

from __future__ import annotations

import numpy as np

from xbench_core import Geometry
from xbench_core.geometry import letterbox_crop

CANVAS = 256  # data.image.imsize
CROP = 224  # transforms.random_crop.crop_size (CenterCrop at test time)
MEAN = 0.4978  # transforms.norm "CXR_MAE"
STD = 0.2449


def preprocess_image(image: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """Original H x W float image in [0, 1] -> (3 x 224 x 224 float32 normalized, Geometry).

    The official pipeline reads 8-bit images and resizes them as uint8, so the image is quantized
    to 256 levels before and after the resize, as cv2 does.
    """
    if image.ndim != 2:
        raise ValueError(f"CARZero preprocessing takes a 2-D grey image, got shape {image.shape}")
    # float32 holds the 256 levels exactly; the resize accumulates in float64.
    levels = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)  # a new array: scaled in place
    levels = np.round(np.multiply(levels, np.float32(255.0), out=levels), out=levels)
    board, geometry = letterbox_crop(levels, CANVAS, CROP, method="area")
    pixels = (np.round(board) / 255.0 - MEAN) / STD
    return np.repeat(pixels[None].astype(np.float32), 3, axis=0), geometry
