"""MedKLIP wrapped for XBench: its files (checkpoint, descriptions) and its map rule; building,
queries, scores and the forward pass are `xbench_blocks.fusion.EntityQueryModel`'s, shared with MAVL.

Score (official zero-shot classification, e.g. Sample_zero-shot_Classification_CXR14/test.py):
softmax over the two logits of the finding's entity query, index 1 (present). Native map (official
Sample_Zero-Shot_Grounding_RSNA/test.py): the head-averaged cross-attention of that query over the
14 x 14 image tokens, averaged over the 4 decoder layers (`(ws[-4] + ws[-3] + ws[-2] + ws[-1]) / 4`),
returned on the 14 x 14 grid; the core maps it back to the original image (the official script's
x16 nearest upsampling to 224 is not reproduced: the core's bilinear mapping replaces it).
"""

from __future__ import annotations

from typing import Any

from xbench_blocks.fusion import EntityQueryModel

from xbench_core.assets import resolve_asset

from .entities import (
    COVID19_ENTITY,
    DESCRIPTIONS_FILENAME,
    DESCRIPTIONS_SHA256,
    DESCRIPTIONS_URL,
    placeholder_descriptions,
    read_descriptions,
)

CHECKPOINT_FILENAME = "checkpoint_final.pth"
CHECKPOINT_HINT = (
    "checkpoint_final.pth from the Google Drive folder 1HBShH7J_pO8onkzuweDgDq2QPqj6zjG_ linked "
    "in the README of github.com/MediaBrain-SJTU/MedKLIP (not on the Hugging Face Hub); "
    "or use checkpoint=random"
)


def load_descriptions(given: str | None, *, random: bool) -> dict[str, str]:
    """The entity descriptions: the given file, $XBENCH_MEDKLIP_DESCRIPTIONS, the cache, or the
    official file downloaded and checked against its SHA-256; placeholders for a random model
    with nothing given."""
    if random and given is None:
        return placeholder_descriptions()
    path = resolve_asset(
        "MedKLIP entity descriptions",
        given,
        env="XBENCH_MEDKLIP_DESCRIPTIONS",
        url=DESCRIPTIONS_URL,
        sha256=DESCRIPTIONS_SHA256,
        filename=DESCRIPTIONS_FILENAME,
        option="medklip.descriptions",
    )
    return read_descriptions(path)


class MedKLIP(EntityQueryModel):
    """MedKLIP for XBench (see the module docstring for the score and the map)."""

    name, label, book, backbone = "medklip", "MedKLIP", "entity_book", "res_features"

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        descriptions: str | None = None,
        equalize_hist: bool = False,
    ) -> None:
        from .network import MedKLIPNetwork

        self.equalize_hist = bool(equalize_hist)
        file = self._checkpoint_file(checkpoint, filename=CHECKPOINT_FILENAME, hint=CHECKPOINT_HINT)
        self.descriptions = load_descriptions(descriptions, random=self.random_weights)
        self._build(MedKLIPNetwork, file, text_encoder, covid19=COVID19_ENTITY in self.descriptions)

    def query_texts(self) -> list[str]:
        """One description per entity, in entity order."""
        return [self.descriptions[name] for name in self.entities]

    def select_maps(self, attention: list[Any], rows: Any, entities: int) -> Any:
        """The finding's entity query's cross-attention, averaged over the 4 layers."""
        return sum(a.index_select(1, rows).float() for a in attention) / len(attention)
