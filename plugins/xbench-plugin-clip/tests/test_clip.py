"""Tests of the CLIP plugin: full-size open_clip architectures with random weights (no download).

One ViT-B-16 and one RN50 model are built per module and shared. The full-size ViT-B-16 round trip
writes a 600 MB safetensors file to a temporary folder; the loader's other paths (folders with an
open_clip config, pickles with OpenAI's extra entries, corrupted files, autocast) run on tiny
OpenAI-style configs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xbench_core import AssetError, CheckpointError, ConfigError, Geometry, get_registry
from xbench_core.io import read_image
from xbench_core.testing import (
    ModelPluginTests,
    compare_with_key_listing,
    hub_offline,  # noqa: F401 - autouse: nothing here downloads
    perturbed,
    random_images,
    realdata,
    reference,
    save_official_checkpoint,
    with_weights,
)

ENSEMBLE = ["{finding}", "a chest x-ray showing {finding}"]


def build(**options):
    return get_registry().models["clip"].build(**options)


@pytest.fixture(scope="module")
def vit():
    return build(checkpoint="random")


@pytest.fixture(scope="module")
def rn50():
    # Built with a prompt ensemble so that the ensemble path runs through the conformance suite.
    return build(checkpoint="random", variant="RN50", templates=ENSEMBLE)


def contiguous(state_dict):
    return {k: v.contiguous() for k, v in state_dict.items()}


# ---- conformance ---------------------------------------------------------------------------------
class TestCLIP(ModelPluginTests):
    name = "clip"
    bf16_map_atol = 0.1

    @pytest.fixture(scope="class", params=["vit", "rn50"])
    @classmethod
    def model(cls, request):
        return request.getfixturevalue(request.param)


# ---- architecture against the official key listings ----------------------------------------------
@pytest.mark.parametrize(
    ("fixture", "listing", "count"),
    [("vit", "clip_vit_b16.json", 302), ("rn50", "clip_rn50.json", 489)],
)
def test_state_dict_matches_official_listing(request, fixture, listing, count):
    state_dict = request.getfixturevalue(fixture).module.state_dict()
    missing, unexpected, shapes = compare_with_key_listing(
        state_dict, reference("checkpoint-keys", listing)
    )
    assert (missing, unexpected, shapes) == ([], [], [])
    assert len(state_dict) == count


def test_quick_gelu_in_both_towers(vit, rn50):
    from open_clip.transformer import QuickGELU

    for block in vit.module.visual.transformer.resblocks:
        assert isinstance(block.mlp.gelu, QuickGELU)
    for model in (vit, rn50):
        for block in model.module.transformer.resblocks:
            assert isinstance(block.mlp.gelu, QuickGELU)
    # and QuickGELU is what runs: x * sigmoid(1.702 x), not erf-GELU
    act = vit.module.visual.transformer.resblocks[0].mlp.gelu
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(act(x), x * torch.sigmoid(1.702 * x))
    assert not torch.allclose(act(x), F.gelu(x), atol=1e-3)


# ---- checkpoints ---------------------------------------------------------------------------------
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY = {
    "vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
        "text_cfg": TINY_TEXT,
    },
    "resnet": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
        "text_cfg": TINY_TEXT,
    },
}


def tiny_folder(folder, kind):
    """A folder in open_clip's `local-dir:` layout with a tiny OpenAI-style config (the test adds
    the weights). Returns the folder and a perturbed state_dict of that architecture."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY[kind]}))
    module = open_clip.create_model(
        f"local-dir:{folder}", load_weights=False, force_quick_gelu=True
    )
    return folder, perturbed(module.state_dict(), seed=3)


def test_full_size_safetensors_round_trip(vit, tmp_path):
    from safetensors.torch import save_file

    assert vit.random_weights and vit.checkpoint is None
    weights = perturbed(vit.module.state_dict())
    path = tmp_path / "open_clip_model.safetensors"
    save_file(contiguous(weights), str(path))
    loaded = build(checkpoint=str(path))
    assert not loaded.random_weights and loaded.checkpoint == path.resolve()
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, weights[key]), key
    reference_model = with_weights(vit, weights)
    del weights
    pixels = random_images(vit, 1)
    with torch.inference_mode():
        ref = reference_model.forward(pixels, reference_model.encode_queries(["pneumonia"]))
        new = loaded.forward(pixels, loaded.encode_queries(["pneumonia"]))
    torch.testing.assert_close(new.scores, ref.scores, rtol=0, atol=0)
    torch.testing.assert_close(new.maps["similarity"], ref.maps["similarity"], rtol=0, atol=0)


