"""Tests of the CARZero plugin: conformance, official key layout, Lightning container, text
processing computed by hand, letterbox geometry, fusion batching against the official loop."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from xbench_blocks.text import write_bert_folder
from xbench_plugin_carzero.model import BERT_SHAPE, POSITION_IDS
from xbench_plugin_carzero.preprocess import MEAN, STD
from xbench_plugin_carzero.prompts import PROMPTS
from xbench_plugin_carzero.text import WORD_NUM, TextEncoder, process_text, tokenize

from xbench_core import FINDINGS, CheckpointError, UnsupportedFinding, get_registry
from xbench_core.geometry import letterbox_crop
from xbench_core.testing import (
    ModelPluginTests,
    compare_with_key_listing,
    encode_queries,
    forward,
    realdata,
    reference,
    save_official_checkpoint,
)


def _build(**options: object):  # noqa: ANN202
    return get_registry().models["carzero"].build(**options)


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    return _build(checkpoint="random")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):  # noqa: ANN001, ANN201
    """The full-size config with the generated vocabulary (what `checkpoint: random` builds)."""
    return write_bert_folder(tmp_path_factory.mktemp("bert"), **BERT_SHAPE)


@pytest.fixture(scope="module")
def pixels(model):  # noqa: ANN001, ANN201
    """One preprocessed image (full-size forward passes are slow on the CPU)."""
    image = np.random.default_rng(1).random((300, 260), dtype=np.float32)
    return model.preprocess(image)[0][None]


class TestConformance(ModelPluginTests):
    name = "carzero"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, model):  # noqa: ANN001, ANN201 - the module's model, shared
        return model


# ---- registration, queries, keys ------------------------------------------------------------


def test_spec_and_random_flag(model) -> None:  # noqa: ANN001
    spec = get_registry().models["carzero"]
    assert spec.map_kind == "cross_attention" and model.map_kind == "cross_attention"
    assert {o.name for o in spec.options} == {"checkpoint", "text_encoder"}
    assert model.random_weights is True
    assert model.capabilities() == {"logits", "feature_layer", "phrases"}


def test_phrases_are_prompts_as_they_are_and_cached(model, monkeypatch) -> None:  # noqa: ANN001
    from xbench_core import Phrase

    text = "There is a small left apical pneumothorax"
    phrases = [Phrase(text, "pneumothorax"), Phrase("Mild cardiomegaly", "cardiomegaly")]
    with torch.no_grad():
        q = model.encode_phrases(phrases)
        sentence, memory = model._encode_prompts([text])
        encoded: list[list[str]] = []
        real = model._encode_prompts
        monkeypatch.setattr(model, "_encode_prompts", lambda prompts: encoded.append(prompts) or real(prompts))
        again = model.encode_phrases([phrases[1], phrases[0], Phrase("A new sentence", "nodule")])
    assert encoded == [["A new sentence"]]  # the two known texts came from the cache
    assert q.findings == ("pneumothorax", "cardiomegaly") and q.prompts[0] == text
    assert q.memory.shape == (2, 98, 768)
    # alone or beside a shorter prompt: the same up to float rounding (BERT runs to the longest)
    torch.testing.assert_close(q.sentence[0], sentence[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.memory[0], memory[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(again.memory[1], q.memory[0])  # from the cache


def test_query_table() -> None:
    ids = {f.id for f in FINDINGS}
    assert set(PROMPTS) <= ids
    # Unsupported on purpose (see prompts.py), every other canonical finding has a prompt.
    assert ids - set(PROMPTS) == {"no_finding", "other_diseases", "other_lesion", "pleural_other"}
    # The official ChestX-ray14 names.
    assert PROMPTS["infiltration"] == "There is Pulmonary Infiltration"
    assert PROMPTS["nodule"] == "There is Lung Nodule"
    assert PROMPTS["pleural_effusion"] == "There is Pleural Effusion"
    for finding, prompt in PROMPTS.items():
        # process_text drops sentences of one word: every prompt must survive it whole.
        assert prompt.startswith("There is ") and len(process_text(prompt).split()) >= 3, finding


def test_unsupported_finding_raises(model) -> None:  # noqa: ANN001
    with pytest.raises(UnsupportedFinding, match="no_finding"):
        model.encode_queries(["pneumonia", "no_finding"])


def test_keys_equal_the_official_listing(model) -> None:  # noqa: ANN001
    listing = reference("checkpoint-keys", "carzero_model.json")
    missing, unexpected, shapes = compare_with_key_listing(model.module.state_dict(), listing)
    assert (missing, unexpected, shapes) == ([], [], [])
    assert sum(p.numel() for p in model.module.parameters()) == 220_770_306


# ---- checkpoints ----------------------------------------------------------------------------


def _lightning_extra(module_name: str) -> dict:
    """A Lightning file's other entries, with the config pickled as an object of a class that
    will not be importable when the file is read (as OmegaConf's DictConfig is not here)."""
    fake = types.ModuleType(module_name)

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self._content = content

        def __reduce__(self):  # noqa: ANN204 - behaves like a class with custom pickling
            return (DictConfig, (self._content,))

    DictConfig.__module__ = module_name
    DictConfig.__qualname__ = "DictConfig"
    fake.DictConfig = DictConfig
    sys.modules[module_name] = fake
    config = DictConfig(
        {"data": {"text": {"word_num": 97}}, "phase": "pretrain_llm_dqn_wo_self_atten_mlp_gl"}
    )
    return {
        "epoch": 14,
        "global_step": 12345,
        "pytorch-lightning_version": "1.1.4",
        "hyper_parameters": config,
    }


def test_lightning_checkpoint_round_trip(model, bert_folder, pixels, tmp_path) -> None:  # noqa: ANN001
    module_name = "xbench_fake_omegaconf_for_carzero"
    extra = _lightning_extra(module_name)
    state = dict(model.module.state_dict())
    state[POSITION_IDS] = torch.arange(512)[None]  # saved by older transformers, dropped on load
    path = save_official_checkpoint(
        state,
        tmp_path / "CARZero_best_model.ckpt",
        container="state_dict",
        prefix="CARZero.",
        extra=extra,
    )
    del sys.modules[module_name]  # the pickled config's class can no longer be imported
    loaded = _build(checkpoint=str(path), text_encoder=str(bert_folder))
    assert loaded.random_weights is False
    assert module_name not in sys.modules
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key]), key
    findings = ["pneumothorax", "nodule"]
    with torch.inference_mode():
        before = model.forward(pixels, model.encode_queries(findings))
        after = loaded.forward(pixels, loaded.encode_queries(findings))
    torch.testing.assert_close(before.scores, after.scores, rtol=0, atol=0)
    torch.testing.assert_close(
        before.maps["cross_attention"], after.maps["cross_attention"], rtol=0, atol=0
    )
    path.unlink()  # 880 MB: not left in pytest's kept temporary folders


