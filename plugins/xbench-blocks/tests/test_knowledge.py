"""The shared pieces of KAD and DeViDe (xbench_blocks.knowledge): KAD's official test transform, the
phrase table, the text side, and the model base (queries, score, map, logits, seeded build) on a
toy image encoder."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402
from xbench_blocks.knowledge import (  # noqa: E402
    D_MODEL,
    DISEASE_PHRASES,
    PhraseQueryModel,
    resolve_text_config_folder,
    squash_bicubic_8bit,
)
from xbench_blocks.text import write_bert_folder  # noqa: E402

from xbench_core import FINDINGS, AssetError, UnsupportedFinding  # noqa: E402
from xbench_core.io import read_image  # noqa: E402
from xbench_core.testing import encode_queries, realdata  # noqa: E402


# ---- preprocessing --------------------------------------------------------------------------------
def official_transform(gray_uint8: np.ndarray, size: int) -> torch.Tensor:
    """KAD's test transform: PIL RGB -> Resize([size, size], BICUBIC) -> ToTensor -> Normalize."""
    from PIL import Image

    img = Image.fromarray(gray_uint8).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("size", [224, 512])
def test_squash_matches_official_transform_on_synthetic_image(size):
    rng = np.random.default_rng(0)
    gray = (rng.random((300, 260)) * 255).round().astype(np.uint8)
    gray[100:150, 50:200] = 255  # hard edges make bicubic overshoot, which 8-bit PIL clamps
    pixels, geometry = squash_bicubic_8bit(gray.astype(np.float32) / 255.0, (size, size))
    assert pixels.shape == (3, size, size) and pixels.dtype == torch.float32
    assert geometry.input_size == (size, size) and geometry.original_size == (300, 260)
    assert geometry.scale == pytest.approx((size / 300, size / 260))
    # The same 8-bit Pillow resize: equal up to float rounding of the normalisation.
    torch.testing.assert_close(pixels, official_transform(gray, size), rtol=0, atol=1e-6)


def test_squash_matches_official_transform_on_real_jpeg():
    from PIL import Image

    path = realdata("chexlocalize", "p64541.jpg")
    image = read_image(path)
    with Image.open(path) as img:
        assert img.mode == "L"
        official = {size: official_transform(np.asarray(img), size) for size in (224, 512)}
    for size, expected in official.items():
        pixels, geometry = squash_bicubic_8bit(image, (size, size))
        assert geometry.original_size == image.shape
        torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


# ---- phrases and text side ------------------------------------------------------------------------
def test_phrase_table_is_canonical_and_follows_official_lists():
    assert set(DISEASE_PHRASES) <= {f.id for f in FINDINGS}
    assert all(q == q.lower() and q.strip() == q for q in DISEASE_PHRASES.values())
    # Official ChestX-ray14 phrases, quirk included.
    assert DISEASE_PHRASES["pleural_thickening"] == "pleural thicken"
    assert DISEASE_PHRASES["pleural_effusion"] == "pleural effusion"
    assert DISEASE_PHRASES["nodule"] == "lung nodule" and DISEASE_PHRASES["mass"] == "lung mass"
    assert not {"other_diseases", "other_lesion", "pleural_other"} & set(DISEASE_PHRASES)


def test_text_config_folder_must_hold_config_and_vocabulary(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AssetError, match=r"the Toy text encoder .*vocab.txt.*--set toy.text_enc"):
        resolve_text_config_folder(
            str(tmp_path), env="XBENCH_TOY_TEXT_ENCODER", option="toy.text_encoder", label="Toy"
        )


