"""Tests of the KAD plugin: official key layout, checkpoint round trip, preprocessing size, maps
and gradients. What KAD shares with DeViDe (the official PIL transform, the phrase table, query
encoding, score and map) is tested in tests/test_knowledge.py.

The image encoder and decoder are always full size. Most tests use a tiny local BERT (generated
vocabulary, no download) so that query encoding is cheap; the key-listing test builds the
full-size Med-KEBERT shape. Forward passes outside the conformance suite use small inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from xbench_blocks.text import write_bert_folder
from xbench_plugin_kad import SPEC
from xbench_plugin_kad.model import OLD_BERT_BUFFERS, SUBDICTS, reconcile_resnet_aliases
from xbench_plugin_kad.network import ImageEncoder, ResNet50

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

LISTINGS = {
    "image_encoder": "kad_image_encoder.json",
    "text_encoder": "kad_text_encoder.json",
    "fusion": "kad_model.json",
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_bert_folder(tmp_path_factory.mktemp("tiny-bert"), hidden_size=32)


@pytest.fixture(scope="module")
def small_model(tiny_bert):
    """Full-size image encoder and decoder, tiny text encoder, random weights."""
    return SPEC.build(checkpoint="random", text_encoder=str(tiny_bert))


def small_pixels(n: int = 2, size: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


def official_layout(model) -> dict:
    """The model's weights as best_valid.pt holds them, plus the non-tensor entries."""
    parts = {theirs: getattr(model.module, ours).state_dict() for ours, theirs in SUBDICTS.items()}
    # transformers 4.24 saved the position ids with the text encoder.
    parts["text_encoder"]["bert_model.embeddings.position_ids"] = torch.arange(512)[None]
    parts.update(optimizer={"state": {}, "param_groups": []}, lr_scheduler={}, epoch=42,
                 config={"img_res": 512})  # fmt: skip
    return parts


# --------------------------------------------------------------------------------------------------
class TestKADConformance(ModelPluginTests):
    name = "kad"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, small_model):
        return small_model


def test_spec_declares_options_and_validates_resolution():
    spec = SPEC
    assert spec.map_kind == "cross_attention"
    assert {o.name for o in spec.options} == {"checkpoint", "text_encoder", "resolution"}
    assert spec.option("resolution").default == 512
    with pytest.raises(ConfigError, match="512, 1024"):
        SPEC.build(checkpoint="random", resolution=256)
    with pytest.raises(ConfigError, match="did you mean 'resolution'"):
        SPEC.build(checkpoint="random", resolutions=512)


# ---- official key layout --------------------------------------------------------------------------
def test_full_size_state_dict_equals_official_listings():
    model = SPEC.build(checkpoint="random")  # full-size Med-KEBERT shape, generated vocabulary
    assert model.random_weights and len(model.tokenizer) == 30522
    for ours, listing in LISTINGS.items():
        path = reference("checkpoint-keys", listing)
        missing, unexpected, shapes = compare_with_key_listing(
            getattr(model.module, ours).state_dict(), path
        )
        # A listing made with old transformers would carry the position ids; our loader drops them.
        missing = [k for k in missing if k not in OLD_BERT_BUFFERS]
        assert (missing, unexpected, shapes) == ([], [], []), ours
    image_keys = json.loads(reference("checkpoint-keys", LISTINGS["image_encoder"]).read_text())
    assert "resnet.fc.weight" in image_keys and "res_features.7.2.conv3.weight" in image_keys


