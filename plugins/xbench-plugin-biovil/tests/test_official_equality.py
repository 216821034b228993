"""BioViL / BioViL-T of this plugin against Microsoft's own inference engine (hi-ml-multimodal).

Skipped unless the official package `health_multimodal` (PyPI: hi-ml-multimodal) imports. Its last
release (0.2.2) calls `tokenizer.batch_encode_plus`, which transformers 5 removed, so it runs in an
isolated environment beside transformers 4 (see the plugin README: torch 2.14.1, transformers
4.57.6, hi-ml-multimodal 0.2.2, this repository's core and plugin installed editable):

    python -m venv /tmp/biovil-env && /tmp/biovil-env/bin/pip install hi-ml-multimodal "transformers<5" pytest \
        -e . -e plugins/xbench-blocks -e plugins/xbench-plugin-biovil
    /tmp/biovil-env/bin/python -m pytest plugins/xbench-plugin-biovil/tests/test_official_equality.py -s

Random weights are made by the official classes (`ImageModel`, `CXRBertModel`), saved in the
released layout (the image state dict as `biovil[_t]_image_model_..._128.pt`, the text model with
`save_pretrained` as pytorch_model.bin + config.json of model type cxr-bert) and loaded back through
the plugin's own loader. The same PNG files go through the official engines (`load_image`, the
official transform, `get_projected_global_embedding`, `get_embeddings_from_prompt`,
`get_similarity_score_from_raw_data`, `get_similarity_map_from_raw_data`) and through the plugin.
Error = max |ours - official|; relative error = that over max |official| of the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

hm = pytest.importorskip(
    "health_multimodal", reason="the official hi-ml-multimodal package is not installed"
)

from health_multimodal.image import ImageInferenceEngine  # noqa: E402
from health_multimodal.image.data.io import load_image  # noqa: E402
from health_multimodal.image.data.transforms import create_chest_xray_transform_for_inference  # noqa: E402
from health_multimodal.image.model.model import ImageModel  # noqa: E402
from health_multimodal.image.model.types import ImageEncoderType  # noqa: E402
from health_multimodal.text.inference_engine import TextInferenceEngine  # noqa: E402
from health_multimodal.text.model import CXRBertModel, CXRBertTokenizer  # noqa: E402
from health_multimodal.text.model.configuration_cxrbert import CXRBertConfig  # noqa: E402
from health_multimodal.vlp import ImageTextInferenceEngine  # noqa: E402
from xbench_blocks.text import generated_vocabulary  # noqa: E402

from xbench_core import Phrase, get_registry  # noqa: E402
from xbench_core.grounding import to_eval_frame  # noqa: E402

RTOL = 1e-4
SIZES = [
    (1024, 1280),
    (640, 512),
    (600, 500),
]  # the first two: the crop is whole pixels in the original
PHRASES = [
    "Small left pleural effusion.",
    "Right apical pneumothorax",
    "Patchy opacity at the left base",
]
FIGURES: dict[str, dict[str, tuple[float, float]]] = {}


def record(variant: str, what: str, ours, official) -> float:
    ours = torch.as_tensor(np.asarray(ours, np.float64))
    official = torch.as_tensor(np.asarray(official, np.float64))
    assert ours.shape == official.shape, what
    err = float((ours - official).abs().max())
    rel = err / max(float(official.abs().max()), 1e-30)
    old = FIGURES.setdefault(variant, {}).get(what, (0.0, 0.0))
    FIGURES[variant][what] = (max(old[0], err), max(old[1], rel))
    return rel


def randomize_batchnorm(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Statistics and affine parameters that move every value (a BatchNorm at 0 / 1 hides errors)."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))
            bn.weight.data.copy_(1 + 0.1 * torch.randn(bn.weight.shape, generator=gen))
            bn.bias.data.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 80 + 60 * np.sin(yy / 37.0) * np.cos(xx / 53.0)  # some structure, plus noise
        levels = np.clip(smooth + rng.normal(0, 25, (h, w)), 3, 250).astype(
            np.uint8
        )  # not full range
        Image.fromarray(levels).save(folder / f"cxr{i}.png")
        out.append(folder / f"cxr{i}.png")
    return out


@pytest.fixture(scope="module", params=["biovil", "biovil-t"])
def pair(request, tmp_path_factory):
    """(variant, the official ImageTextInferenceEngine, our model on the same weights)."""
    variant = request.param
    folder = tmp_path_factory.mktemp(variant)
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    kind = (
        ImageEncoderType.RESNET50_MULTI_IMAGE
        if variant == "biovil-t"
        else ImageEncoderType.RESNET50
    )
    image_model = ImageModel(img_encoder_type=kind, joint_feature_size=128)
    with torch.no_grad():
        randomize_batchnorm(image_model, gen)
    image_model.eval()
    name = (
        "biovil_t_image_model_proj_size_128.pt"
        if variant == "biovil-t"
        else "biovil_image_resnet50_proj_size_128.pt"
    )
    torch.save(image_model.state_dict(), folder / name)

    text = folder / "text"
    vocab = generated_vocabulary(extra_words=[w for p in PHRASES for w in p.lower().split()])
    text.mkdir()
    (text / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = CXRBertTokenizer(vocab_file=str(text / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(text))
    config = CXRBertConfig(vocab_size=len(vocab), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, projection_size=128)  # fmt: skip
    text_model = CXRBertModel(config).eval()
    text_model.save_pretrained(
        str(text), safe_serialization=False
    )  # pytorch_model.bin, as released

    crop = 448 if variant == "biovil-t" else 480
    engine = ImageTextInferenceEngine(
        image_inference_engine=ImageInferenceEngine(
            image_model=image_model,
            transform=create_chest_xray_transform_for_inference(resize=512, center_crop_size=crop),
        ),
        text_inference_engine=TextInferenceEngine(tokenizer=tokenizer, text_model=text_model),
    )
    ours = (
        get_registry()
        .models["biovil"]
        .build(variant=variant, checkpoint=str(folder), text_encoder=str(text))
    )
    return variant, engine, ours


def our_input(model, path: Path):
    image = np.asarray(Image.open(path), np.float32) / 255.0  # what the core's decoder gives
    return model.preprocess(image)


def test_state_dict_layouts_match(pair) -> None:
    variant, engine, ours = pair
    official = engine.image_inference_engine.model.state_dict()
    mine = ours.module.image.state_dict()
    assert {k: tuple(v.shape) for k, v in official.items()} == {
        k: tuple(v.shape) for k, v in mine.items()
    }
    text = {
        k
        for k in engine.text_inference_engine.model.state_dict()
        if not k.startswith("cls.predictions.")
    }
    assert text == set(ours.module.text.state_dict())


def test_inputs_are_identical(pair, images) -> None:
    variant, engine, ours = pair
    transform = engine.image_inference_engine.transform
    for path in images:
        official = transform(load_image(path))
        pixels, _ = our_input(ours, path)
        assert torch.equal(pixels, official), path.name


def test_embeddings_scores_and_maps_equal_the_official_engine(pair, images) -> None:
    variant, engine, ours = pair
    image_engine, text_engine = engine.image_inference_engine, engine.text_inference_engine
    findings = ["pneumonia", "pleural_effusion", "cardiomegaly"]
    queries = ours.encode_queries(findings)
    phrases = ours.encode_phrases([Phrase(p, "pleural_effusion") for p in PHRASES])

    # text embeddings (unnormalized, as the engine gives them with normalize=False)
    prompts = [p for f in findings for side in ours._prompts(f) for p in side] + PHRASES
    official_text = text_engine.get_embeddings_from_prompt(prompts, normalize=False, verbose=False)
    assert record(variant, "text embedding", ours._encode_text(prompts), official_text) < RTOL

    for path in images:
        pixels, geometry = our_input(ours, path)
        with torch.no_grad():
            patches = ours.module.image(pixels[None])
            out = ours.forward(pixels[None], queries)
            grounding = ours.forward(pixels[None], phrases)
        glob = torch.nn.functional.normalize(patches.mean(dim=(2, 3)), dim=-1)[0]
        assert (
            record(
                variant,
                "global image embedding",
                glob,
                image_engine.get_projected_global_embedding(path),
            )
            < RTOL
        )
        official_patches, (width, height) = image_engine.get_projected_patch_embeddings(path)
        local = torch.nn.functional.normalize(patches, dim=1)[0].permute(1, 2, 0)
        assert record(variant, "patch embeddings", local, official_patches) < RTOL

        for f, finding in enumerate(findings):
            positive, negative = ours._prompts(finding)
            cos_pos = engine.get_similarity_score_from_raw_data(path, list(positive))
            cos_neg = engine.get_similarity_score_from_raw_data(path, list(negative))
            assert record(variant, "cosine score", out.extras["cos_positive"][0, f], cos_pos) < RTOL
            assert record(variant, "cosine score", out.extras["cos_negative"][0, f], cos_neg) < RTOL
            assert (
                record(
                    variant,
                    "score (2 + pos - neg) / 4",
                    out.scores[0, f],
                    (2 + cos_pos - cos_neg) / 4,
                )
                < RTOL
            )

        for c, phrase in enumerate(PHRASES):
            text = text_engine.get_embeddings_from_prompt(phrase, verbose=False)
            grid = engine._get_similarity_map_from_embeddings(official_patches, text)
            ours_grid = grounding.maps["similarity"][0, c]
            assert record(variant, "similarity map (patch grid)", ours_grid, grid) < RTOL
            full = engine.get_similarity_map_from_raw_data(path, phrase, interpolation="bilinear")
            ours_full = to_eval_frame(ours_grid[None].numpy(), geometry, (height, width))[0]
            inside = ~np.isnan(full)
            exact_crop = (
                min(height, width) * ours.crop % 512 == 0
            )  # official: int(crop * short / 512)
            what = (
                "similarity map (original frame, crop in whole pixels)"
                if exact_crop
                else ("similarity map (original frame, crop not in whole pixels)")
            )
            rel = record(variant, what, ours_full[inside], full[inside])
            if exact_crop:
                assert rel < RTOL


@pytest.fixture(scope="module", autouse=True)
def print_figures():  # noqa: ANN201
    """After this module's tests: the figures for the plugin README (run with -s)."""
    yield
    for variant, rows in FIGURES.items():
        print(f"\n{variant}: output | max abs error | max relative error")
        for what, (err, rel) in rows.items():
            print(f"  {what} | {err:.2e} | {rel:.2e}")
