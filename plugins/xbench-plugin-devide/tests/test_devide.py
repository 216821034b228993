"""Tests of the DeViDe plugin: the paper-built architecture, its single checkpoint key table,
preprocessing size, the projection head and gradients. What DeViDe shares with KAD (KAD's official
PIL transform, the phrase table, query encoding, score and the last or mean map) is tested in
tests/test_knowledge.py.

There is no official DeViDe listing: the parts DeViDe shares with KAD are checked against KAD's
official listings, the ViT against Hugging Face's ViTModel (keys in the transformers 4.x layout of
google/vit-base-patch16-224-in21k, and numerically). Most tests use a tiny local BERT (generated
vocabulary, no download).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from xbench_blocks.text import write_bert_folder
from xbench_plugin_devide import SPEC
from xbench_plugin_devide import model as devide_model
from xbench_plugin_devide.model import CHECKPOINT_KEYS, to_checkpoint_layout, tokens_to_grid

from xbench_core import AssetError, CheckpointError, ConfigError
from xbench_core.testing import (
    ModelPluginTests,
    compare_with_key_listing,
    encode_queries,
    forward,
    reference,
    save_official_checkpoint,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("tiny-bert"), hidden_size=32)


@pytest.fixture(scope="module")
def small_model(tiny_bert):
    """Full-size ViT and decoder, tiny text encoder, random weights."""
    return SPEC.build(checkpoint="random", text_encoder=str(tiny_bert))


def pixels_224(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def save_layout(state: dict, path, extra: dict | None = None):
    """Save a state_dict the way CHECKPOINT_KEYS says a checkpoint holds it."""
    layout = to_checkpoint_layout(state)
    top = layout.pop(None, {})
    return save_official_checkpoint(top, path, extra={**layout, **(extra or {})})


# --------------------------------------------------------------------------------------------------
class TestDeViDeConformance(ModelPluginTests):
    name = "devide"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, small_model):
        return small_model


def test_spec_says_the_architecture_is_unverified():
    spec = SPEC
    assert spec.map_kind == "cross_attention"
    assert "paper" in spec.note and "not been checked against released weights" in spec.note
    assert {o.name for o in spec.options} == {"checkpoint", "text_encoder", "attention_layers"}
    with pytest.raises(ConfigError, match="last, mean"):
        SPEC.build(checkpoint="random", attention_layers="first")


# ---- architecture ---------------------------------------------------------------------------------
def test_parts_shared_with_kad_match_kad_official_listings():
    model = SPEC.build(checkpoint="random")  # full-size Med-KEBERT shape, generated vocabulary
    assert model.random_weights and len(model.tokenizer) == 30522
    text = model.module.text_encoder.state_dict()
    assert compare_with_key_listing(
        text, reference("checkpoint-keys", "kad_text_encoder.json")
    ) == ([], [], [])
    fusion = model.module.fusion.state_dict()
    missing, unexpected, shapes = compare_with_key_listing(
        fusion, reference("checkpoint-keys", "kad_model.json")
    )
    assert (missing, shapes) == ([], []) and unexpected == ["projection.bias", "projection.weight"]
    assert tuple(fusion["projection.weight"].shape) == (768, 768)


def hf_name(key: str) -> str:
    """Our (transformers 4.x) ViT key -> transformers 5's ViTModel key."""
    for old, new in (("encoder.layer.", "layers."), ("attention.attention.query", "attention.q_proj"),
                     ("attention.attention.key", "attention.k_proj"),
                     ("attention.attention.value", "attention.v_proj"),
                     ("attention.output.dense", "attention.o_proj"), ("intermediate.dense", "mlp.fc1"),
                     ("output.dense", "mlp.fc2")):  # fmt: skip
        key = key.replace(old, new)
    return key