def test_resnet_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = ResNet50().eval()
    theirs = torchvision.models.resnet50(weights=None).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = small_pixels(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


# ---- checkpoint ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    """A best_valid.pt of perturbed weights (so that a fresh random model cannot pass for it),
    the model it came from, and the model loaded back from it through the factory."""
    source = SPEC.build(checkpoint="random", text_encoder=str(tiny_bert))
    with torch.no_grad():  # cheap, and no fresh random model has these values
        for i, p in enumerate(source.module.parameters()):
            p.mul_(1.0 + 0.01 * (i % 7 + 1)).add_(0.001 * (i % 5 + 1))
    path = tmp_path_factory.mktemp("ckpt") / "best_valid.pt"
    save_official_checkpoint({}, path, extra=official_layout(source))
    loaded = SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))
    return source, path, loaded


def test_checkpoint_round_trip_is_exact(saved, small_model):
    source, path, loaded = saved
    assert not loaded.random_weights and loaded.checkpoint == path.resolve()
    state = loaded.module.state_dict()
    for key, value in source.module.state_dict().items():
        assert torch.equal(state[key], value), key
    pixels = small_pixels()
    with torch.inference_mode():
        q_src, q_new = source.encode_queries(["pneumonia"]), loaded.encode_queries(["pneumonia"])
        before, after = source.forward(pixels, q_src), loaded.forward(pixels, q_new)
        fresh = small_model.forward(pixels, small_model.encode_queries(["pneumonia"]))
    torch.testing.assert_close(after.scores, before.scores, rtol=0, atol=0)
    torch.testing.assert_close(after.maps["cross_attention"], before.maps["cross_attention"])
    assert not torch.allclose(fresh.scores, after.scores)


def test_duplicate_resnet_keys_load_from_one_set_of_tensors(saved):
    from xbench_core.checkpoints import load_checkpoint

    _, path, loaded = saved
    stored = load_checkpoint(path, container="image_encoder")
    assert any(k.startswith("resnet.") for k in stored) and any(
        k.startswith("res_features.") for k in stored
    )
    # torch.save wrote each shared tensor once: both names come back on one storage.
    for child, index in (("conv1", "0"), ("layer4.2.conv3", "7.2.conv3")):
        a, b = stored[f"resnet.{child}.weight"], stored[f"res_features.{index}.weight"]
        assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    encoder = loaded.module.image_encoder
    assert encoder.resnet.layer4 is encoder.res_features[7]
    torch.testing.assert_close(encoder.res_features[0].weight, stored["resnet.conv1.weight"])
    torch.testing.assert_close(
        encoder.resnet.layer4[2].conv3.weight, stored["res_features.7.2.conv3.weight"]
    )


def test_one_alias_set_is_completed_and_disagreeing_copies_refused():
    encoder = ImageEncoder()
    full = encoder.state_dict()
    only_resnet = {k: v.clone() for k, v in full.items() if not k.startswith("res_features.")}
    target = ImageEncoder()
    from xbench_core.checkpoints import load_state_dict_strict

    load_state_dict_strict(target, reconcile_resnet_aliases(only_resnet, source="x"), source="x")
    torch.testing.assert_close(
        target.res_features[4][0].conv1.weight, full["resnet.layer1.0.conv1.weight"]
    )
    only_indexed = {
        k: v.clone() for k, v in full.items() if not k.startswith("resnet.") or ".fc." in k
    }
    completed = reconcile_resnet_aliases(only_indexed, source="x")
    assert set(completed) == set(full)
    broken = {k: v.clone() for k, v in full.items()}
    broken["res_features.1.weight"] += 1.0
    with pytest.raises(CheckpointError, match=r"resnet\.bn1\.weight.*res_features\.1\.weight"):
        reconcile_resnet_aliases(broken, source="x")


def test_corrupted_checkpoint_lists_offending_keys(tiny_bert, tmp_path):
    # The official container with a broken image encoder: one tensor of the wrong shape, every
    # other key missing, one unexpected key. Parts load in order, so the others need not be there.
    broken = {"res_l2.weight": torch.zeros(10, 2048), "resnet.conv1.weight": torch.zeros(64, 3, 7, 7),
              "res_l3.weight": torch.zeros(3)}  # fmt: skip
    path = save_official_checkpoint(broken, tmp_path / "broken.pt", container="image_encoder")
    with pytest.raises(CheckpointError) as info:
        SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))
    message = str(info.value)
    for text in ("'image_encoder'", "missing keys", "resnet.bn1.weight", "res_l3.weight",
                 "res_l2.weight: model expects (768, 2048), checkpoint has (10, 2048)"):  # fmt: skip
        assert text in message


def test_checkpoint_without_the_sub_dicts_is_refused(tmp_path, tiny_bert):
    path = save_official_checkpoint(
        {}, tmp_path / "other.pt", extra={"state_dict": {"w": torch.zeros(2)}}
    )
    with pytest.raises(CheckpointError, match="image_encoder"):
        SPEC.build(checkpoint=str(path), text_encoder=str(tiny_bert))


def test_missing_checkpoint_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("XBENCH_KAD_CHECKPOINT", raising=False)
    with pytest.raises(AssetError, match="1xWVVJRfnm_wIgUpbn9ftsW4K5XKU0i0-"):
        SPEC.build()
    with pytest.raises(AssetError, match="does not exist"):
        SPEC.build(checkpoint=str(tmp_path / "nope.pt"))


# ---- preprocessing ------------------------------------------------------------------------------
def test_preprocess_squashes_to_the_resolution(small_model):
    gray = np.random.default_rng(0).random((300, 260), dtype=np.float32)
    pixels, geometry = small_model.preprocess(gray)
    assert pixels.shape == (3, 512, 512) and pixels.dtype == torch.float32
    assert geometry.input_size == (512, 512) and geometry.original_size == (300, 260)
    assert geometry.scale == pytest.approx((512 / 300, 512 / 260))


# ---- gradients, precision -----------------------------------------------------------------------
def test_logits_are_differentiable_and_match_scores(small_model):
    pixels = small_pixels(2, 128).requires_grad_(True)
    queries = encode_queries(small_model, ["pneumonia", "pneumothorax"])
    scores = forward(small_model, pixels.detach(), queries).scores
    layer = small_model.feature_layer()
    grabbed = {}
    handle = layer.module.register_forward_hook(lambda m, i, o: grabbed.setdefault("out", o))
    try:
        logits = small_model.logits(pixels, queries)
        grid = layer.to_grid(grabbed["out"])
        (grad,) = torch.autograd.grad(logits[:, 0].sum(), grid)
    finally:
        handle.remove()
    assert logits.shape == (2, 2) and grid.shape == (2, 2048, 4, 4)
    torch.testing.assert_close(torch.sigmoid(logits.detach()), scores, rtol=1e-4, atol=1e-5)
    assert grad.shape == grid.shape and float(grad.abs().sum()) > 0
    assert small_model.capabilities() == {"logits", "feature_layer"}


@pytest.mark.slow
def test_kad_1024_gives_32x32_maps(tiny_bert):
    model = SPEC.build(checkpoint="random", text_encoder=str(tiny_bert), resolution=1024)
    pixels, geometry = model.preprocess(
        np.random.default_rng(0).random((400, 300), dtype=np.float32)
    )
    assert pixels.shape == (3, 1024, 1024) and geometry.input_size == (1024, 1024)
    with torch.inference_mode():
        out = model.forward(pixels[None], model.encode_queries(["pneumonia", "edema"]))
    assert out.maps["cross_attention"].shape == (1, 2, 32, 32)
    assert 0.0 <= float(out.scores.min()) and float(out.scores.max()) <= 1.0
