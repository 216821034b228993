"""DeViDe wrapped for XBench: weights, preprocessing, queries, scores and the cross-attention map.

DeViDe has no public code or checkpoint. The architecture follows the paper (arXiv 2404.03618) on
KAD's code base (see network.py), and the inference recipe follows KAD's test scripts
(xiaoman-zhang/KAD `A3_CLIP/test_chexpert.py`, `dataset/test_dataset.py`,
`plot_visualize_512.py`): squash-resize bicubic with ImageNet statistics, disease phrases
tokenized to 256 tokens, score = softmax([neg, pos])[pos], map = decoder cross-attention of the
finding's query on the 14 x 14 patch grid. None of it has been checked against released weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench_core import (
    AssetError,
    ConfigError,
    FeatureLayer,
    Geometry,
    Model,
    ModelOutput,
    UnsupportedFinding,
    load_checkpoint,
    load_state_dict_strict,
    resolve_asset,
)

from .network import IMAGE_SIZE, PATCH, DeViDeNetwork
from .queries import QUERIES

# ---- where a checkpoint keeps each part: THE table to edit once the real checkpoint is known ----
# Our module's state_dict prefix -> (the checkpoint's container key, the key prefix inside it).
# The guess is KAD's `best_valid.pt` layout (three sub-dicts, no prefix), since DeViDe is built
# on KAD's code. A container of None means the top level of the file (a flat state_dict); for a
# DataParallel `module.` prefix, put it in the second field.
CHECKPOINT_KEYS: dict[str, tuple[str | None, str]] = {
    "image_encoder.": ("image_encoder", ""),
    "text_encoder.": ("text_encoder", ""),
    "fusion.": ("model", ""),
}
# Keys a checkpoint may carry that the module does not have (as in the file, inside a container):
# buffers that transformers < 4.31 saved with BertModel and ViTModel.
CHECKPOINT_DROP = (
    "bert_model.embeddings.position_ids",
    "bert_model.embeddings.token_type_ids",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LENGTH = 256
DEFAULT_TEXT_ENCODER = "xmcmic/Med-KEBERT"
CHECKPOINT_ENV = "XBENCH_DEVIDE_CHECKPOINT"
TEXT_ENCODER_ENV = "XBENCH_DEVIDE_TEXT_ENCODER"
CHECKPOINT_HINT = (
    "DeViDe's weights are not public; ask the authors (Luo et al., arXiv 2404.03618) or the "
    "XBench release, or use checkpoint=random"
)
ATTENTION_LAYERS = ("last", "mean")

BERT_BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)


class DeViDe(Model):
    """DeViDe (Luo et al., 2024) as the paper describes it: ViT-B/16 at 224, Med-KEBERT disease
    phrases, a KAD-style query decoder with [negative, positive] logits."""

    map_kind = "cross_attention"

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        attention_layers: str = "last",
    ) -> None:
        if attention_layers not in ATTENTION_LAYERS:
            raise ConfigError(
                f"devide.attention_layers must be one of {ATTENTION_LAYERS}, got {attention_layers!r}"
            )
        self.attention_layers = attention_layers
        self.queries = dict(QUERIES)
        self.random_weights = checkpoint == "random"
        self.checkpoint: Path | None = None
        if not self.random_weights:
            self.checkpoint = resolve_asset(
                "DeViDe checkpoint",
                checkpoint,
                env=CHECKPOINT_ENV,
                option="devide.checkpoint",
                hint=CHECKPOINT_HINT,
            )
        bert_config, self.tokenizer = _text_side(text_encoder, random=self.random_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.module = DeViDeNetwork(bert_config, initialize=self.checkpoint is None)
        if self.checkpoint is not None:
            load_devide_checkpoint(self.module, self.checkpoint)
        self.module.eval()

    # ---- data side ------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Gray H x W [0, 1] -> ImageNet-normalised 3 x 224 x 224 (squash, bicubic), with its Geometry.

        As KAD's test transform on an 8-bit RGB image: the resize runs on the 8-bit image with
        Pillow (two passes with an 8-bit intermediate), which a float resize would not reproduce.
        """
        from PIL import Image

        gray = np.asarray(image, np.float32)
        size = (IMAGE_SIZE, IMAGE_SIZE)
        eight_bit = np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
        resized = Image.fromarray(eight_bit).resize(size[::-1], Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, np.float32) / np.float32(255.0))
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return ((pixels.unsqueeze(0) - mean) / std).contiguous(), Geometry.squash(
            gray.shape[:2], size
        )

    def encode_queries(self, findings: Sequence[str]) -> torch.Tensor:
        """Query embeddings [F, 768] (`mlp_embed` of Med-KEBERT's pooler output) for the findings."""
        unknown = [f for f in findings if f not in self.queries]
        if unknown:
            raise UnsupportedFinding(
                f"DeViDe has no query for {unknown}; supported findings: {sorted(self.queries)}"
            )
        # The official call pads every phrase to 256 tokens (`pad_to_max_length=True`). Padding
        # is masked out of BERT's attention, so padding to the longest phrase gives the same
        # embeddings (up to float rounding; a test checks it) about 50 times faster.
        tokens = self.tokenizer(
            [self.queries[f] for f in findings],
            add_special_tokens=True,
            max_length=MAX_LENGTH,
            padding="longest",
            truncation=True,
            return_tensors="pt",
        )
        return self.module.text_encoder(
            tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        )

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, queries: torch.Tensor) -> ModelOutput:
        """Scores softmax([neg, pos])[pos] [B, F]; cross-attention [B, F, 14, 14] of the last
        decoder layer (`attention_layers: last`) or the mean of the four (`mean`).

        `extras["projected"]` holds each finding's decoded feature in the description embedding
        space ([B, F, 768], unit norm), the paper's multi-description alignment head."""
        logits, maps, features = self.module(pixels, queries)
        scores = torch.softmax(logits.float(), dim=-1)[..., 1]
        if self.attention_layers == "last":
            attention = maps[-1].float()
        else:
            attention = torch.stack([m.float() for m in maps]).mean(0)
        grid = (pixels.shape[-2] // PATCH, pixels.shape[-1] // PATCH)
        attention = attention.reshape(*attention.shape[:2], *grid)
        projected = self.module.fusion.project(features).float()
        return ModelOutput(
            scores=scores, maps={self.map_kind: attention}, extras={"projected": projected}
        )

    def logits(self, pixels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """pos - neg logit [B, F]: its sigmoid is the score, so its gradient explains the score."""
        if queries.is_inference():
            # Queries cached under inference mode cannot take part in a graph; a copy can.
            queries = queries.clone()
        logits, _, _ = self.module(pixels, queries)
        return (logits[..., 1] - logits[..., 0]).float()

    def feature_layer(self) -> FeatureLayer:
        """The ViT's final layernorm: tokens [B, 197, 768] -> grid [B, 768, 14, 14]."""
        return FeatureLayer(module=self.module.image_encoder.vit.layernorm, to_grid=tokens_to_grid)


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """[B, 1 + h*w, D] ViT tokens -> [B, D, h, w] (class token dropped, row-major patches)."""
    patches = tokens[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], side, side)


# ---- text encoder files -------------------------------------------------------------------------
def _text_side(given: str | None, *, random: bool) -> tuple[Any, Any]:
    """(BertConfig, tokenizer) from the text encoder folder or hub id; generated for random."""
    if random and given is None:
        from xbench_core.text import write_bert_folder

        with tempfile.TemporaryDirectory(prefix="xbench-devide-bert-") as tmp:
            return _read_text_folder(write_bert_folder(tmp, **BERT_BASE))
    return _read_text_folder(resolve_text_encoder(given))


def resolve_text_encoder(given: str | None) -> Path:
    """The folder with Med-KEBERT's config and tokenizer files (weights come from the checkpoint)."""
    value = given or os.environ.get(TEXT_ENCODER_ENV) or None
    if value is not None and Path(value).expanduser().exists():
        folder = Path(value).expanduser()
        missing = [n for n in ("config.json", "vocab.txt") if not (folder / n).is_file()]
        if not folder.is_dir() or missing:
            raise AssetError(
                f"the DeViDe text encoder {folder} must be a folder with config.json and "
                f"vocab.txt (missing: {missing or 'it is a file'}); pass the Med-KEBERT folder "
                "with --set devide.text_encoder=FOLDER"
            )
        return folder
    found = None
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        try:
            found = resolve_asset(
                "Med-KEBERT text encoder",
                value,
                env=TEXT_ENCODER_ENV,
                hub_repo=DEFAULT_TEXT_ENCODER,
                filename=name,
                option="devide.text_encoder",
            )
        except AssetError:
            if name in ("config.json", "vocab.txt"):
                raise
    assert found is not None
    return found.parent


def _read_text_folder(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BertConfig

    config = BertConfig.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), do_lower_case=True)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the text encoder in {folder} has {len(tokenizer)} tokens in its vocabulary but "
            f"{config.vocab_size} embeddings in config.json; pass a matching Med-KEBERT folder"
        )
    return config, tokenizer