def test_vit_has_in21k_layout_and_matches_transformers_vit(small_model):
    from transformers import ViTConfig, ViTModel

    encoder = small_model.module.image_encoder
    ours = {k.removeprefix("vit."): v for k, v in encoder.state_dict().items()}
    assert "encoder.layer.11.attention.attention.query.weight" in ours
    assert tuple(ours["embeddings.position_embeddings"].shape) == (1, 197, 768)
    with torch.device("meta"):  # allocated, then filled with our weights: no slow initialisation
        theirs = ViTModel(ViTConfig(), add_pooling_layer=True)  # ViT-B/16 224 defaults
    theirs = theirs.to_empty(device="cpu").eval()
    assert set(theirs.state_dict()) == {hf_name(k) for k in ours}
    theirs.load_state_dict({hf_name(k): v for k, v in ours.items()}, strict=True)
    x = pixels_224(1)
    with torch.no_grad():
        out = theirs(pixel_values=x)
        torch.testing.assert_close(encoder(x), out.last_hidden_state[:, 1:])
        pooled = torch.tanh(encoder.vit.pooler.dense(encoder.vit(x)[:, 0]))
        torch.testing.assert_close(pooled, out.pooler_output)


def test_tokens_to_grid_is_row_major_without_class_token():
    tokens = torch.arange(197, dtype=torch.float32).view(1, 197, 1).expand(2, 197, 3)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 3, 14, 14)
    assert float(grid[1, 2, 0, 0]) == 1.0 and float(grid[0, 0, 2, 5]) == 1 + 2 * 14 + 5


# ---- checkpoint (through the one key table) -----------------------------------------------------
@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    source = SPEC.build(checkpoint="random", text_encoder=str(tiny_bert))
    with torch.no_grad():  # cheap, and no fresh random model has these values
        for i, p in enumerate(source.module.parameters()):
            p.mul_(1.0 + 0.01 * (i % 7 + 1)).add_(0.001 * (i % 5 + 1))
    path = tmp_path_factory.mktemp("ckpt") / "devide.pt"
    state = source.module.state_dict()
    state_with_old_buffer = {
        **state,
        "text_encoder.bert_model.embeddings.position_ids": torch.arange(512)[None],
    }
    save_layout(state_with_old_buffer, path, extra={"optimizer": {"state": {}}, "epoch": 7})
    return source, path


def test_checkpoint_round_trip_is_exact(saved, tiny_bert, small_model):
    source, path = saved
    raw = torch.load(path, weights_only=True)
    assert {"image_encoder", "text_encoder", "model"} <= set(raw)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in raw["image_encoder"]
    loaded = SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))
    assert not loaded.random_weights
    state = loaded.module.state_dict()
    for key, value in source.module.state_dict().items():
        assert torch.equal(state[key], value), key
    pixels = pixels_224(1)
    with torch.inference_mode():
        before = source.forward(pixels, source.encode_queries(["pneumonia", "edema"]))
        after = loaded.forward(pixels, loaded.encode_queries(["pneumonia", "edema"]))
        fresh = small_model.forward(pixels, small_model.encode_queries(["pneumonia", "edema"]))
    torch.testing.assert_close(after.scores, before.scores, rtol=0, atol=0)
    torch.testing.assert_close(after.maps["cross_attention"], before.maps["cross_attention"])
    torch.testing.assert_close(after.extras["projected"], before.extras["projected"])
    assert not torch.allclose(fresh.scores, after.scores)


def test_adapting_to_another_layout_is_a_table_edit(saved, tiny_bert, tmp_path, monkeypatch):
    # e.g. a flat DataParallel state_dict: only CHECKPOINT_KEYS changes.
    source, _ = saved
    flat = {"image_encoder.": (None, "module.visual."), "text_encoder.": (None, "module.text."),
            "fusion.": (None, "module.tqn.")}  # fmt: skip
    monkeypatch.setattr(devide_model, "CHECKPOINT_KEYS", flat)
    path = save_layout(source.module.state_dict(), tmp_path / "flat.pth")
    assert "module.visual.vit.layernorm.weight" in torch.load(path, weights_only=True)
    loaded = SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))
    torch.testing.assert_close(
        loaded.module.fusion.projection.weight, source.module.fusion.projection.weight
    )
    # A key the table does not claim is reported, not ignored.
    partial = {
        "module.tqn.mlp_head.0.bias": torch.zeros(2),
        "module.unknown.weight": torch.zeros(2),
    }
    path = save_official_checkpoint(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"/module\.unknown\.weight"):
        SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))


