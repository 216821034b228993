"""Shared image preprocessing: a gray image squashed to a fixed size, repeated to three channels
and normalized with ImageNet statistics, optionally after the histogram equalization of MedKLIP's
and MAVL's official RSNA loader.

Official (MedKLIP: Sample_Zero-Shot_Grounding_RSNA/dataset/dataset_RSNA.py; MAVL:
Zero-shot_grounding/dataset/dataset.py, `RSNA2018_Dataset`, and the SIIM and COVID loaders without
the equalization): `transforms.Resize([224, 224])` on a PIL RGB image, `ToTensor()`,
`Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))`; `read_dcm` does `pixel_array / 255` ->
`skimage.exposure.equalize_hist` -> `(255 * img).astype(np.uint8)` before that.

Public (through `xbench_core`): `IMAGENET_MEAN`, `IMAGENET_STD`, `equalize_histogram`,
`equalize_histogram_uint8`, `squash_imagenet`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xbench_core import Geometry
from xbench_core.geometry import squash

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def equalize_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """skimage.exposure.equalize_hist for a float image, in numpy: the cumulative histogram over
    `bins` equal bins between the image's minimum and maximum, read at each pixel by linear
    interpolation between bin centers. Returns float64 in [0, 1]."""
    values = np.asarray(image, dtype=np.float64)
    counts, edges = np.histogram(values.ravel(), bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2.0
    cdf = counts.cumsum() / float(counts.sum())
    return np.interp(values.ravel(), centers, cdf).reshape(values.shape)


def equalize_histogram_uint8(image: np.ndarray) -> np.ndarray:
    """The official RSNA loader's equalization, then its cast to 8 bits (truncation), back in
    [0, 1] as float32.

    Equalization depends only on the rank of each value between the image's extremes, so applying
    it to XBench's [0, 1] image equals applying it to `pixel_array / 255` for a linear LUT.
    """
    equalized = equalize_histogram(image)
    return ((255.0 * equalized).astype(np.uint8).astype(np.float32)) / 255.0


def squash_imagenet(
    image: np.ndarray,
    size: tuple[int, int] = (224, 224),
    *,
    equalize: bool = False,
    interpolation: str = "bilinear",
) -> tuple[Any, Geometry]:
    """Gray H x W float32 [0, 1] -> (3 x size float32 tensor with ImageNet statistics, its squash
    Geometry); with `equalize`, `equalize_histogram_uint8` first."""
    import torch

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a gray H x W image, got shape {image.shape}")
    if equalize:
        image = equalize_histogram_uint8(image)
    resized, geometry = squash(image, size, interpolation)
    gray = torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (gray.unsqueeze(0).expand(3, -1, -1) - mean) / std, geometry
