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

The parts KAD shares with DeViDe (queries, text side, query decoder, preprocessing, score, map,
logits) are `xbench_blocks.knowledge.PhraseQueryModel` (xbench_blocks/knowledge.py); the ResNet image encoder,
the checkpoint reader and the feature layer are KAD's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from xbench_blocks.knowledge import OLD_BERT_BUFFERS, PhraseQueryModel

from xbench_core import CheckpointError, ConfigError, FeatureLayer
from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

from .network import RESNET_ALIASES, ImageEncoder

STRIDE = 32  # ResNet-50 up to layer4
CHECKPOINT_HINT = (
    "KAD_Models/KAD_512/best_valid.pt or KAD_Models/KAD_1024/best_valid.pt from the Google Drive "
    "folder 1xWVVJRfnm_wIgUpbn9ftsW4K5XKU0i0- (or Baidu, code m35f) linked from the README of "
    "github.com/xiaoman-zhang/KAD; or use checkpoint=random"
)

# Our submodule -> the sub-dict of best_valid.pt that holds its weights.
SUBDICTS = {"image_encoder": "image_encoder", "text_encoder": "text_encoder", "fusion": "model"}


class KAD(PhraseQueryModel):
    """KAD (Zhang et al., Nature Communications 2023): ResNet-50 at 512 or 1024, Med-KEBERT
    disease-phrase queries, a 4-layer query decoder with [negative, positive] logits."""

    name = "kad"
    label = "KAD"
    stride = STRIDE

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        resolution: int = 512,
    ) -> None:
        if resolution not in (512, 1024):
            raise ConfigError(f"kad.resolution must be 512 or 1024, got {resolution!r}")
        self.resolution = int(resolution)
        self.input_size = (self.resolution, self.resolution)
        self._build(
            checkpoint,
            text_encoder,
            ImageEncoder,
            asset=f"KAD-{self.resolution} checkpoint",
            filename="best_valid.pt",
            hint=CHECKPOINT_HINT,
        )

    def load_weights(self, path: Path) -> None:
        load_kad_checkpoint(self.module, path)

    def feature_layer(self) -> FeatureLayer:
        """ResNet-50 up to layer4 (`res_features`): [B, 2048, r/32, r/32], already a grid."""
        return FeatureLayer(module=self.module.image_encoder.res_features, to_grid=_as_grid)


def _as_grid(output: torch.Tensor) -> torch.Tensor:
    return output


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


def load_kad_checkpoint(module: torch.nn.Module, path: str | Path) -> None:
    """Load `best_valid.pt` strictly into the network; errors list the offending keys."""
    for part, container in SUBDICTS.items():
        load_state_dict_strict(
            getattr(module, part), read_kad_part(path, part), source=f"{path} [{container!r}]"
        )