def test_corrupted_checkpoint_lists_offending_keys(saved, tiny_bert, tmp_path):
    source, _ = saved
    state = dict(source.module.state_dict())
    del state["fusion.mlp_head.0.bias"]
    state["fusion.projection.weight"] = torch.zeros(256, 768)
    path = save_layout(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as info:
        SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))
    message = str(info.value)
    assert "fusion.mlp_head.0.bias" in message
    assert (
        "fusion.projection.weight: model expects (768, 768), checkpoint has (256, 768)" in message
    )


def test_missing_checkpoint_says_it_is_not_public(tmp_path, monkeypatch):
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("XBENCH_DEVIDE_CHECKPOINT", raising=False)
    with pytest.raises(AssetError, match="not public"):
        SPEC.build()


def test_key_table_covers_every_module_key(small_model):
    state = small_model.module.state_dict()
    layout = to_checkpoint_layout(state)
    assert sum(len(v) for v in layout.values()) == len(state)
    assert set(CHECKPOINT_KEYS) == {"image_encoder.", "text_encoder.", "fusion."}


# ---- preprocessing ------------------------------------------------------------------------------
def test_preprocess_squashes_to_224(small_model):
    gray = np.random.default_rng(0).random((300, 260), dtype=np.float32)
    pixels, geometry = small_model.preprocess(gray)
    assert pixels.shape == (3, 224, 224) and geometry.input_size == (224, 224)
    assert geometry.scale == pytest.approx((224 / 300, 224 / 260))


# ---- projection, gradients ----------------------------------------------------------------------
def test_projection_head_gives_unit_vectors_and_14x14_maps(small_model):
    pixels = pixels_224(1)
    with torch.inference_mode():
        queries = small_model.encode_queries(["pneumonia", "nodule"])
        out = small_model.forward(pixels, queries)
        _, _, features = small_model.module(pixels, queries)
        projection = small_model.module.fusion.projection
        expected = torch.nn.functional.normalize(projection(features), dim=-1)
    assert out.maps["cross_attention"].shape == (1, 2, 14, 14)
    torch.testing.assert_close(out.extras["projected"], expected)
    norms = out.extras["projected"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_logits_are_differentiable_and_match_scores(small_model):
    pixels = pixels_224(1).requires_grad_(True)
    queries = encode_queries(small_model, ["pneumonia", "pneumothorax"])
    scores = forward(small_model, pixels.detach(), queries).scores
    layer = small_model.feature_layer()
    grabbed = {}
    handle = layer.module.register_forward_hook(lambda m, i, o: grabbed.setdefault("out", o))
    try:
        logits = small_model.logits(pixels, queries)
        (token_grad,) = torch.autograd.grad(logits[:, 1].sum(), grabbed["out"])
        grid, grad = layer.to_grid(grabbed["out"]), layer.to_grid(token_grad)
    finally:
        handle.remove()
    assert logits.shape == (1, 2) and grid.shape == grad.shape == (1, 768, 14, 14)
    torch.testing.assert_close(torch.sigmoid(logits.detach()), scores, rtol=1e-4, atol=1e-5)
    assert float(grad.abs().sum()) > 0


@pytest.mark.slow  # CPU bf16 is emulated and slow; the decoder's autocast path is also tested by KAD
def test_checkpoint_keys_documented_in_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "CHECKPOINT_KEYS" in readme and "not been checked against released weights" in readme
    json.dumps(CHECKPOINT_KEYS)  # a plain table
