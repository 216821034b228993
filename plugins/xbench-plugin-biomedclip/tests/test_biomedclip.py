"""Tests of the BiomedCLIP plugin: the full-size architecture with random weights and a generated
vocabulary (no download), plus tiny open_clip configs with a tiny local BERT for the loader's paths.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from xbench_blocks.text import generated_vocabulary, write_bert_folder
from xbench_plugin_biomedclip.loading import OPEN_CLIP_CONFIG, POSITION_IDS

from xbench_core import AssetError, CheckpointError, ConfigError, get_registry
from xbench_core.testing import (
    ModelPluginTests,
    compare_with_key_listing,
    hub_offline,  # noqa: F401 - autouse: nothing here downloads
    perturbed,
    random_images,
    reference,
    save_official_checkpoint,
    with_weights,
)

ENSEMBLE = ["{finding}", "a chest x-ray showing {finding}"]


def build(**options):
    return get_registry().models["biomedclip"].build(**options)


@pytest.fixture(scope="module")
def biomed():
    return build(checkpoint="random")


def tiny_config(text_folder):
    """The released open_clip_config.json with a tiny ViT and a local BERT."""
    config = copy.deepcopy(OPEN_CLIP_CONFIG)
    config["model_cfg"]["embed_dim"] = 32
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_tiny_patch16_224"
    text = config["model_cfg"]["text_cfg"]
    text["hf_model_name"] = text["hf_tokenizer_name"] = str(text_folder)
    return config


def tiny_checkpoint(root, seed=3):
    """A tiny BiomedCLIP-layout folder (open_clip_config.json + a plain pickled state_dict with the
    stale position_ids buffer, as in the release) and a tiny local BERT folder for text_encoder.
    Returns (checkpoint folder, text folder, the weights saved)."""
    import open_clip

    text = write_bert_folder(root / "bert", extra_words=["chest", "showing"])
    folder = root / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(tiny_config(text)))
    module = open_clip.create_model(
        f"local-dir:{folder}", load_weights=False, pretrained_text=False
    )
    weights = perturbed(module.state_dict(), seed=seed)
    stored = {**weights, POSITION_IDS: torch.arange(512)[None]}
    save_official_checkpoint(stored, folder / "open_clip_pytorch_model.bin")
    return folder, text, weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, text, weights = tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    model = build(checkpoint=str(folder), text_encoder=str(text), templates=ENSEMBLE)
    return model, weights


# ---- conformance -----------------------------------------------------------------------------------
class TestBiomedCLIP(ModelPluginTests):
    """The suite at full size and on the tiny config with a prompt ensemble (the ensemble path)."""

    name = "biomedclip"
    bf16_map_atol = 0.1

    @pytest.fixture(scope="class", params=["biomed", "tiny"])
    @classmethod
    def model(cls, request):
        model = request.getfixturevalue(request.param)
        return model[0] if request.param == "tiny" else model


# ---- architecture ----------------------------------------------------------------------------------
def test_state_dict_matches_official_listing(biomed):
    state_dict = biomed.module.state_dict()
    missing, unexpected, shapes = compare_with_key_listing(
        state_dict, reference("checkpoint-keys", "biomedclip.json")
    )
    assert (missing, unexpected, shapes) == ([], [], [])
    assert len(state_dict) == 351 and POSITION_IDS not in state_dict


def test_random_build_is_offline_with_a_generated_vocabulary(biomed):
    assert biomed.random_weights and biomed.checkpoint is None
    text = biomed.module.text
    # the text config came from a local folder, not from the Hub id of the release
    assert "microsoft/" not in str(text.config._name_or_path)
    assert text.config.vocab_size == 30522 and text.transformer.config.num_hidden_layers == 12
    tokenizer = biomed.tokenizer.tokenizer
    vocab = generated_vocabulary(30522)
    assert tokenizer.vocab_size == 30522
    ids = biomed.tokenizer(["pleural effusion"])[0]
    assert ids.shape == (256,)
    words = tokenizer.convert_ids_to_tokens(ids[:4].tolist())
    assert words == ["[CLS]", "pleural", "effusion", "[SEP]"]
    assert ids[1] == vocab.index("pleural") and int(ids[4:].abs().sum()) == 0  # padded with [PAD]=0
    # the timm trunk is ViT-B/16 with GELU and LayerNorm eps 1e-6; 12 blocks, 14 x 14 patches
    trunk = biomed.module.visual.trunk
    assert len(trunk.blocks) == 12 and biomed.grid == (14, 14)
    assert isinstance(trunk.blocks[0].mlp.act, torch.nn.GELU) and trunk.norm.eps == 1e-6


# ---- checkpoints -----------------------------------------------------------------------------------
def test_full_size_pickle_round_trip_with_position_ids(biomed, tmp_path):
    """The release's container: a plain pickled state_dict holding the stale position_ids buffer,
    in a folder with vocab.txt (as on the Hub)."""
    weights = perturbed(biomed.module.state_dict())
    stored = {**weights, POSITION_IDS: torch.arange(512)[None]}
    save_official_checkpoint(stored, tmp_path / "open_clip_pytorch_model.bin")
    del stored
    (tmp_path / "vocab.txt").write_text("\n".join(generated_vocabulary(30522)) + "\n")
    loaded = build(checkpoint=str(tmp_path))
    assert not loaded.random_weights
    assert loaded.checkpoint == (tmp_path / "open_clip_pytorch_model.bin").resolve()
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, weights[key]), key
    reference_model = with_weights(biomed, weights)
    del weights
    pixels = random_images(biomed, 1)
    with torch.inference_mode():
        ref = reference_model.forward(pixels, reference_model.encode_queries(["pneumonia"]))
        new = loaded.forward(pixels, loaded.encode_queries(["pneumonia"]))
    torch.testing.assert_close(new.scores, ref.scores, rtol=0, atol=0)
    torch.testing.assert_close(new.maps["similarity"], ref.maps["similarity"], rtol=0, atol=0)


def test_tiny_folder_loads_config_text_encoder_and_weights(tiny):
    model, weights = tiny
    assert not model.random_weights
    assert model.module.visual.trunk.embed_dim == 192  # the folder's config, not the embedded one
    assert model.module.text.transformer.config.hidden_size == 32  # the text_encoder folder
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_corrupted_checkpoint_lists_offending_keys(tmp_path):
    folder, text, weights = tiny_checkpoint(tmp_path)
    del weights["text.proj.2.weight"]
    weights["visual.head.proj.weight"] = torch.zeros(16, 192)
    weights["visual.trunk.extra.weight"] = torch.zeros(2)
    save_official_checkpoint(weights, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError) as info:
        build(checkpoint=str(folder), text_encoder=str(text))
    message = str(info.value)
    assert "text.proj.2.weight" in message and "visual.trunk.extra.weight" in message
    assert "visual.head.proj.weight" in message and "(32, 192)" in message
    assert "(16, 192)" in message and "open_clip_pytorch_model.bin" in message


def test_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XBENCH_BIOMEDCLIP_CHECKPOINT", raising=False)
    with pytest.raises(AssetError) as info:
        build()  # the default Hub file, offline and not cached
    assert "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in str(info.value)
    assert "XBENCH_BIOMEDCLIP_CHECKPOINT" in str(info.value)
    with pytest.raises(AssetError, match="does not exist"):
        build(checkpoint=str(tmp_path / "missing.bin"))
    # a bare weights file without vocab.txt beside it needs the vocabulary from somewhere
    bare = tmp_path / "bare"
    bare.mkdir()
    save_official_checkpoint({"logit_scale": torch.tensor(1.0)}, bare / "weights.bin")
    with pytest.raises(AssetError, match="text_encoder"):
        build(checkpoint=str(bare / "weights.bin"))
    with pytest.raises(AssetError, match="neither config.json nor vocab.txt"):
        build(checkpoint="random", text_encoder=str(bare))
    with pytest.raises(ConfigError, match="lacks"):
        build(checkpoint="random", templates=["{finding}", "no finding here"])


# ---- the similarity map and the score, by hand -----------------------------------------------------
def _prompt_embedding(model, text):
    with torch.no_grad():
        return F.normalize(model.module.encode_text(model.tokenizer([text])), dim=-1)[0]


def test_map_and_score_by_hand(biomed):
    visual = biomed.module.visual
    layer = biomed.feature_layer()
    assert layer.module is visual.trunk.blocks[-1].norm1  # its patch tokens reach the class token
    seen = {}
    hooks = [
        visual.trunk.norm.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o)),
        visual.trunk.blocks[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("block", o)),
    ]
    pixels = random_images(biomed, 1, seed=3)
    try:
        with torch.inference_mode():
            out = biomed.forward(pixels, biomed.encode_queries(["pneumothorax"]))
    finally:
        for hook in hooks:
            hook.remove()
    # the prompts through the full 256-token padded batch, as open_clip tokenizes them
    pos = _prompt_embedding(biomed, "pneumothorax")
    neg = _prompt_embedding(biomed, "no pneumothorax")
    with torch.no_grad():
        tokens = seen["tokens"]  # [1, 197, 768] after trunk.norm
        patches = torch.einsum("bnw,dw->bnd", tokens[:, 1:], visual.head.proj.weight)
        patches = patches / patches.norm(dim=-1, keepdim=True)
        expected = torch.einsum("bnd,d->bn", patches, pos).reshape(1, 14, 14)
        image = tokens[:, 0] @ visual.head.proj.weight.T
        image = image / image.norm(dim=-1, keepdim=True)
        scale = biomed.module.logit_scale.exp()
        s_pos, s_neg = scale * (image @ pos), scale * (image @ neg)
        expected_score = torch.exp(s_pos) / (torch.exp(s_pos) + torch.exp(s_neg))
        normalized = visual.trunk.norm(layer.to_grid(seen["block"]).flatten(2).transpose(1, 2))
    torch.testing.assert_close(out.maps["similarity"][:, 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.scores[:, 0], expected_score, rtol=1e-4, atol=1e-5)
    # the feature layer is the block that trunk.norm normalizes, on the 14 x 14 grid, row-major
    assert layer.to_grid(seen["block"]).shape == (1, 768, 14, 14)
    torch.testing.assert_close(normalized, tokens[:, 1:], rtol=1e-5, atol=1e-5)


def test_prompt_ensemble_and_padding_trim(tiny):
    model, _ = tiny
    with torch.inference_mode():
        q = model.encode_queries(["pneumothorax", "rib_fracture"])
    assert q.positive_prompts[1] == ("rib fracture", "a chest x-ray showing rib fracture")
    assert q.negative_prompts[0] == ("no pneumothorax",)
    parts = torch.stack([_prompt_embedding(model, p) for p in q.positive_prompts[1]])
    torch.testing.assert_close(q.positive[1], F.normalize(parts.mean(dim=0), dim=-1))
    torch.testing.assert_close(q.negative[0], _prompt_embedding(model, "no pneumothorax"))


# ---- preprocessing -------------------------------------------------------------------------------
def test_preprocess_matches_open_clip_transform(biomed):
    from open_clip import image_transform
    from PIL import Image

    yy, xx = np.mgrid[0:240, 0:333]
    gray = 0.5 + 0.3 * np.sin(yy / 15.0) * np.cos(xx / 21.0)
    gray = (np.round(gray * 255) / 255).astype(np.float32)
    ours, geometry = biomed.preprocess(gray)
    rgb = Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB")
    theirs = image_transform(224, is_train=False, mean=biomed.mean.ravel().tolist(),
                             std=biomed.std.ravel().tolist())(rgb)  # fmt: skip
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert float((ours - theirs).abs().mean()) < 0.01
    assert geometry.input_size == (224, 224) and geometry.offset[0] == 0


def test_feature_layer_patch_tokens_reach_the_logits(biomed):
    """Every patch token of the feature layer has a gradient: CAMs there are not blank."""
    from xbench_core.testing import feature_grid_gradient

    per_patch = feature_grid_gradient(biomed, random_images(biomed, 1), ["pneumothorax"])
    assert per_patch.shape == (1, 14, 14) and bool((per_patch > 0).all())