# ---- the model base on a toy image encoder --------------------------------------------------------
class Patches(nn.Module):
    """32 x 32 patches -> tokens [B, N, 768]."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, D_MODEL, 32, stride=32)

    def forward(self, pixels):
        return self.proj(pixels).flatten(2).transpose(1, 2)


class Toy(PhraseQueryModel):
    name, label, input_size, stride = "toy", "Toy", (64, 64), 32

    def __init__(self, text_encoder: str, projection: bool = False) -> None:
        self._build(
            "random", text_encoder, Patches, asset="toy", hint="none", projection=projection
        )


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(write_bert_folder(tmp_path_factory.mktemp("bert"), hidden_size=32))


@pytest.fixture(scope="module")
def toy(bert):
    return Toy(bert)


def test_build_is_seeded_and_keeps_the_official_decoder_keys(bert, toy):
    before = torch.random.get_rng_state()
    again = Toy(bert, projection=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    fusion = list(toy.module.fusion.state_dict())
    assert fusion[:3] == ["logit_scale", "decoder_norm.weight", "decoder_norm.bias"]
    assert fusion[-4:] == ["decoder.norm.weight", "decoder.norm.bias", "mlp_head.0.weight",
                           "mlp_head.0.bias"]  # fmt: skip
    with_projection = [*fusion, "projection.weight", "projection.bias"]
    assert list(again.module.fusion.state_dict()) == with_projection
    assert again.module.fusion.decoder.norm is again.module.fusion.decoder_norm
    for key, value in toy.module.image_encoder.state_dict().items():
        assert torch.equal(again.module.image_encoder.state_dict()[key], value), key


def test_query_tokens_follow_official_tokenizer_call(toy):
    tok = toy.tokenizer
    enc = tok(["pleural effusion"], add_special_tokens=True, max_length=256, padding="max_length",
              truncation=True, return_tensors="pt")  # fmt: skip
    ids = enc["input_ids"][0].tolist()
    assert len(ids) == 256 and ids[0] == tok.cls_token_id
    words = tok.convert_ids_to_tokens(ids[1:3])
    assert words == ["pleural", "effusion"] and ids[3] == tok.sep_token_id
    assert int(enc["attention_mask"].sum()) == 4


def test_query_embeddings_equal_the_official_256_token_padding(toy):
    findings = ["pleural_effusion", "nodule_mass", "edema"]
    official = toy.tokenizer([toy.queries[f] for f in findings], add_special_tokens=True,
                             max_length=256, padding="max_length", truncation=True,
                             return_tensors="pt")  # fmt: skip
    with torch.inference_mode():
        ours = toy.encode_queries(findings)
        padded = toy.module.text_encoder(official["input_ids"], official["attention_mask"])
    assert official["input_ids"].shape == (3, 256) and ours.shape == (3, 768)
    torch.testing.assert_close(ours, padded, rtol=1e-5, atol=1e-5)


def test_unsupported_finding_is_refused_with_the_model_label(toy):
    with pytest.raises(UnsupportedFinding, match=r"Toy has no query for \['other_lesion'\]"):
        toy.encode_queries(["pneumonia", "other_lesion"])


def test_map_is_last_or_mean_cross_attention_and_score_is_softmax(toy):
    captured = []
    hooks = [
        layer.multihead_attn.register_forward_hook(lambda m, i, o: captured.append(o[1]))
        for layer in toy.module.fusion.decoder.layers
    ]
    pixels = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            queries = toy.encode_queries(["pneumonia", "nodule", "edema"])
            last = toy.forward(pixels, queries)
            toy.attention_layers = "mean"
            mean = toy.forward(pixels, queries)
            logits = toy.module(pixels, queries)[0]
    finally:
        toy.attention_layers = "last"
        for h in hooks:
            h.remove()
    maps = last.maps["cross_attention"]
    assert maps.shape == (2, 3, 3, 2) and last.extras == {}
    torch.testing.assert_close(maps.flatten(2), captured[3])
    assert not torch.allclose(captured[3], captured[0])
    torch.testing.assert_close(
        mean.maps["cross_attention"].flatten(2), torch.stack(captured[4:8]).mean(0)
    )
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(2, 3))
    torch.testing.assert_close(last.scores, torch.softmax(logits, -1)[..., 1])
    cached = encode_queries(toy, ["pneumonia", "nodule", "edema"])  # as the engine does
    differentiable = toy.logits(pixels.requires_grad_(True), cached)
    (grad,) = torch.autograd.grad(differentiable.sum(), pixels)
    assert float(grad.abs().sum()) > 0
    torch.testing.assert_close(torch.sigmoid(differentiable.detach()), last.scores)
