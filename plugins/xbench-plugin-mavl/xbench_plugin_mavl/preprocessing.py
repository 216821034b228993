"""MAVL's image preprocessing (identical to MedKLIP's): squash to 224 x 224 (bilinear), gray to
three channels, ImageNet statistics; optionally the histogram equalization of the official RSNA
loader.

Official: Zero-shot_grounding/dataset/dataset.py, `RSNA2018_Dataset` (and the SIIM and COVID
loaders without the equalization):
`transforms.Resize([224, 224])` on a PIL RGB image, `ToTensor()`, `Normalize((0.485, 0.456,
0.406), (0.229, 0.224, 0.225))`; `read_dcm` does `pixel_array / 255` -> `skimage.exposure.
equalize_hist` -> `(255 * img).astype(np.uint8)` before that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xbench_core import Geometry, squash

INPUT_SIZE = (224, 224)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def equalize_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """skimage.exposure.equalize_hist for a float image, in numpy: the cumulative histogram over
    `bins` equal bins between the image's minimum and maximum, read at each pixel by linear
    interpolation between bin centers. Returns float64 in [0, 1]."""
    values = np.asarray(image, dtype=np.float64)
    counts, edges = np.histogram(values.ravel(), bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2.0
    cdf = counts.cumsum() / float(counts.sum())
    return np.interp(values.ravel(), centers, cdf).reshape(values.shape)


def official_equalization(image: np.ndarray) -> np.ndarray:
    """The RSNA loader's equalization, then its cast to 8 bits (truncation), back in [0, 1].

    Equalization depends only on the rank of each value between the image's extremes, so applying
    it to XBench's [0, 1] image equals applying it to `pixel_array / 255` for a linear LUT.
    """
    equalized = equalize_histogram(image)
    return ((255.0 * equalized).astype(np.uint8).astype(np.float32)) / 255.0


def preprocess_image(image: np.ndarray, *, equalize: bool = False) -> tuple[Any, Geometry]:
    """Original H x W float32 [0, 1] -> (3 x 224 x 224 float32 tensor, its squash Geometry)."""
    import torch

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a gray H x W image, got shape {image.shape}")
    if equalize:
        image = official_equalization(image)
    resized, geometry = squash(image, INPUT_SIZE, "bilinear")
    gray = torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (gray.unsqueeze(0).expand(3, -1, -1) - mean) / std, geometry
