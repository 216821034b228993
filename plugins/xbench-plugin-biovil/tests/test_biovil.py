"""Tests of the BioViL plugin: the full image towers (ResNet-50, BioViL-T's multi-image encoder) with
random weights, a tiny local CXR-BERT (no download), the official preprocessing, smoothing, scores
and maps against naive computations, the released file layout, and an MS-CXR phrase-grounding run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from xbench_blocks.text import generated_vocabulary, write_bert_folder

from xbench_core import AssetError, ConfigError, DataError, Phrase, get_registry
from xbench_core.testing import (
    ModelPluginTests,
    encode_queries,
    hub_offline,  # noqa: F401 - autouse: nothing here downloads
    perturbed,
)

MS_CXR_WORDS = [
    "small",
    "left",
    "pleural",
    "effusion",
    "heart",
    "enlarged",
    "apical",
    "pneumothorax",
]



@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CXR-BERT folder: config (projection 128, model_type cxr-bert as released) and vocabulary."""
    folder = tmp_path_factory.mktemp("cxr-bert")
    write_bert_folder(folder, vocab=generated_vocabulary(extra_words=MS_CXR_WORDS), model_type="cxr-bert",
                      projection_size=128)  # fmt: skip
    return folder


def build(**options):
    return get_registry().models["biovil"].build(**options)


@pytest.fixture(scope="module")
def biovil_t(tiny_text: Path):
    return build(variant="biovil-t", checkpoint="random", text_encoder=str(tiny_text))


class TestConformance(ModelPluginTests):
    name = "biovil"
    image_size = (300, 260)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, biovil_t):
        return biovil_t


def grey(seed: int, size=(300, 260)) -> np.ndarray:
    """An 8-bit image as the core decodes a JPEG or PNG: levels / 255 in float32."""
    levels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    return levels.astype(np.float32) / 255.0


# ---- preprocessing --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(300, 260), (260, 611), (512, 512)])
def test_preprocess_equals_the_official_torchvision_transform(biovil_t, size) -> None:
    """Resize(512) + CenterCrop(448) + ToTensor on the 8-bit PIL image, as
    create_chest_xray_transform_for_inference builds it; the geometry maps the crop back."""
    from torchvision.transforms import CenterCrop, Compose, Resize, ToTensor

    image = grey(1, size)
    image[0, 0], image[-1, -1] = 0.0, 1.0  # full range: remap_to_uint8 is the identity here
    pixels, geometry = biovil_t.preprocess(image)
    pil = Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L")
    expected = Compose([Resize(512), CenterCrop(448), ToTensor()])(pil)
    assert pixels.shape == (3, 448, 448)
    assert torch.equal(pixels[0], expected[0]) and torch.equal(pixels[1], pixels[2])
    h, w = size
    short = min(h, w)
    assert geometry.scale == pytest.approx(
        (Resize(512)(pil).size[1] / h, Resize(512)(pil).size[0] / w)
    )
    # the input's first pixel row starts where the crop starts in the resized image
    y0, x0 = geometry.to_original(0.0, 0.0)
    assert y0 == pytest.approx(round((geometry.scale[0] * h - 448) / 2) / geometry.scale[0])
    assert short * geometry.scale[0 if h <= w else 1] == pytest.approx(512)


def test_remap_stretches_the_levels_as_the_official_loader() -> None:
    from xbench_plugin_biovil.model import remap_to_uint8

    levels = np.array([[10, 20], [30, 110]], np.uint8)
    expected = levels.astype(float) - 10
    expected = (expected / expected.max() * 255).astype(np.uint8)  # remap_to_uint8, written out
    assert np.array_equal(remap_to_uint8(levels.astype(np.float32) / 255), expected)
    assert np.array_equal(
        remap_to_uint8(np.full((3, 3), 0.5, np.float32)), np.zeros((3, 3), np.uint8)
    )