@pytest.mark.slow
def test_full_size_rn50_pickle_round_trip(rn50, tmp_path):
    weights = perturbed(rn50.module.state_dict(), seed=2)
    save_official_checkpoint(weights, tmp_path / "open_clip_pytorch_model.bin")
    loaded = build(checkpoint=str(tmp_path), variant="RN50", templates=ENSEMBLE)
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, weights[key]), key
    reference_model = with_weights(rn50, weights)
    pixels = random_images(rn50, 2)
    with torch.inference_mode():
        ref = reference_model.forward(pixels, reference_model.encode_queries(["mass"]))
        new = loaded.forward(pixels, loaded.encode_queries(["mass"]))
    torch.testing.assert_close(new.scores, ref.scores, rtol=0, atol=0)
    torch.testing.assert_close(new.maps["similarity"], ref.maps["similarity"], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_folder_with_config_and_pickle_with_jit_extras(tmp_path, kind):
    """A `local-dir:` folder (open_clip_config.json + open_clip_pytorch_model.bin) whose plain
    pickled state_dict also carries the OpenAI JIT archive's extra entries and a DataParallel
    prefix: both are dropped; BatchNorm's num_batches_tracked may be absent (OpenAI files have
    none). The architecture follows the folder's config, with QuickGELU forced on."""
    from open_clip.transformer import QuickGELU

    folder, weights = tiny_folder(tmp_path / "tiny", kind)
    stored = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    extras = {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    save_official_checkpoint(
        stored, folder / "open_clip_pytorch_model.bin", prefix="module.", extra=extras
    )
    loaded = build(checkpoint=str(folder), variant="RN50" if kind == "resnet" else "ViT-B-16")
    assert loaded.tower == kind and not loaded.random_weights
    assert isinstance(loaded.module.transformer.resblocks[0].mlp.gelu, QuickGELU)
    for key, value in loaded.module.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, weights[key]), key
    pixels = random_images(loaded, 2)
    with torch.inference_mode():
        out = loaded.forward(pixels, loaded.encode_queries(["mass", "edema"]))
    assert out.maps["similarity"].shape == (2, 2, 7, 7)
    assert torch.isfinite(out.scores).all()


def test_corrupted_checkpoint_lists_offending_keys(tmp_path):
    from safetensors.torch import save_file

    folder, weights = tiny_folder(tmp_path / "tiny", "vit")
    del weights["text_projection"]
    weights["visual.proj"] = torch.zeros(64, 16)
    weights["visual.extra_head.weight"] = torch.zeros(3)
    path = folder / "open_clip_model.safetensors"
    save_file(contiguous(weights), str(path))
    with pytest.raises(CheckpointError) as info:
        build(checkpoint=str(folder))
    message = str(info.value)
    assert "text_projection" in message
    assert "visual.proj" in message and "(64, 32)" in message and "(64, 16)" in message
    assert "visual.extra_head.weight" in message
    assert str(path) in message


def test_checkpoint_errors_say_what_to_do(tmp_path):
    with pytest.raises(AssetError, match="does not exist"):
        build(checkpoint=str(tmp_path / "nope.safetensors"))
    (tmp_path / "notes.txt").write_text("no weights here")
    with pytest.raises(CheckpointError, match="notes.txt"):
        build(checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match="lacks"):
        build(checkpoint="random", negative_template="absent")
    with pytest.raises(ConfigError, match="variant"):
        build(checkpoint="random", variant="ViT-L-14")
    with pytest.raises(ConfigError, match="positive_template"):
        build(checkpoint="random", positve_template="{finding}")


def test_hub_download_refused_offline_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("XBENCH_CLIP_CHECKPOINT", raising=False)
    with pytest.raises(AssetError) as info:
        build(variant="RN50")
    message = str(info.value)
    assert "timm/resnet50_clip.openai" in message and "XBENCH_CLIP_CHECKPOINT" in message


# ---- the similarity map and the score, by hand -----------------------------------------------------
def _prompt_embedding(model, text):
    tokens = model.tokenizer([text])
    with torch.no_grad():
        return F.normalize(model.module.encode_text(tokens), dim=-1)[0]


def test_vit_map_and_score_by_hand(vit):
    visual = vit.module.visual
    layer = vit.feature_layer()
    # the attention input of the last block: its patch tokens reach the pooled class token
    assert layer.module is visual.transformer.resblocks[-1].ln_1
    seen = {}
    hooks = [
        visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o)),
        visual.transformer.resblocks[-1].register_forward_hook(
            lambda m, i, o: seen.__setitem__("block", o)
        ),
    ]
    pixels = random_images(vit, 1, seed=3)
    try:
        with torch.inference_mode():
            out = vit.forward(pixels, vit.encode_queries(["pleural_effusion"]))
    finally:
        for hook in hooks:
            hook.remove()
    # to_grid on the last block's output, which ln_post normalizes, on the 14 x 14 grid
    grid = layer.to_grid(seen["block"])
    assert grid.shape == (1, 768, 14, 14)
    with torch.no_grad():
        normalized = visual.ln_post(grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(normalized, seen["tokens"][:, 1:], rtol=1e-5, atol=1e-5)
    pos = _prompt_embedding(vit, "pleural effusion")
    neg = _prompt_embedding(vit, "no pleural effusion")
    with torch.no_grad():
        tokens = seen["tokens"]  # [1, 197, 768] after ln_post
        patches = torch.einsum("bnw,wd->bnd", tokens[:, 1:], visual.proj)
        patches = patches / patches.norm(dim=-1, keepdim=True)
        expected = torch.einsum("bnd,d->bn", patches, pos).reshape(1, 14, 14)
        image = tokens[:, 0] @ visual.proj
        image = image / image.norm(dim=-1, keepdim=True)
        scale = vit.module.logit_scale.exp()
        s_pos, s_neg = scale * (image @ pos), scale * (image @ neg)
        expected_score = torch.exp(s_pos) / (torch.exp(s_pos) + torch.exp(s_neg))
    torch.testing.assert_close(out.maps["similarity"][:, 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.scores[:, 0], expected_score, rtol=1e-5, atol=1e-6)
    # row-major grid: map cell (r, c) is patch r * 14 + c
    torch.testing.assert_close(out.maps["similarity"][0, 0, 2, 5], expected.flatten()[2 * 14 + 5])


def test_rn50_maskclip_map_by_hand(rn50):
    visual = rn50.module.visual
    layer = rn50.feature_layer()
    assert layer.module is visual.layer4
    seen = {}
    hook = visual.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    pixels = random_images(rn50, 1, seed=4)
    try:
        with torch.inference_mode():
            queries = rn50.encode_queries(["cardiomegaly"])
            out = rn50.forward(pixels, queries)
    finally:
        hook.remove()
    assert layer.to_grid(seen["x"]).shape == (1, 2048, 7, 7)
    pool = visual.attnpool
    with torch.no_grad():
        x = seen["x"][0]  # [2048, 7, 7]
        positions = x.reshape(2048, 49).T + pool.positional_embedding[1:]
        value = positions @ pool.v_proj.weight.T + pool.v_proj.bias
        dense = value @ pool.c_proj.weight.T + pool.c_proj.bias  # [49, 1024]
        dense = dense / dense.norm(dim=-1, keepdim=True)
        expected = (dense @ queries.positive[0]).reshape(7, 7)
    torch.testing.assert_close(out.maps["similarity"][0, 0], expected, rtol=1e-4, atol=1e-5)


def test_vit_feature_layer_order():
    """The ViT reshape keeps patch order: grid[:, :, r, c] is token 1 + r * 14 + c."""
    from xbench_plugin_clip.model import _vit_tokens_to_grid

    tokens = torch.arange(2 * 197 * 3, dtype=torch.float32).reshape(2, 197, 3)
    grid = _vit_tokens_to_grid(tokens, (14, 14), batch_first=True)
    assert grid.shape == (2, 3, 14, 14)
    assert torch.equal(grid[1, :, 3, 4], tokens[1, 1 + 3 * 14 + 4])
    sequence_first = _vit_tokens_to_grid(tokens.transpose(0, 1), (14, 14), batch_first=False)
    assert torch.equal(sequence_first, grid)


# ---- preprocessing against open_clip's own transform ----------------------------------------------
def _open_clip_transform(gray):
    from open_clip import image_transform
    from PIL import Image

    rgb = Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB")
    return image_transform(224, is_train=False)(rgb)


def test_preprocess_matches_open_clip_transform(vit):
    rng = np.random.default_rng(8)
    # smooth content: white noise is where uint8 and float resampling differ most
    yy, xx = np.mgrid[0:311, 0:257]
    gray = 0.5 + 0.3 * np.sin(yy / 17.0) * np.cos(xx / 23.0) + 0.05 * rng.random((311, 257))
    gray = (np.round(gray * 255) / 255).astype(np.float32)
    ours, geometry = vit.preprocess(gray)
    theirs = _open_clip_transform(gray)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert float((ours - theirs).abs().max()) < 0.06
    assert float((ours - theirs).abs().mean()) < 0.01
    assert geometry == Geometry.shortest_side_crop((311, 257), 224, 224)
    # all three channels carry the same gray image, normalized per channel
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    gray_back = ours * std + mean
    torch.testing.assert_close(gray_back[0], gray_back[2], rtol=0, atol=1e-5)


def test_preprocess_real_chexpert_image(vit):
    image = read_image(realdata("chexlocalize", "p64541.jpg"))
    ours, geometry = vit.preprocess(image)
    h, w = image.shape
    assert geometry.original_size == (h, w) and geometry.input_size == (224, 224)
    # a landscape image: the height becomes 224 and the width is center-cropped
    assert h < w and geometry.offset[0] == 0 and geometry.offset[1] < 0
    resized_width = int(224 * w / h)  # torchvision truncates the long side
    assert geometry.scale == (224 / h, resized_width / w)
    assert geometry.offset == (0, -round((resized_width - 224) / 2))
    theirs = _open_clip_transform(image)
    assert float((ours - theirs).abs().mean()) < 0.01


def test_feature_layer_patch_tokens_reach_the_logits(vit):
    """Every patch token of the feature layer has a gradient: CAMs there are not blank."""
    from xbench_core.testing import feature_grid_gradient

    per_patch = feature_grid_gradient(vit, random_images(vit, 1), ["pneumothorax"])
    assert per_patch.shape == (1, 14, 14) and bool((per_patch > 0).all())
