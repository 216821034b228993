"""MAVL wrapped for XBench: its files (checkpoint, descriptions, aspects), its query book and its
map rule; building, queries, scores and the forward pass are `xbench_blocks.fusion.EntityQueryModel`'s.

Score (official 'feature' mode, Zero-shot_classification/test.py): softmax over the two logits of
the finding's entity, index 1 (present); the entity's logits come from the classifier on its 9
concept outputs concatenated. Native map (official Zero-shot_grounding/test.py, mode 'avg'): the
head-averaged cross-attention over the 14 x 14 image tokens, averaged over the 4 decoder layers,
viewed as [B, entities, 9, 196], concepts [0, 6, 7, 8] (description, patterns, shape, texture)
averaged; returned on the 14 x 14 grid (the official bilinear align_corners=True upsampling to 224
is replaced by the core's mapping back to the original image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xbench_blocks.fusion import EntityQueryModel

from xbench_core import ConfigError
from xbench_core.assets import resolve_asset

from .entities import (
    ASPECTS_FILENAME,
    ASPECTS_SHA256,
    ASPECTS_URL,
    CONCEPTS,
    COVID19_ENTITY,
    DESCRIPTIONS_FILENAME,
    DESCRIPTIONS_SHA256,
    DESCRIPTIONS_URL,
    MAP_CONCEPTS,
    placeholder_aspects,
    placeholder_descriptions,
    read_aspects,
    read_descriptions,
)

CHECKPOINT_FILES = {"full_40": "checkpoint_full_40.pth", "full_46": "checkpoint_full_46.pth"}
CHECKPOINT_HINT = (
    "checkpoint_full_40.pth (grounding) or checkpoint_full_46.pth from the Google Drive folder "
    "1EN-oHVk513qmoehWypkrJ2Ero5PoUmId linked in github.com/HieuPhan33/MAVL "
    "(Pretrain/data_file/DATA_Prepare.md; not on the Hugging Face Hub); or use checkpoint=random"
)


def load_descriptions(given: str | None, *, random: bool) -> dict[str, str]:
    """The entity descriptions: the given file, $XBENCH_MAVL_DESCRIPTIONS, the cache, or the
    official file downloaded and checked against its SHA-256; placeholders for a random model
    with nothing given."""
    if random and given is None:
        return placeholder_descriptions()
    path = resolve_asset(
        "MAVL entity descriptions",
        given,
        env="XBENCH_MAVL_DESCRIPTIONS",
        url=DESCRIPTIONS_URL,
        sha256=DESCRIPTIONS_SHA256,
        filename=DESCRIPTIONS_FILENAME,
        option="mavl.descriptions",
    )
    return read_descriptions(path)


def load_aspects(given: str | None, *, random: bool) -> dict[str, list[str]]:
    """The 8 visual aspects per entity, resolved like the descriptions."""
    if random and given is None:
        return placeholder_aspects()
    path = resolve_asset(
        "MAVL visual aspects",
        given,
        env="XBENCH_MAVL_ASPECTS",
        url=ASPECTS_URL,
        sha256=ASPECTS_SHA256,
        filename=ASPECTS_FILENAME,
        option="mavl.aspects",
    )
    return read_aspects(path)


class MAVL(EntityQueryModel):
    """MAVL for XBench (see the module docstring for the score and the map)."""

    name, label, book, backbone = "mavl", "MAVL", "concept_book", "backbone"

    def __init__(
        self,
        checkpoint: str | None = None,
        variant: str = "full_40",
        text_encoder: str | None = None,
        descriptions: str | None = None,
        aspects: str | None = None,
        equalize_hist: bool = False,
    ) -> None:
        from .network import MAVLNetwork

        if variant not in CHECKPOINT_FILES:
            raise ConfigError(
                f"mavl.variant must be one of {', '.join(CHECKPOINT_FILES)}; got {variant!r}"
            )
        self.equalize_hist = bool(equalize_hist)
        file = self._checkpoint_file(
            checkpoint, filename=CHECKPOINT_FILES[variant], hint=CHECKPOINT_HINT
        )
        self.descriptions = load_descriptions(descriptions, random=self.random_weights)
        self.aspects = load_aspects(aspects, random=self.random_weights)
        covid19 = COVID19_ENTITY in self.descriptions and COVID19_ENTITY in self.aspects
        # Zero-shot_grounding/test.py: strip 'module.', drop every key containing 'temp'.
        self._build(MAVLNetwork, file, text_encoder, covid19=covid19, drop_contains=("temp",))

    def query_texts(self) -> list[str]:
        """Entity-major: [description, border, fluid, ..., texture] of entity 0, then entity 1, ..."""
        return [
            text
            for name in self.entities
            for text in (self.descriptions[name], *self.aspects[name])
        ]

    def select_maps(self, attention: list[Any], rows: Any, entities: int) -> Any:
        """The layers averaged, viewed [B, entities, 9, h*w]; the finding's entity's concepts
        [0, 6, 7, 8] averaged."""
        layers = sum(a.float() for a in attention) / len(attention)  # B, E*9, h*w
        concepts = layers.view(layers.shape[0], entities, len(CONCEPTS), -1).index_select(1, rows)
        keep = torch_index(MAP_CONCEPTS, concepts.device)
        return concepts.index_select(2, keep).mean(dim=2)  # B, F, h*w


def torch_index(values: Sequence[int], device: Any) -> Any:
    """A LongTensor of `values` on `device`."""
    import torch

    return torch.tensor(list(values), dtype=torch.long, device=device)