# ---- smoothing, scores, maps ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(14, 14), (15, 15), (3, 7), (1, 5)])
def test_smoothing_equals_scipy_gaussian_filter(shape) -> None:
    from scipy import ndimage
    from xbench_plugin_biovil.network import smooth

    grid = np.random.default_rng(0).standard_normal(shape)
    expected = ndimage.gaussian_filter(grid, sigma=(1.5, 1.5), order=0)
    got = smooth(torch.from_numpy(grid)[None, None])[0, 0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_scores_and_maps_are_the_official_cosines(biovil_t) -> None:
    from scipy import ndimage

    pixels = torch.stack([biovil_t.preprocess(grey(s))[0] for s in (2, 3)])
    queries = encode_queries(biovil_t, ["pneumonia", "cardiomegaly"])
    with torch.no_grad():
        out = biovil_t.forward(pixels, queries)
        patches = biovil_t.module.image(pixels).double()  # [B, 128, 14, 14]

    def text(prompts):
        emb = biovil_t._encode_text(list(prompts)).double().mean(dim=0)  # mean, then normalize
        return emb / emb.norm()

    for f, finding in enumerate(queries.findings):
        positive, negative = biovil_t._prompts(finding)
        pos, neg = text(positive), text(negative)
        for b in range(2):
            glob = patches[b].mean(dim=(1, 2))
            glob = glob / glob.norm()
            score = (2 + glob @ pos - glob @ neg) / 4
            assert float(out.scores[b, f]) == pytest.approx(float(score), abs=1e-5)
            local = patches[b] / patches[b].norm(dim=0, keepdim=True)
            raw = torch.einsum("dhw,d->hw", local, pos).numpy()
            smoothed = ndimage.gaussian_filter(raw, sigma=1.5)
            np.testing.assert_allclose(out.maps["similarity"][b, f].numpy(), smoothed, atol=2e-6)
    assert queries.positive_prompts[0][2] == "This opacity can represent pneumonia"
    assert queries.negative_prompts[1] == ("There is no cardiomegaly", "No evidence of cardiomegaly",
                                           "No signs of cardiomegaly")  # fmt: skip


def test_logits_and_feature_layer(biovil_t) -> None:
    pixels = biovil_t.preprocess(grey(4))[0][None]
    queries = encode_queries(biovil_t, ["pneumonia"])
    out = biovil_t.forward(pixels, queries)
    logits = biovil_t.logits(pixels, queries)
    torch.testing.assert_close((2 + logits) / 4, out.scores)
    from xbench_core.testing import feature_grid_gradient

    grad = feature_grid_gradient(biovil_t, pixels, ["pneumonia"])
    assert grad.shape == (1, 14, 14) and bool((grad > 0).all())


def test_phrases_are_encoded_as_single_prompts_and_cached(biovil_t) -> None:
    encode_queries(biovil_t, ["pleural_effusion"])
    phrases = [
        Phrase("Small left pleural effusion.", "pleural_effusion"),
        Phrase("The heart is enlarged", "cardiomegaly"),
    ]
    queries = biovil_t.encode_phrases(phrases)
    assert queries.positive_prompts == (
        ("Small left pleural effusion.",),
        ("The heart is enlarged",),
    )
    # the other side of a phrase's score: its finding's negative prompts
    assert queries.negative_prompts[0] == ("There is no pleural effusion", "No evidence of pleural effusion",
                                           "No signs of pleural effusion")  # fmt: skip
    # the trailing period is stripped before tokenization: the same embedding as without it
    alone = F.normalize(biovil_t._encode_text(["Small left pleural effusion"]), dim=-1)[0]
    torch.testing.assert_close(queries.positive[0], alone, rtol=1e-5, atol=1e-6)
    cached = dict(biovil_t._text_cache)
    again = biovil_t.encode_phrases(phrases[::-1])
    assert biovil_t._text_cache.keys() == cached.keys()
    torch.testing.assert_close(again.positive[1], queries.positive[0])
    with pytest.raises(DataError, match="special token"):
        biovil_t.encode_phrases([Phrase("effusion [SEP] heart", "pleural_effusion")])


def test_biovil_variant_uses_the_480_crop_and_plain_resnet(tiny_text) -> None:
    model = build(variant="biovil", checkpoint="random", text_encoder=str(tiny_text))
    pixels, geometry = model.preprocess(grey(5))
    assert pixels.shape == (3, 480, 480) and geometry.input_size == (480, 480)
    keys = model.module.image.state_dict()
    assert "projector.model.0.weight" in keys and keys["projector.model.0.weight"].shape == (
        128,
        2048,
        1,
        1,
    )
    assert not any("vit_pooler" in k for k in keys)
    with torch.no_grad():
        out = model.forward(pixels[None], encode_queries(model, ["edema"]))
    assert out.maps["similarity"].shape == (1, 1, 15, 15)


# ---- released files -------------------------------------------------------------------------------
def test_released_layout_loads_strictly(biovil_t, tiny_text, tmp_path) -> None:
    """The image .pt (ImageModel state dict) and the text folder as on the Hub: config.json of model
    type cxr-bert, pytorch_model.bin with the masked-LM head and the old position_ids buffer."""
    image_state = perturbed(biovil_t.module.image.state_dict())
    assert "encoder.vit_pooler.blocks.2.attn.proj_q.weight" in image_state
    assert (
        "encoder.missing_previous_emb" in image_state and "encoder.encoder.fc.weight" in image_state
    )
    image_file = tmp_path / "biovil_t_image_model_proj_size_128.pt"
    torch.save(image_state, image_file)
    text = tmp_path / "text"
    text.mkdir()
    for name in ("config.json", "vocab.txt"):
        (text / name).write_bytes((tiny_text / name).read_bytes())
    text_state = perturbed(biovil_t.module.text.state_dict(), seed=2)
    hidden = biovil_t.module.text.bert.config.hidden_size
    text_state["cls.predictions.transform.dense.weight"] = torch.zeros(hidden, hidden)
    text_state["cls.predictions.bias"] = torch.zeros(10)
    text_state["bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(text_state, text / "pytorch_model.bin")

    loaded = build(variant="biovil-t", checkpoint=str(tmp_path), text_encoder=str(text))
    for key, value in loaded.module.image.state_dict().items():
        assert torch.equal(value, image_state[key]), key
    for key, value in loaded.module.text.state_dict().items():
        assert torch.equal(value, text_state[key]), key
    pixels = loaded.preprocess(grey(6))[0][None]
    with torch.no_grad():
        a = loaded.forward(pixels, encode_queries(loaded, ["pneumonia"]))
        b = biovil_t.forward(pixels, encode_queries(biovil_t, ["pneumonia"]))
    assert not torch.allclose(a.maps["similarity"], b.maps["similarity"])


def test_missing_files_and_bad_options_are_clear_errors(tiny_text, tmp_path) -> None:
    with pytest.raises(ConfigError, match="variant"):
        build(variant="biovil-x", checkpoint="random", text_encoder=str(tiny_text))
    with pytest.raises(AssetError, match="biovil_t_image_model_proj_size_128.pt"):
        build(checkpoint=str(tmp_path), text_encoder=str(tiny_text))
    with pytest.raises(AssetError, match="does not exist"):
        build(checkpoint=str(tmp_path / "nope.pt"), text_encoder=str(tiny_text))
    torch.save({}, tmp_path / "biovil_t_image_model_proj_size_128.pt")
    with pytest.raises(AssetError, match="pytorch_model.bin"):
        build(checkpoint=str(tmp_path), text_encoder=str(tiny_text))
    with pytest.raises(ConfigError, match="finding"):
        build(checkpoint="random", text_encoder=str(tiny_text), templates=["no placeholder"])


# ---- MS-CXR phrase grounding, end to end ----------------------------------------------------------
MS_CXR_ROWS = [  # dicom_id, category, sentence, x, y, w, h
    ("aaaa1111-0001", "Pleural Effusion", "Small left pleural effusion.", 10, 40, 20, 10),
    ("aaaa1111-0001", "Cardiomegaly", "The heart is enlarged.", 25, 20, 30, 25),
    ("bbbb2222-0002", "Pneumothorax", "Right apical pneumothorax.", 5, 5, 20, 15),
]
MS_CXR_IMAGES = {
    "aaaa1111-0001": ("10000001", "50000001", 60, 80),
    "bbbb2222-0002": ("10000002", "50000002", 64, 64),
}


def write_ms_cxr(root: Path) -> Path:
    """MS_CXR_Local_Alignment_v1.1.0.csv over a MIMIC-CXR-JPG tree (files/pXX/pSUBJECT/sSTUDY/DICOM.jpg)."""
    rng = np.random.default_rng(0)
    paths = {}
    for dicom_id, (subject, study, h, w) in MS_CXR_IMAGES.items():
        paths[dicom_id] = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
        (root / paths[dicom_id]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(
            root / paths[dicom_id], quality=95
        )
    with open(root / "MS_CXR_Local_Alignment_v1.1.0.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                      "image_height", "split"])  # fmt: skip
        for dicom_id, category, text, x, y, w, h in MS_CXR_ROWS:
            _, _, ih, iw = MS_CXR_IMAGES[dicom_id]
            out.writerow([dicom_id, category, text, paths[dicom_id], x, y, w, h, iw, ih, "test"])
    return root


def test_ms_cxr_phrase_grounding_run_end_to_end(tiny_text, tmp_path) -> None:
    """`xbench run --models biovil --set biovil.variant=biovil-t --set biovil.checkpoint=random
    --datasets ms-cxr`: every sentence is a query of its own, with mIoU (raw thresholds) and CNR."""
    if "ms-cxr" not in get_registry().datasets:
        pytest.skip("xbench-plugin-ms-cxr is not installed")
    from xbench_core.cli import main

    root = write_ms_cxr(tmp_path / "ms-cxr")
    out = tmp_path / "run"
    code = main(["run", "--models", "biovil", "--datasets", "ms-cxr", "--set", "biovil.variant=biovil-t",
                 "--set", "biovil.checkpoint=random", "--set", f"biovil.text_encoder={tiny_text}",
                 "--set", f"ms-cxr.root={root}", "--out", str(out), "--batch-size", "2", "--quiet"])  # fmt: skip
    assert code in (0, None)
    records = [json.loads(line) for f in (out / "records" / "ms-cxr" / "biovil" / "native").glob("*.jsonl")
               for line in f.read_text().splitlines()]  # fmt: skip
    assert sorted((r["id"], r["finding"]) for r in records) == [
        ("aaaa1111-0001-0", "pleural_effusion"), ("aaaa1111-0001-1", "cardiomegaly"),
        ("bbbb2222-0002-0", "pneumothorax")]  # fmt: skip
    assert all(not r["error"] and r["stats"]["region_px"] > 0 for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert '"phrases": true' in json.dumps(manifest)
    results = json.loads((out / "results.json").read_text())
    text = json.dumps(results)
    assert '"miou_raw"' in text and '"cnr"' in text
    assert not results["errors"]
