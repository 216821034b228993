"""KAD wrapped for XBench: weights, preprocessing, queries, scores and the cross-attention map.

Followed (xiaoman-zhang/KAD, commit 591d999):
- `A3_CLIP/test_chestxray14.py`, `test_chexpert.py`: building the three networks, loading
  `best_valid.pt` (`image_encoder`, `text_encoder`, `model`), `get_text_features` (tokenizer with
  `add_special_tokens=True, max_length=256, pad_to_max_length=True`), the score
  `softmax(logits, -1)[..., 1]`.
- `A3_CLIP/dataset/test_dataset.py` (`CheXpert_Dataset`, `Padchest_Dataset`): RGB, `Resize([r, r],
  BICUBIC)`, ImageNet mean and std.
- `A3_CLIP/plot_visualize_512.py`: the localization map is the last decoder layer's cross-attention
  (head-averaged) of the finding's query, reshaped to the 16 x 16 token grid.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbench_core import (
    AssetError,
    CheckpointError,
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

from .network import RESNET_ALIASES, KADNetwork
from .queries import QUERIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LENGTH = 256  # --max_length of the official test scripts
STRIDE = 32  # ResNet-50 up to layer4
DEFAULT_TEXT_ENCODER = "xmcmic/Med-KEBERT"
CHECKPOINT_ENV = "XBENCH_KAD_CHECKPOINT"
TEXT_ENCODER_ENV = "XBENCH_KAD_TEXT_ENCODER"
CHECKPOINT_HINT = (
    "KAD_Models/KAD_512/best_valid.pt or KAD_Models/KAD_1024/best_valid.pt from the Google Drive "
    "folder 1xWVVJRfnm_wIgUpbn9ftsW4K5XKU0i0- (or Baidu, code m35f) linked from the README of "
    "github.com/xiaoman-zhang/KAD; or use checkpoint=random"
)

# Our submodule -> the sub-dict of best_valid.pt that holds its weights.
SUBDICTS = {"image_encoder": "image_encoder", "text_encoder": "text_encoder", "fusion": "model"}
# Buffers that transformers < 4.31 saved with BertModel and today's BertModel does not keep.
OLD_BERT_BUFFERS = ("bert_model.embeddings.position_ids", "bert_model.embeddings.token_type_ids")

# Med-KEBERT's shape (BERT-base, uncased, 30522 tokens), for checkpoint=random without files.
BERT_BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)


class KAD(Model):
    """KAD (Zhang et al., Nature Communications 2023): ResNet-50 at 512 or 1024, Med-KEBERT
    disease-phrase queries, a 4-layer query decoder with [negative, positive] logits."""

    map_kind = "cross_attention"

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        resolution: int = 512,
    ) -> None:
        if resolution not in (512, 1024):
            raise ConfigError(f"kad.resolution must be 512 or 1024, got {resolution!r}")
        self.resolution = int(resolution)
        self.queries = dict(QUERIES)
        self.random_weights = checkpoint == "random"
        self.checkpoint: Path | None = None
        if not self.random_weights:
            # Resolved first: a missing checkpoint is reported before anything is built.
            self.checkpoint = resolve_asset(
                f"KAD-{self.resolution} checkpoint",
                checkpoint,
                env=CHECKPOINT_ENV,
                filename="best_valid.pt",
                option="kad.checkpoint",
                hint=CHECKPOINT_HINT,
            )
        bert_config, self.tokenizer = _text_side(text_encoder, random=self.random_weights)
        # Seeded and isolated, so that a random-weight model is the same in every process and
        # building one does not disturb the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.module = KADNetwork(bert_config, initialize=self.checkpoint is None)
        if self.checkpoint is not None:
            load_kad_checkpoint(self.module, self.checkpoint)
        self.module.eval()

    # ---- data side ------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Gray H x W [0, 1] -> ImageNet-normalised 3 x r x r (squash, bicubic), with its Geometry.

        The official pipeline resizes an 8-bit RGB PIL image. Pillow resizes 8-bit images in two
        passes with an 8-bit intermediate (clamped, rounded), which a float resize does not
        reproduce at edges, so the resize runs on the 8-bit image exactly as the official one does;
        the three RGB channels of a gray image are equal.
        """
        from PIL import Image

        gray = np.asarray(image, np.float32)
        size = (self.resolution, self.resolution)
        eight_bit = np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
        resized = Image.fromarray(eight_bit).resize(size[::-1], Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, np.float32) / np.float32(255.0))
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        geometry = Geometry.squash(gray.shape[:2], size)
        return ((pixels.unsqueeze(0) - mean) / std).contiguous(), geometry

    def encode_queries(self, findings: Sequence[str]) -> torch.Tensor:
        """Query embeddings [F, 768] (`mlp_embed` of Med-KEBERT's pooler output) for the findings."""
        unknown = [f for f in findings if f not in self.queries]
        if unknown:
            raise UnsupportedFinding(
                f"KAD has no query for {unknown}; supported findings: {sorted(self.queries)}"
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
        """Scores softmax([neg, pos])[pos] [B, F]; last-layer cross-attention [B, F, r/32, r/32]."""
        logits, attention = self.module(pixels, queries)
        scores = torch.softmax(logits.float(), dim=-1)[..., 1]
        grid = (pixels.shape[-2] // STRIDE, pixels.shape[-1] // STRIDE)
        maps = attention.float().reshape(*attention.shape[:2], *grid)
        return ModelOutput(scores=scores, maps={self.map_kind: maps})

    def logits(self, pixels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """pos - neg logit [B, F]: its sigmoid is the score, so its gradient explains the score."""
        if queries.is_inference():
            # Queries cached under inference mode cannot take part in a graph; a copy can.
            queries = queries.clone()
        logits, _ = self.module(pixels, queries)
        return (logits[..., 1] - logits[..., 0]).float()

    def feature_layer(self) -> FeatureLayer:
        """ResNet-50 up to layer4 (`res_features`): [B, 2048, r/32, r/32], already a grid."""
        return FeatureLayer(module=self.module.image_encoder.res_features, to_grid=_as_grid)


def _as_grid(output: torch.Tensor) -> torch.Tensor:
    return output


# ---- text encoder files -------------------------------------------------------------------------
def _text_side(given: str | None, *, random: bool) -> tuple[Any, Any]:
    """(BertConfig, tokenizer) from the text encoder folder or hub id; generated for random."""
    if random and given is None:
        from xbench_core.text import write_bert_folder

        with tempfile.TemporaryDirectory(prefix="xbench-kad-bert-") as tmp:
            return _read_text_folder(write_bert_folder(tmp, **BERT_BASE))
    return _read_text_folder(resolve_text_encoder(given))


def resolve_text_encoder(given: str | None) -> Path:
    """The folder with Med-KEBERT's config and tokenizer files (weights come from the checkpoint).

    A local folder is used as it is; a hub id (default xmcmic/Med-KEBERT) fetches only the
    config and vocabulary files through the core's asset resolver.
    """
    import os

    value = given or os.environ.get(TEXT_ENCODER_ENV) or None
    if value is not None and Path(value).expanduser().exists():
        folder = Path(value).expanduser()
        missing = [n for n in ("config.json", "vocab.txt") if not (folder / n).is_file()]
        if not folder.is_dir() or missing:
            raise AssetError(
                f"the KAD text encoder {folder} must be a folder with config.json and vocab.txt "
                f"(missing: {missing or 'it is a file'}); pass the Med-KEBERT folder with "
                "--set kad.text_encoder=FOLDER"
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
                option="kad.text_encoder",
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
def read_kad_part(path: str | Path, part: str) -> dict[str, torch.Tensor]:
    """One state_dict of `best_valid.pt` (`part` is our submodule name), ready to load.

    Drops the position/token-type id buffers old transformers saved with the text encoder, and
    completes or checks the `resnet.*` / `res_features.*` duplicates of the image encoder.
    """
    # CORE-REQUEST: load_checkpoint reads one container per call, so the file (optimizer state
    # included) is read once per part; a call returning several containers from one read would
    # load KAD three times faster.
    state = load_checkpoint(
        path, container=SUBDICTS[part], drop=OLD_BERT_BUFFERS if part == "text_encoder" else ()
    )
    if part == "image_encoder":
        state = reconcile_resnet_aliases(state, source=str(path))
    return state


def reconcile_resnet_aliases(
    state: dict[str, torch.Tensor], *, source: str
) -> dict[str, torch.Tensor]:
    """Give `resnet.<child>.*` and `res_features.<i>.*` the same tensors.

    The released file stores each tensor once under both names. A file holding only one of the two
    names (e.g. de-duplicated by a conversion) gets the other filled from it; a file whose two
    copies differ is refused, since loading would keep one of them silently.
    """
    state = dict(state)
    for child, index in RESNET_ALIASES.items():
        named, indexed = f"resnet.{child}.", f"res_features.{index}."
        a = {k[len(named) :] for k in state if k.startswith(named)}
        b = {k[len(indexed) :] for k in state if k.startswith(indexed)}
        for suffix in a - b:
            state[indexed + suffix] = state[named + suffix]
        for suffix in b - a:
            state[named + suffix] = state[indexed + suffix]
        for suffix in a & b:
            x, y = state[named + suffix], state[indexed + suffix]
            if x.shape == y.shape and not torch.equal(x, y):
                raise CheckpointError(
                    f"checkpoint {source}: {named + suffix!r} and {indexed + suffix!r} must hold the "
                    "same tensor (res_features shares resnet's modules) but differ; the file is "
                    "not a KAD checkpoint as released"
                )
    return state


def load_kad_checkpoint(module: KADNetwork, path: str | Path) -> None:
    """Load `best_valid.pt` strictly into the network; errors list the offending keys."""
    for part, container in SUBDICTS.items():
        load_state_dict_strict(
            getattr(module, part), read_kad_part(path, part), source=f"{path} [{container!r}]"
        )
