"""The CARZero model object for XBench: building, loading, queries, forward, maps.

Followed: laihaoran/CARZero (fa4e09c), `CARZero/CARZero.py`:
- `load_CARZero`: Lightning checkpoint, `state_dict` keys prefixed `CARZero.`, strict load;
- `get_dqn_similarities` (the zero-shot score of `dqn_shot_classification`): the mean of the
  image-to-text and text-to-image logits of the fusion module;
- `get_grounding_map` / `conve_attention_map`: the image-to-text cross-attention of the 4 decoder
  layers, the global token (memory index 0) dropped, the 4 layers averaged, viewed as 14 x 14. The
  rows no longer sum to one (the softmax included the global token) and are kept as they are.
The official code ranks the raw mean logit (AUC); XBench needs a probability, so the score is the
sigmoid of that mean, which keeps the ranking (`get_query_similarities`, the other official path,
applies a sigmoid too).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xbench_blocks.frozen_text import BIO_CLINICALBERT_SHAPE

from xbench_core import (
    AssetError,
    FeatureLayer,
    Geometry,
    Model,
    ModelOutput,
    Phrase,
    UnsupportedFinding,
)
from xbench_core.assets import resolve_asset
from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

from .network import GRID, CARZeroNetwork
from .preprocess import preprocess_image
from .prompts import PROMPTS
from .text import merge_matrix, tokenize

TEXT_HUB_ID = "Laihaoran/BioClinicalMPBERT"
CHECKPOINT_FILE = "CARZero_best_model.ckpt"
CHECKPOINT_HINT = (
    "download CARZero_best_model.ckpt from the link in the README of github.com/laihaoran/CARZero "
    "(Google Drive file 1kYF-k5otW5DHwz1En5d_ScV3zu2E27Ch)"
)
# Older transformers saved BERT's position ids as a buffer; the model has none now.
POSITION_IDS = "text_encoder.model.embeddings.position_ids"
# BioClinicalMPBERT has Bio_ClinicalBERT's shape (BERT-base, cased vocabulary of 28996 word-pieces):
# the random-weights text tower uses the library's table of it.
BERT_SHAPE = BIO_CLINICALBERT_SHAPE


@dataclass(frozen=True)
class CARZeroQueries:
    """The encoded prompts: sentence embeddings [F, 768] (image-to-text queries) and the
    text-to-image memory [F, 98, 768] (sentence embedding, then the 97 word embeddings)."""

    findings: tuple[str, ...]
    prompts: tuple[str, ...]
    sentence: torch.Tensor
    memory: torch.Tensor


class CARZero(Model):
    """CARZero zero-shot classifier with its cross-attention map (see the module docstring)."""

    map_kind = "cross_attention"

    def __init__(self, checkpoint: str | None = None, text_encoder: str | None = None) -> None:
        from transformers import BertConfig, BertModel, BertTokenizer

        self.random_weights = str(checkpoint or "").strip().lower() == "random"
        self.queries = dict(PROMPTS)
        # Found before anything is built, so that a missing file fails fast.
        path = None if self.random_weights else _checkpoint_path(checkpoint)
        with tempfile.TemporaryDirectory(prefix="xbench-carzero-") as scratch:
            folder = self._text_folder(text_encoder, Path(scratch))
            self.tokenizer = BertTokenizer.from_pretrained(str(folder))
            config = BertConfig.from_pretrained(str(folder))
        self._vocabulary = {index: token for token, index in self.tokenizer.get_vocab().items()}
        where = (
            "the generated vocabulary" if text_encoder is None else f"text_encoder {text_encoder}"
        )
        if len(self._vocabulary) != config.vocab_size or self.tokenizer.sep_token_id is None:
            raise AssetError(
                f"CARZero text encoder: {where} has {len(self._vocabulary)} word-pieces (with "
                f"[SEP]: {self.tokenizer.sep_token_id is not None}) but its config says "
                f"{config.vocab_size}; pass the BioClinicalMPBERT folder (config.json, vocab.txt)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights are the same on every build
            self.module = CARZeroNetwork(BertModel(config, add_pooling_layer=True))
            _initialize(self.module)
        if path is not None:
            # The Lightning file keeps the weights under 'state_dict' (found automatically; a
            # converted .safetensors file has them at the top level) next to a pickled OmegaConf
            # config, which the safe reader leaves as inert data.
            state = load_checkpoint(path, strip_prefixes=("CARZero.",), drop=(POSITION_IDS,))
            load_state_dict_strict(self.module, state, source=str(path))
        self.module.eval()

    # ---- assets ------------------------------------------------------------------------------
    def _text_folder(self, text_encoder: str | None, scratch: Path) -> Path:
        """The folder with the BERT config and vocabulary (the weights come from the checkpoint).

        With random weights and no `text_encoder`, a full-size config with a generated vocabulary
        is written to `scratch`, so that nothing needs to be downloaded.
        """
        if self.random_weights and text_encoder is None:
            from xbench_blocks.text import write_bert_folder

            return write_bert_folder(scratch / "bert", **BERT_SHAPE)
        found = {}
        for filename in ("config.json", "vocab.txt"):
            found[filename] = resolve_asset(
                f"CARZero text encoder {filename}",
                text_encoder,
                env="XBENCH_CARZERO_TEXT_ENCODER",
                hub_repo=TEXT_HUB_ID,
                filename=filename,
                option="carzero.text_encoder",
                hint="the BioClinicalMPBERT folder: config.json and vocab.txt",
            )
        folder = found["config.json"].parent
        if found["vocab.txt"].parent != folder:
            raise AssetError(
                f"the CARZero text encoder's config.json ({found['config.json']}) and vocab.txt "
                f"({found['vocab.txt']}) are in different folders; put both in one folder and pass "
                "it with --set carzero.text_encoder=FOLDER"
            )
        return folder

    # ---- the Model interface -----------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Letterbox to 256 (area), center crop 224, CXR_MAE normalization, grey to 3 channels."""
        pixels, geometry = preprocess_image(image)
        return torch.from_numpy(pixels), geometry

    def encode_queries(self, findings: Sequence[str]) -> CARZeroQueries:
        """Encode the "There is ..." prompts of these findings once (text encoder only)."""
        missing = [f for f in findings if f not in self.queries]
        if missing:
            raise UnsupportedFinding(
                f"CARZero has no prompt for {', '.join(missing)}; supported findings: "
                f"{', '.join(sorted(self.queries))}"
            )
        prompts = [self.queries[f] for f in findings]
        self._phrases: dict[str, Any] = {}  # a new run's text side: no phrase cached from other weights
        sentence, memory = self._encode_prompts(prompts)
        return CARZeroQueries(tuple(findings), tuple(prompts), sentence, memory)

    def encode_phrases(self, phrases: Sequence[Phrase]) -> CARZeroQueries:
        """Phrase grounding: each phrase's text is the prompt as it is (CARZero learned its text
        side from report sentences, the very kind of text MS-CXR phrases are); cached by text."""
        cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = self.__dict__.setdefault("_phrases", {})
        new = list(dict.fromkeys(p.text for p in phrases if p.text not in cache))
        if new:
            sentence, memory = self._encode_prompts(new)
            cache.update((t, (sentence[i], memory[i])) for i, t in enumerate(new))
        texts = [p.text for p in phrases]
        return CARZeroQueries(
            tuple(p.finding for p in phrases),
            tuple(texts),
            torch.stack([cache[t][0] for t in texts]),
            torch.stack([cache[t][1] for t in texts]),
        )

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentence embeddings [N, 768] and the text-to-image memory [N, 98, 768] of these prompts."""
        tokens = tokenize(self.tokenizer, prompts)
        merge = merge_matrix(tokens["input_ids"], self._vocabulary, self.tokenizer.sep_token_id)
        # BERT runs only up to the longest prompt: the padding tokens after it are masked out of
        # every real token's attention, and only tokens up to [SEP] are merged into words, so the
        # result is the official one (the 97 word positions and the mean over 97 are kept).
        length = int(tokens["attention_mask"].sum(dim=1).max())
        device = self.device
        sentence, words = self.module.text_encoder(
            tokens["input_ids"][:, :length].to(device),
            tokens["attention_mask"][:, :length].to(device),
            tokens["token_type_ids"][:, :length].to(device),
            merge[:, :, :length].to(device),
        )
        return sentence, torch.cat([sentence[:, None], words], dim=1)

    def _passes(
        self, pixels: torch.Tensor, queries: CARZeroQueries, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        tokens = self.module.img_encoder(pixels)
        sentence = queries.sentence.to(tokens.device)
        memory = queries.memory.to(tokens.device)
        return self.module.fuse(tokens, sentence, memory, need_weights=need_weights)

    def logits(self, pixels: torch.Tensor, queries: CARZeroQueries) -> torch.Tensor:
        """Differentiable [B, F]: the mean of the image-to-text and text-to-image logits."""
        i2t, t2i, _ = self._passes(pixels, queries, need_weights=False)
        return (i2t + t2i) / 2

    def forward(self, pixels: torch.Tensor, queries: CARZeroQueries) -> ModelOutput:
        """Scores sigmoid(mean logit) [B, F] and the cross-attention maps [B, F, 14, 14]."""
        i2t, t2i, attention = self._passes(pixels, queries, need_weights=True)
        logits = (i2t + t2i) / 2
        # conve_attention_map: (ws[-4] + ws[-3] + ws[-2] + ws[-1]) / 4 after dropping index 0.
        local = [w[:, :, 1:] for w in attention]
        maps = (local[-4] + local[-3] + local[-2] + local[-1]) / 4
        maps = maps.reshape(maps.shape[0], maps.shape[1], GRID, GRID).float()
        return ModelOutput(
            scores=torch.sigmoid(logits.float()),
            maps={"cross_attention": maps},
            extras={"logits": logits, "i2t_logits": i2t, "t2i_logits": t2i},
        )

    def feature_layer(self) -> FeatureLayer:
        """The last ViT block; its 196 patch tokens reshaped to [B, 768, 14, 14]."""
        return FeatureLayer(self.module.img_encoder.model.blocks[-1], _tokens_to_grid)


def _checkpoint_path(checkpoint: str | None) -> Path:
    """The checkpoint file: the option, $XBENCH_CARZERO_CHECKPOINT, the cache, or a Hub id."""
    return resolve_asset(
        "CARZero checkpoint",
        checkpoint,
        env="XBENCH_CARZERO_CHECKPOINT",
        filename=CHECKPOINT_FILE,
        option="carzero.checkpoint",
        hint=CHECKPOINT_HINT,
    )


def _tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens[:, 1:].transpose(1, 2).reshape(b, d, GRID, GRID)


def _initialize(network: CARZeroNetwork) -> None:
    """Random weights as the official initializers give them (replaced when a checkpoint loads)."""
    vit = network.img_encoder.model
    torch.nn.init.normal_(vit.cls_token, std=0.02)
    torch.nn.init.normal_(vit.pos_embed, std=0.02)
    # TQN_Model._init_weights
    for module in network.fusion_module.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.in_proj_weight.data.normal_(mean=0.0, std=0.02)
            module.out_proj.weight.data.normal_(mean=0.0, std=0.02)
