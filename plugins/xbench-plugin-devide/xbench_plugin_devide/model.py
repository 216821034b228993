"""DeViDe wrapped for XBench: weights, preprocessing, queries, scores and the cross-attention map.

DeViDe has no public code or checkpoint. The architecture follows the paper (arXiv 2404.03618) on
KAD's code base (see network.py), and the inference recipe follows KAD's test scripts
(xiaoman-zhang/KAD `A3_CLIP/test_chexpert.py`, `dataset/test_dataset.py`,
`plot_visualize_512.py`): squash-resize bicubic with ImageNet statistics, disease phrases
tokenized to 256 tokens, score = softmax([neg, pos])[pos], map = decoder cross-attention of the
finding's query on the 14 x 14 patch grid. None of it has been checked against released weights.

The parts DeViDe shares with KAD (queries, text side, query decoder, preprocessing, score, map,
logits) are `xbench_blocks.knowledge.PhraseQueryModel` (xbench_blocks/knowledge.py); the ViT image encoder, the
checkpoint key table, the projection head's output and the feature layer are DeViDe's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from xbench_blocks.knowledge import OLD_BERT_BUFFERS, PhraseQueryModel

from xbench_core import ConfigError, FeatureLayer
from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

from .network import IMAGE_SIZE, PATCH, ImageEncoder

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
CHECKPOINT_DROP = OLD_BERT_BUFFERS

CHECKPOINT_HINT = (
    "DeViDe's weights are not public; ask the authors (Luo et al., arXiv 2404.03618) or the "
    "XBench release, or use checkpoint=random"
)
ATTENTION_LAYERS = ("last", "mean")


class DeViDe(PhraseQueryModel):
    """DeViDe (Luo et al., 2024) as the paper describes it: ViT-B/16 at 224, Med-KEBERT disease
    phrases, a KAD-style query decoder with [negative, positive] logits, and a projection head.

    `forward` adds `extras["projected"]`: each finding's decoded feature in the description
    embedding space ([B, F, 768], unit norm), the paper's multi-description alignment head."""

    name = "devide"
    label = "DeViDe"
    input_size = (IMAGE_SIZE, IMAGE_SIZE)
    stride = PATCH

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
        self._build(
            checkpoint,
            text_encoder,
            ImageEncoder,
            asset="DeViDe checkpoint",
            hint=CHECKPOINT_HINT,
            projection=True,
        )

    def load_weights(self, path: Path) -> None:
        load_devide_checkpoint(self.module, path)

    def _extras(self, features: torch.Tensor) -> dict[str, Any]:
        """{"projected": unit vectors of `fusion.projection(features)`} [B, F, 768]."""
        projected = F.normalize(self.module.fusion.projection(features), dim=-1)
        return {"projected": projected.float()}

    def feature_layer(self) -> FeatureLayer:
        """The ViT's final layernorm: tokens [B, 197, 768] -> grid [B, 768, 14, 14]."""
        return FeatureLayer(module=self.module.image_encoder.vit.layernorm, to_grid=tokens_to_grid)


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """[B, 1 + h*w, D] ViT tokens -> [B, D, h, w] (class token dropped, row-major patches)."""
    patches = tokens[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], side, side)


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


def load_devide_checkpoint(module: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint strictly into the network; errors list the offending keys."""
    load_state_dict_strict(module, read_devide_checkpoint(path), source=str(path))
