"""Local BERT folders with a generated WordPiece vocabulary.

Used for `checkpoint: random` (a model needs no file at all, its text tower included) and by tests
(tiny text encoders, never a download). The vocabulary is deterministic: special tokens, the words of
the finding vocabulary and of common radiology prompts, single characters and their `##` pieces, then
`[unusedN]` fillers up to the requested size, so that a full-size embedding table has its official
shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xbench_core import FINDINGS

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# BERT-base (the `bert-base-*` config.json): the shape of most released text towers, which differ
# in their vocabularies; `write_bert_folder(folder, vocab_size=N, **BERT_BASE)` is a full-size one.
BERT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
_COMMON = (
    "there is no a an the of in on and or with without left right lung lungs chest pleural "
    "effusion opacity opacities seen signs evidence small large findings heart size normal "
    "abnormal bilateral lower upper lobe base apex present absent disease it located at "
    "may appear as area areas region regions density increased decreased shadow air fluid "
    "border shape texture patterns location other photo x ray radiograph image of"
)


def generated_vocabulary(size: int | None = None, extra_words: Iterable[str] = ()) -> list[str]:
    """A deterministic WordPiece vocabulary, padded with `[unusedN]` to `size` if given."""
    words: list[str] = []
    seen: set[str] = set()

    def add(token: str) -> None:
        if token and token not in seen:
            seen.add(token)
            words.append(token)

    for tok in SPECIAL:
        add(tok)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,;:-/()'\"!?%":
        add(ch)
        add("##" + ch)
    text = " ".join([_COMMON, *(f.display + " " + " ".join(f.synonyms) for f in FINDINGS)])
    for word in re.findall(r"[a-z0-9]+", " ".join([text, *extra_words]).lower()):
        add(word)
    if size is not None:
        if len(words) > size:
            raise ValueError(f"a vocabulary of {size} tokens cannot hold the {len(words)} base tokens")
        words += [f"[unused{i}]" for i in range(size - len(words))]
    return words


def write_bert_folder(
    folder: str | Path,
    *,
    vocab: list[str] | None = None,
    vocab_size: int | None = None,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    weights: bool = False,
    seed: int = 0,
    lower_case: bool = True,
    **config: Any,
) -> Path:
    """Write a BERT folder (config, vocabulary, tokenizer files, optionally random weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocab if vocab is not None else generated_vocabulary(vocab_size)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        **config,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    tok_cfg = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lower_case,
        "model_max_length": max_position_embeddings,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: tok_cfg[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")})
    )
    if weights:
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        BertModel(BertConfig(**cfg)).save_pretrained(folder)
    return folder
