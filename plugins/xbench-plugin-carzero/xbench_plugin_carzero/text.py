"""CARZero's text side: prompt clean-up, tokenization and the GLoRIA-style BERT encoder.

Followed: laihaoran/CARZero (fa4e09c)
- `CARZero/models/CARZero_model_dqn_wo_self_atten_gl_mlp.py`, `CARZeroDQNWOSAGLMLP.process_text`
  (sentence split, lower-case ASCII word tokens, sentences of one token or less dropped, tokenizer
  with truncation and padding to `data.text.word_num` = 97);
- `CARZero/models/text_model.py`, `BertEncoder.forward` / `aggregate_tokens` (last 4 hidden states,
  word-pieces summed into words, [CLS] and [SEP] kept as words, zeros padded back to 97 positions,
  words = sum over the 4 layers, sentence = sum over the 4 layers of the mean over all 97
  positions, the zero pads included).

The word merge is written as a 0/1 matrix [97 words x 97 tokens] built from the token ids, so the
encoder runs as one batched matrix product instead of the official per-token Python loop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

WORD_NUM = 97  # data.text.word_num in configs/mimic_pretrain_llm_dqn_wo_self_atten_mlp_gl.yaml
LAST_N_LAYERS = 4  # model.text.last_n_layers

_NUMBERED = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")  # nltk RegexpTokenizer(r"\w+") is re.findall with this pattern


def process_text(text: str) -> str:
    """Clean a prompt the way CARZero's `process_text` does before tokenization.

    Newlines become spaces; the text is split into sentences at numbered items ("1.") and at
    periods; each sentence is lower-cased and cut into `\\w+` tokens; a sentence of one token or less
    is dropped (so "There is X" needs two words or more); non-ASCII characters are removed from
    tokens (a token left empty is dropped); the kept sentences are joined with spaces.
    """
    text = text.replace("\n", " ")
    pieces = [sentence for point in _NUMBERED.split(text) for sentence in point.split(".")]
    sentences = []
    for piece in pieces:
        piece = piece.replace("\ufffd\ufffd", " ")
        tokens = _WORD.findall(piece.lower())
        if len(tokens) <= 1:  # counted before the ASCII filter, as in the official code
            continue
        kept = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
        sentences.append(" ".join(t for t in kept if t))
    return " ".join(sentences)


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Clean and tokenize prompts: ids, attention mask and token types, padded to 97."""
    cleaned = [process_text(p) for p in prompts]
    encoded = tokenizer(
        cleaned,
        return_tensors="pt",
        truncation=True,
        padding="max_length",
        max_length=WORD_NUM,
        return_token_type_ids=True,
    )
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "token_type_ids": encoded["token_type_ids"],
    }


def word_groups(ids: Sequence[int], vocabulary: dict[int, str], sep_id: int) -> list[list[int]]:
    """Token positions that make up each word, as `BertEncoder.aggregate_tokens` merges them.

    A token starting with "##" joins the current word; any other token starts a new word; [SEP]
    closes the current word, is a word of its own, and ends the sequence (the padding after it is
    never read).
    """
    groups: list[list[int]] = []
    bank: list[int] = []
    for position, token_id in enumerate(ids):
        if token_id == sep_id:
            if bank:
                groups.append(bank)
            groups.append([position])
            return groups
        if vocabulary[int(token_id)].startswith("##"):
            bank.append(position)
        else:
            if bank:
                groups.append(bank)
            bank = [position]
    raise ValueError("a tokenized prompt has no [SEP] token; the tokenizer does not add one")


def merge_matrix(input_ids: torch.Tensor, vocabulary: dict[int, str], sep_id: int) -> torch.Tensor:
    """[N, 97 words, 97 tokens] 0/1 matrices: word w of prompt n is the sum of its word-pieces."""
    n, length = input_ids.shape
    merge = torch.zeros(n, length, length)
    for row, ids in enumerate(input_ids.tolist()):
        for word, positions in enumerate(word_groups(ids, vocabulary, sep_id)):
            merge[row, word, positions] = 1.0
    return merge


class TextEncoder(nn.Module):
    """GLoRIA-style BERT encoder (`text_encoder` in the official model; the BERT is `.model`)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.model = bert

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        merge: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (sentence embeddings [N, D], word embeddings [N, 97, D])."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        hidden = torch.stack(out.hidden_states[-LAST_N_LAYERS:], dim=1)  # [N, 4, T, D]
        words = torch.einsum("nwt,nltd->nlwd", merge.to(hidden.dtype), hidden)  # [N, 4, 97, D]
        # The mean runs over all 97 positions, the zero pads included, as in the official code.
        sentence = words.mean(dim=2).sum(dim=1)
        return sentence, words.sum(dim=1)