# ---- checkpoint -----------------------------------------------------------------------------------
def to_checkpoint_layout(state: Mapping[str, torch.Tensor]) -> dict[Any, dict[str, torch.Tensor]]:
    """Our module's state_dict arranged as CHECKPOINT_KEYS says a checkpoint holds it:
    {container: {key: tensor}} (container None = the top level)."""
    out: dict[Any, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        ours = next(p for p in CHECKPOINT_KEYS if key.startswith(p))
        container, theirs = CHECKPOINT_KEYS[ours]
        out.setdefault(container, {})[theirs + key[len(ours) :]] = value
    return out


def read_devide_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors renamed to our module's keys, following CHECKPOINT_KEYS."""
    state: dict[str, torch.Tensor] = {}
    cache: dict[Any, dict[str, torch.Tensor]] = {}
    claimed: set[tuple[Any, str]] = set()
    for ours, (container, theirs) in CHECKPOINT_KEYS.items():
        if container not in cache:
            cache[container] = load_checkpoint(path, container=container, drop=CHECKPOINT_DROP)
        for key, value in cache[container].items():
            if key.startswith(theirs):
                state[ours + key[len(theirs) :]] = value
                claimed.add((container, key))
    # Keys no entry of the table claims stay visible, so that the strict load reports them.
    for container, tensors in cache.items():
        for key, value in tensors.items():
            if (container, key) not in claimed:
                state[f"{container or ''}/{key}"] = value
    return state


def load_devide_checkpoint(module: DeViDeNetwork, path: str | Path) -> None:
    """Load a checkpoint strictly into the network; errors list the offending keys."""
    load_state_dict_strict(module, read_devide_checkpoint(path), source=str(path))
