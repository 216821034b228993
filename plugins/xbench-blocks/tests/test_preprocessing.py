"""Shared preprocessing: squash + ImageNet statistics, and skimage's histogram equalization."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xbench_blocks.preprocessing import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    equalize_histogram,
    equalize_histogram_uint8,
    squash_imagenet,
)

from xbench_core import Geometry  # noqa: E402


def test_histogram_equalization_matches_skimage() -> None:
    # expected values from skimage.exposure.equalize_hist 0.26.0 on the same array
    image = np.array([[0, 0, 1, 2], [2, 2, 2, 3]], np.float64) / 3
    expected = np.array([[0.25, 0.25, 0.3541666667, 0.875], [0.875, 0.875, 0.875, 1.0]])
    np.testing.assert_allclose(equalize_histogram(image), expected, atol=1e-9)
    # invariant to a linear rescaling (the official loader feeds pixel_array / 255)
    rng = np.random.default_rng(3)
    values = rng.random((40, 30))
    np.testing.assert_allclose(equalize_histogram(values), equalize_histogram(values * 16.06))
    eight_bit = equalize_histogram_uint8(image)
    assert eight_bit.dtype == np.float32
    np.testing.assert_allclose(eight_bit, np.floor(255 * expected) / 255, atol=1e-6)


def test_squash_imagenet_shape_statistics_and_geometry() -> None:
    image = np.zeros((120, 100), np.float32)
    image[:, 50:] = 1.0
    pixels, geometry = squash_imagenet(image)
    assert tuple(pixels.shape) == (3, 224, 224) and pixels.dtype == torch.float32
    assert geometry == Geometry.squash((120, 100), (224, 224))
    for channel in range(3):
        white = (1.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        black = -IMAGENET_MEAN[channel] / IMAGENET_STD[channel]
        assert float(pixels[channel, 10, -1]) == pytest.approx(white, abs=1e-5)
        assert float(pixels[channel, 10, 0]) == pytest.approx(black, abs=1e-5)
    small, geometry = squash_imagenet(image, (32, 48))
    assert tuple(small.shape) == (3, 32, 48) and geometry.input_size == (32, 48)
    with pytest.raises(ValueError, match="gray H x W"):
        squash_imagenet(np.zeros((4, 4, 3), np.float32))


def test_equalize_spreads_a_skewed_ramp() -> None:
    ramp = np.tile(np.linspace(0, 1, 100, dtype=np.float32) ** 3, (80, 1))
    plain, _ = squash_imagenet(ramp)
    equalized, _ = squash_imagenet(ramp, equalize=True)
    gray = equalized[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert 0.4 < float((gray > 0.5).float().mean()) < 0.6
    assert float((plain[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0] > 0.5).float().mean()) < 0.25
