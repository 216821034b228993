"""Test support for the plugins of entity-book models (`fusion.EntityQueryModel`: MedKLIP, MAVL):
`EntityQueryModelTests`, the core's model suite plus the checks every such model shares, random
inputs, and a pickled config object whose unpickling would run code, as the official checkpoints
hold. Imports pytest: for test modules only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xbench_core import get_registry
from xbench_core.testing import (
    ModelPluginTests,
    compare_with_key_listing,
    encode_queries,
    random_images,
    reference,
)

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, squash_imagenet


def random_pixels(model: Any, n: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
    """n preprocessed random 120x100 images; with `size`, a smaller normalized input (the networks
    are convolutional up to the decoder, so the math checks hold on a coarser grid, at a fraction
    of the CPU time)."""
    if size is None:
        return random_images(model, n, seed, (120, 100))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((n, 3, size, size), dtype=np.float32))


UNPICKLED: list[str] = []


def _record_call(message: str) -> str:
    UNPICKLED.append(message)
    return message


class PickledConfig:
    """Stands for the pickled config objects of the releases: unpickling it runs code (appends
    to `UNPICKLED`), which a safe loader must not do."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_call, ("the checkpoint's pickled config was executed",))


class EntityQueryModelTests(ModelPluginTests):
    """`ModelPluginTests` plus the checks every entity-book model shares: the state dict against
    the official key listing `listing` (a file of reference/checkpoint-keys), ResNet-50 layer3 as
    the feature layer, the ImageNet squash, histogram equalization off by default, and the query
    book read back from the cache. `book` names the network's query-book buffer. The test module
    provides the fixtures `model` (random weights, full size), `home` (a private XBENCH_HOME,
    where `model` cached its queries) and `tiny_bert` (the text encoder `model` was built with)."""

    listing = ""
    book = ""

    def test_state_dict_matches_official_listing(self, model: Any) -> None:
        listing = reference("checkpoint-keys", self.listing)
        missing, unexpected, shapes = compare_with_key_listing(model.module.state_dict(), listing)
        assert (missing, unexpected, shapes) == ([], [], [])
        # Same order too (module creation order as in the official __init__).
        assert list(model.module.state_dict()) == list(json.loads(listing.read_text()))
        assert model.random_weights is True

    def test_feature_layer_is_layer3_and_carries_gradients(self, model: Any) -> None:
        layer = model.feature_layer()
        captured: dict[str, Any] = {}
        gradient: dict[str, Any] = {}
        handle = layer.module.register_forward_hook(
            lambda module, args, output: captured.setdefault("grid", layer.to_grid(output))
        )
        try:
            queries = encode_queries(model, ["pneumonia"])  # as the engine makes them, once a run
            value = model.logits(random_pixels(model, 1, size=96), queries)
            captured["grid"].register_hook(lambda g: gradient.setdefault("g", g))
            value.sum().backward()
        finally:
            handle.remove()
            model.module.zero_grad(set_to_none=True)
        assert tuple(captured["grid"].shape) == (1, 1024, 6, 6)  # 96 / 16
        assert float(gradient["g"].abs().sum()) > 0

    def test_preprocess_squash_and_normalization(self, model: Any) -> None:
        image = np.full((300, 200), 0.5, np.float32)
        image[:150] = 1.0  # top half white: squash keeps the half at row 112
        pixels, geometry = model.preprocess(image)
        assert tuple(pixels.shape) == (3, 224, 224) and pixels.dtype == torch.float32
        assert geometry.kind == "squash" and geometry.input_size == (224, 224)
        assert geometry.scale == (224 / 300, 224 / 200)
        for channel in range(3):
            assert float(pixels[channel, 0, 0]) == pytest.approx(
                (1.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
            )
            assert float(pixels[channel, -1, -1]) == pytest.approx(
                (0.5 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
            )

    def test_equalize_option_changes_the_input(self, model: Any) -> None:
        # the equalization itself: plugins/xbench-blocks/tests/test_preprocessing.py
        spec = get_registry().models[self.name]
        assert spec.option("equalize_hist").default is False and model.equalize_hist is False
        ramp = np.tile(np.linspace(0, 1, 100, dtype=np.float32) ** 3, (80, 1))
        plain, _ = model.preprocess(ramp)
        equalized, _ = squash_imagenet(ramp, equalize=True)
        assert not torch.allclose(plain, equalized)
        gray = equalized[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        # equalization spreads a skewed ramp: about half the pixels end up above 0.5
        assert 0.4 < float((gray > 0.5).float().mean()) < 0.6
        assert float((plain[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0] > 0.5).float().mean()) < 0.25

    def test_model_reuses_the_query_cache(self, model: Any, home: Path, tiny_bert: Path) -> None:
        # `model` already filled the cache for these texts and this encoder: a hit writes nothing
        queries = Path(home, "queries")
        before = {path: path.stat().st_mtime_ns for path in queries.glob("*.safetensors")}
        again = (
            get_registry().models[self.name].build(checkpoint="random", text_encoder=str(tiny_bert))
        )
        assert {path: path.stat().st_mtime_ns for path in queries.glob("*.safetensors")} == before
        assert torch.equal(getattr(again.module, self.book), getattr(model.module, self.book))
        assert any(queries.glob(f"{self.name}-*.safetensors"))

    @pytest.mark.slow
    def test_full_size_random_default_and_timing(self, tmp_path: Path, monkeypatch: Any) -> None:
        """checkpoint=random with nothing else: a generated Bio_ClinicalBERT-shaped BERT, no file."""
        monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
        spec = get_registry().models[self.name]
        torch.set_num_threads(2)
        start = time.perf_counter()
        model = spec.build(checkpoint="random")
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = spec.build(checkpoint="random")
        cached = time.perf_counter() - start
        book = getattr(model.module, self.book)
        assert torch.equal(book, getattr(again.module, self.book)) and book.shape[-1] == 768
        assert model.text_encoder.random and model.text_encoder.folder is None
        pixels = random_pixels(model, 8)
        queries = model.encode_queries(["pneumonia", "pleural_effusion", "pneumothorax"])
        with torch.inference_mode():
            model.forward(pixels[:1], queries)
            start = time.perf_counter()
            model.forward(pixels, queries)
            per_image = (time.perf_counter() - start) / 8
        print(
            f"\n{self.name}: build with query embedding {first:.1f} s, with the cache {cached:.1f} s, "
            f"forward {per_image:.3f} s per image at batch 8 ({torch.get_num_threads()} threads)"
        )