def test_corrupted_checkpoint_lists_the_keys(model, bert_folder, tmp_path) -> None:  # noqa: ANN001
    # Zero-stride tensors keep every shape of the real layout in a file of a few kilobytes.
    state = {
        k: torch.zeros((), dtype=v.dtype).expand(v.shape)
        for k, v in model.module.state_dict().items()
    }
    del state["fusion_module.mlp_head.9.bias"]
    state["img_encoder.model.pos_embed"] = torch.zeros(1, 50, 768)
    path = save_official_checkpoint(
        state, tmp_path / "bad.ckpt", container="state_dict", prefix="CARZero."
    )
    with pytest.raises(CheckpointError) as error:
        _build(checkpoint=str(path), text_encoder=str(bert_folder))
    text = str(error.value)
    assert "fusion_module.mlp_head.9.bias" in text
    assert "img_encoder.model.pos_embed" in text and "(1, 50, 768)" in text


def test_missing_checkpoint_says_where_to_get_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from xbench_core import AssetError

    monkeypatch.setenv("XBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("XBENCH_CARZERO_CHECKPOINT", raising=False)
    with pytest.raises(AssetError, match="1kYF-k5otW5DHwz1En5d_ScV3zu2E27Ch") as error:
        _build(checkpoint=str(tmp_path / "nowhere.ckpt"))
    assert "does not exist" in str(error.value)
    with pytest.raises(AssetError, match="1kYF-k5otW5DHwz1En5d_ScV3zu2E27Ch") as error:
        _build()
    assert "XBENCH_CARZERO_CHECKPOINT" in str(error.value)


def test_vocabulary_that_does_not_fit_the_config(tmp_path) -> None:  # noqa: ANN001
    import json

    from xbench_core import AssetError

    folder = write_bert_folder(tmp_path, vocab=TINY_VOCAB)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    with pytest.raises(AssetError, match="15 word-pieces .* config says 100"):
        _build(checkpoint="random", text_encoder=str(folder))


# ---- text processing ------------------------------------------------------------------------


def test_process_text_by_hand() -> None:
    assert process_text("There is Pleural Effusion") == "there is pleural effusion"
    assert process_text("Cardiomegaly") == ""  # one-word sentences are dropped
    assert process_text("Cardiomegaly.") == ""
    # sentence split at periods and at numbered items; newline -> space; ASCII filter after the
    # one-token check ("é x" has two tokens, then loses "é").
    text = "Effusion. There is naïve\nopacity 2. small nodule. x. é x"
    assert process_text(text) == "there is nave opacity small nodule x"


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "there", "is", "pleu", "##ral",
              "eff", "##usion", "small", "nod", "##ule", "a"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # noqa: ANN001, ANN201
    from transformers import BertModel, BertTokenizer

    folder = write_bert_folder(
        tmp_path_factory.mktemp("tiny"),
        vocab=TINY_VOCAB,
        hidden_size=16,
        num_hidden_layers=5,
        num_attention_heads=2,
        intermediate_size=32,
        weights=True,
        seed=3,
    )
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    assert len(tokenizer) == len(TINY_VOCAB)
    bert = BertModel.from_pretrained(str(folder)).eval()
    return tokenizer, bert


def test_tokenize_pads_to_97(tiny) -> None:  # noqa: ANN001
    tokenizer, _ = tiny
    tokens = tokenize(tokenizer, ["There is pleural effusion", "Cardiomegaly", "a " * 200])
    ids = tokens["input_ids"]
    assert ids.shape == (3, WORD_NUM)
    assert ids[0, :8].tolist() == [2, 5, 6, 7, 8, 9, 10, 3] and not ids[0, 8:].any()
    assert ids[1, :2].tolist() == [2, 3] and not ids[1, 2:].any()  # the word was dropped
    assert ids[2, -1] == 3 and (ids[2, 1:-1] == 14).all()  # truncated, [SEP] kept
    assert tokens["attention_mask"][0].sum() == 8 and not tokens["token_type_ids"].any()


def test_word_piece_merge_and_sentence_by_hand(tiny) -> None:  # noqa: ANN001
    from xbench_plugin_carzero.text import merge_matrix

    tokenizer, bert = tiny
    prompts = ["There is pleural effusion", "Cardiomegaly", "small nodule"]
    tokens = tokenize(tokenizer, prompts)
    vocabulary = {i: t for t, i in tokenizer.get_vocab().items()}
    merge = merge_matrix(tokens["input_ids"], vocabulary, tokenizer.sep_token_id)
    with torch.no_grad():
        sentence, words = TextEncoder(bert)(
            tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"], merge
        )
        hidden = bert(**tokens, output_hidden_states=True).hidden_states
    assert len(hidden) == 6  # embeddings + 5 layers: the last 4 leave the first layer out
    last = hidden[2:]
    # Words of each prompt as token positions, written by hand.
    by_hand = [
        [[0], [1], [2], [3, 4], [5, 6], [7]],  # [CLS] there is pleu+##ral eff+##usion [SEP]
        [[0], [1]],  # [CLS] [SEP]
        [[0], [1], [2, 3], [4]],  # [CLS] small nod+##ule [SEP]
    ]
    for n, groups in enumerate(by_hand):
        expected_words = torch.zeros(WORD_NUM, 16)
        for w, positions in enumerate(groups):
            expected_words[w] = sum(layer[n, p] for layer in last for p in positions)
        torch.testing.assert_close(words[n], expected_words, rtol=1e-5, atol=1e-5)
        # sum over layers of the mean over all 97 positions, the zero pads included
        expected_sentence = expected_words.sum(0) / 97
        torch.testing.assert_close(sentence[n], expected_sentence, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(sentence[n], expected_words.sum(0) / len(groups))
    # Running BERT only up to the longest prompt (as encode_queries does) changes nothing.
    length = int(tokens["attention_mask"].sum(1).max())
    assert length == 8
    with torch.no_grad():
        short_sentence, short_words = TextEncoder(bert)(
            *(tokens[k][:, :length] for k in ("input_ids", "attention_mask", "token_type_ids")),
            merge[:, :, :length],
        )
    assert short_words.shape == (3, WORD_NUM, 16)
    torch.testing.assert_close(short_words, words, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(short_sentence, sentence, rtol=1e-5, atol=1e-6)


# ---- preprocessing and geometry --------------------------------------------------------------


def letterbox_area(image):  # noqa: ANN001, ANN202 - the letterbox CARZero's preprocess uses
    return letterbox_crop(image, 256, 224, "area")


def _official_sizes(h: int, w: int, scale: int = 256) -> tuple[int, int, int, int]:
    """(resized h, resized w, pad top, pad left) by the arithmetic of the official `_resize_img`."""
    if max(h, w) == h:  # size.index(max_dim) == 0, ties included
        rh, rw = scale, int(float(w) * float(scale / float(h)))
        return rh, rw, 0, int(np.floor((scale - rw) / 2))
    rh, rw = int(float(h) * float(scale / float(w))), scale
    return rh, rw, int(np.floor((scale - rh) / 2)), 0


@pytest.mark.parametrize(
    "shape", [(300, 260), (260, 300), (2828, 2320), (1024, 1024), (10, 1000), (1000, 999)]
)
def test_geometry_matches_official_resize_and_crop(shape) -> None:  # noqa: ANN001
    _, geometry = letterbox_area(np.zeros(shape))
    rh, rw, top, left = _official_sizes(*shape)
    cut = int(round((256 - 224) / 2.0))  # torchvision CenterCrop
    assert geometry.input_size == (224, 224)
    assert geometry.scale == pytest.approx((rh / shape[0], rw / shape[1]))
    assert geometry.offset == (top - cut, left - cut)


def test_extreme_aspect_ratio_keeps_one_row() -> None:
    # The official code would resize to 0 rows and fail; the core keeps one.
    board, geometry = letterbox_area(np.ones((3, 1000)))
    assert geometry.scale[0] * 3 == pytest.approx(1.0)
    assert board.sum() == pytest.approx(224.0)  # one row of ones, cropped to 224 columns


def test_preprocess_values_and_padding(model) -> None:  # noqa: ANN001
    pixels, geometry = model.preprocess(np.full((300, 260), 0.5, np.float32))
    assert pixels.shape == (3, 224, 224) and pixels.dtype == torch.float32
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2])
    # 300 x 260 -> 256 x 221, padded 17 left / 18 right, cropped 16: image columns 1..221.
    assert geometry.offset == (-16, 1)
    inside = (128 / 255 - MEAN) / STD  # 0.5 * 255 = 127.5 rounds (half to even) to 128 as uint8
    pad = (0 - MEAN) / STD
    assert torch.allclose(pixels[0, :, 1:222], torch.tensor(inside, dtype=torch.float32))
    assert torch.allclose(pixels[0, :, [0, 222, 223]], torch.tensor(pad, dtype=torch.float32))


def test_letterbox_round_trip_on_a_non_square_image() -> None:
    h, w = 180, 400  # wider than tall: padded at the top and the bottom
    image = np.zeros((h, w))
    y0, y1, x0, x1 = 40, 120, 150, 310
    image[y0:y1, x0:x1] = 1.0
    board, geometry = letterbox_area(image)
    # where the geometry says the rectangle goes ...
    iy0, ix0 = geometry.to_input(y0, x0)
    iy1, ix1 = geometry.to_input(y1, x1)
    inside = board[int(math.ceil(iy0)) : int(iy1), int(math.ceil(ix0)) : int(ix1)]
    assert inside.size and np.allclose(inside, 1.0)
    assert board[: int(iy0) - 1].max() == 0 and board[:, : int(ix0) - 1].max() == 0
    # ... and the input frame mapped back to the original frame recovers it.
    gy, gx = geometry.sampling_grid((h, w))
    grid = torch.stack(torch.meshgrid(torch.tensor(gy), torch.tensor(gx), indexing="ij")[::-1], -1)
    back = torch.nn.functional.grid_sample(
        torch.tensor(board, dtype=torch.float64)[None, None], grid[None], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    truth = image > 0.5
    found = back > 0.5
    assert (found & truth).sum() / (found | truth).sum() > 0.97
    y, x = 60, 200
    assert geometry.to_original(*geometry.to_input(y, x)) == pytest.approx((y, x))


def test_real_image_preprocess(model) -> None:  # noqa: ANN001
    from xbench_core.io import read_image

    image = read_image(realdata("chexlocalize", "p64541.jpg"))
    pixels, geometry = model.preprocess(image)
    assert geometry.original_size == (2320, 2828) and pixels.shape == (3, 224, 224)
    # Wider than tall: 2320 x 2828 -> 210 x 256, 23 rows of padding on top, minus the 16 cropped.
    assert geometry.offset == (7, -16)
    pad = (0 - MEAN) / STD
    assert torch.allclose(pixels[0, :7], torch.tensor(pad)) and pixels[0, 7:217].std() > 0.1


# ---- fusion and outputs ---------------------------------------------------------------------


def _official_tqn(fusion, image_features, text_features):  # noqa: ANN001, ANN202
    """`TQN_Model.forward` transcribed for one memory item, sequence-first, layer by layer."""
    memory = fusion.decoder_norm(image_features.transpose(0, 1))
    tgt = fusion.decoder_norm(text_features.unsqueeze(1).repeat(1, image_features.shape[0], 1))
    weights = []
    for layer in fusion.decoder.layers:
        tgt2 = layer.norm2(tgt)
        tgt2, w = layer.multihead_attn(query=tgt2, key=memory, value=memory)
        tgt = tgt + tgt2
        tgt = tgt + layer.linear2(torch.relu(layer.linear1(layer.norm3(tgt))))
        weights.append(w)
    out = fusion.mlp_head(fusion.decoder.norm(tgt).transpose(0, 1))
    return out.squeeze(-1), weights


def test_fusion_batching_equals_the_official_per_image_loop(model) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    images = torch.randn(3, 197, 768)
    sentence = torch.randn(4, 768)
    memory = torch.randn(4, 98, 768)
    with torch.no_grad():
        i2t, t2i, attention = model.module.fuse(images, sentence, memory)
        fusion = model.module.fusion_module
        for i in range(3):  # get_dqn_similarities, one image at a time
            ref_i2t, ws = _official_tqn(fusion, images[i : i + 1], sentence)
            ref_t2i, _ = _official_tqn(fusion, memory, images[i : i + 1, 0])
            torch.testing.assert_close(i2t[i], ref_i2t[0], rtol=1e-4, atol=1e-5)
            # [F, 1] -> [1, F] as `t2i_cls.squeeze(-1).transpose(1, 0)` in the official loop
            torch.testing.assert_close(t2i[i], ref_t2i.transpose(1, 0)[0], rtol=1e-4, atol=1e-5)
            for layer in range(4):
                torch.testing.assert_close(attention[layer][i], ws[layer][0], rtol=1e-4, atol=1e-6)
    # the text-to-image pass attends over the memory: changing a word changes its logit only
    memory2 = memory.clone()
    memory2[1, 50] += 1.0
    with torch.no_grad():
        _, t2i_b, _ = model.module.fuse(images, sentence, memory2)
    assert torch.equal(t2i_b[:, [0, 2, 3]], t2i[:, [0, 2, 3]]) and not torch.equal(
        t2i_b[:, 1], t2i[:, 1]
    )


def test_scores_maps_and_logits(model, pixels) -> None:  # noqa: ANN001
    findings = ["pneumonia", "pleural_effusion"]
    queries = encode_queries(model, findings)
    out = forward(model, pixels, queries)
    assert queries.sentence.shape == (2, 768) and queries.memory.shape == (2, 98, 768)
    logits = out.extras["logits"]
    torch.testing.assert_close(logits, (out.extras["i2t_logits"] + out.extras["t2i_logits"]) / 2)
    torch.testing.assert_close(out.scores, torch.sigmoid(logits))
    maps = out.maps["cross_attention"]
    assert maps.shape == (1, 2, 14, 14) and (maps >= 0).all()
    # the global token took part in the softmax: the 196 local weights sum to less than one
    sums = maps.sum((-1, -2))
    assert (sums < 1).all() and (sums > 0.5).all()
    # logits() is differentiable through the image (queries encoded as the engine does)
    captured = {}
    layer = model.feature_layer()

    def hook(module, inputs, output) -> None:  # noqa: ANN001 - returns None: output unchanged
        captured["grid"] = layer.to_grid(output)

    handle = layer.module.register_forward_hook(hook)
    try:
        image = pixels.clone().requires_grad_(True)
        value = model.logits(image, queries)
        # gradient with respect to the image only (weight gradients are not needed here)
        (grad,) = torch.autograd.grad(value[0, 0], image)
    finally:
        handle.remove()
    torch.testing.assert_close(value.detach(), logits, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert captured["grid"].shape == (1, 768, 14, 14)
