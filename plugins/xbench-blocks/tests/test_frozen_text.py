"""Frozen BERT query embeddings (MedKLIP, MAVL): the ALBEF tokenizer without [SEP] at length 64,
CLS vectors on trimmed batches, the text encoder's resolution, and the on-disk cache (reuse and
invalidation by texts and weights). Tiny local BERTs only, never a download."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from xbench_blocks import frozen_text as frozen_module  # noqa: E402
from xbench_blocks.frozen_text import (  # noqa: E402
    FrozenTextEncoder,
    embed_texts,  # noqa: E402
    resolve_text_encoder,
    tokenize_without_sep,
)
from xbench_blocks.text import generated_vocabulary, write_bert_folder  # noqa: E402

from xbench_core import AssetError  # noqa: E402

ENV = "XBENCH_UNSET_ENV_FOR_FROZEN_TEXT_TEST"
_WORDS = ["effusion", "opacity", "border", "pneumonia", "changed", "text", "lung", "base"]


def _tiny_bert(folder: Path, seed: int = 0, weights: bool = True) -> Path:
    return write_bert_folder(
        folder,
        vocab=generated_vocabulary(extra_words=_WORDS),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        weights=weights,
        seed=seed,
    )


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_import_stays_light() -> None:
    code = (
        "import sys, xbench_blocks; "
        "assert not {'torch', 'numpy', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokenizer_has_no_sep_and_pads_to_64(tmp_path) -> None:
    from transformers import BertTokenizer

    folder = write_bert_folder(tmp_path / "bert", vocab=generated_vocabulary(size=600))
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    assert len(tokenizer) == 600  # the vocabulary really loaded (transformers 5 pitfall)
    texts = ["Pleural effusion is seen in the left lung.", " ".join(["opacity"] * 100), ""]
    ids, mask = tokenize_without_sep(tokenizer, texts)
    assert tuple(ids.shape) == (3, 64) and tuple(mask.shape) == (3, 64)
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert not (ids == tokenizer.sep_token_id).any()
    stock = tokenizer(texts[0])["input_ids"]  # [CLS] ... [SEP] from the stock tokenizer
    assert stock[-1] == tokenizer.sep_token_id
    n = len(stock) - 1
    assert ids[0, :n].tolist() == stock[:-1]
    assert ids[0, n:].eq(tokenizer.pad_token_id).all() and mask[0].sum() == n
    assert mask[1].sum() == 64  # truncated to [CLS] + 63 word pieces
    assert ids[1, 1:].eq(tokenizer.convert_tokens_to_ids("opacity")).all()
    assert mask[2].tolist() == [1] + [0] * 63  # an empty text is [CLS] alone


def test_embeddings_skip_masked_padding_exactly(tiny_bert) -> None:
    encoder = resolve_text_encoder(str(tiny_bert), allow_random=False, env=ENV, option="x")
    with encoder.load() as (tokenizer, bert):
        texts = ["effusion text", "mass of fluid in the left lung base", "clear", "air of lung"]
        ids, mask = tokenize_without_sep(tokenizer, texts)
        # batches of two, sorted by length, each cut to its longest text, returned in input order
        trimmed = frozen_module.bert_cls_embeddings(bert, ids, mask, batch_size=2)
        with torch.no_grad():
            full = bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def test_text_encoder_without_weights_needs_random_checkpoint(tmp_path) -> None:
    folder = _tiny_bert(tmp_path / "bert", weights=False)
    with pytest.raises(AssetError, match="MedKLIP's checkpoint does not carry") as info:
        resolve_text_encoder(
            str(folder), allow_random=False, env=ENV, option="medklip.text_encoder", model="MedKLIP"
        )
    assert "no weights" in str(info.value)
    encoder = resolve_text_encoder(str(folder), allow_random=True, env=ENV, option="x")
    assert isinstance(encoder, FrozenTextEncoder) and encoder.random and encoder.folder == folder
    with pytest.raises(AssetError, match="has no config.json or vocab.txt"):
        resolve_text_encoder(str(tmp_path), allow_random=True, env=ENV, option="x")
    generated = resolve_text_encoder(None, allow_random=True, env=ENV, option="x")
    assert generated.random and generated.folder is None


def test_text_encoder_weights_that_do_not_fit_are_an_error(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _tiny_bert(tmp_path / "bert")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.layer.0.attention.self.query.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    encoder = resolve_text_encoder(str(folder), allow_random=False, env=ENV, option="x")
    with pytest.raises(AssetError, match="encoder.layer.0.attention.self.query.weight"):
        with encoder.load():
            pass


def test_query_cache_is_reused_and_invalidated(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    calls = []
    original = frozen_module.bert_cls_embeddings

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(frozen_module, "bert_cls_embeddings", counting)
    bert = _tiny_bert(tmp_path / "bert", seed=0)
    texts = [f"{word} text" for word in _WORDS]

    def embed(these: list[str] = texts, tag: str = "medklip") -> torch.Tensor:
        encoder = resolve_text_encoder(str(bert), allow_random=False, env=ENV, option="x")
        return embed_texts(encoder, these, tag=tag)

    first = embed()
    assert len(calls) == 1 and tuple(first.shape) == (len(texts), 32)
    assert first.dtype == torch.float32
    assert len(list((tmp_path / "home" / "queries").glob("medklip-*.safetensors"))) == 1
    again = embed()
    assert len(calls) == 1 and torch.equal(first, again)  # read back from the cache
    # the tag is the cache file's prefix (one plugin's entries never clash with another's)
    torch.testing.assert_close(embed(tag="mavl"), first)
    assert len(calls) == 2
    assert len(list((tmp_path / "home" / "queries").glob("mavl-*.safetensors"))) == 1
    changed = embed([*texts[:-1], "base text changed"])
    assert len(calls) == 3 and not torch.equal(changed[-1], first[-1])
    torch.testing.assert_close(changed[:-1], first[:-1])
    time.sleep(0.01)  # a new mtime for the rewritten weights
    _tiny_bert(tmp_path / "bert", seed=1)  # the same folder, other weights
    other = embed()
    assert len(calls) == 4 and not torch.allclose(other, first)


def test_unreadable_cache_entry_is_recomputed(tmp_path, monkeypatch, tiny_bert) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    encoder = resolve_text_encoder(str(tiny_bert), allow_random=False, env=ENV, option="x")
    first = embed_texts(encoder, ["effusion text"], tag="t")
    (entry,) = (tmp_path / "home" / "queries").glob("t-*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    torch.testing.assert_close(embed_texts(encoder, ["effusion text"], tag="t"), first)
