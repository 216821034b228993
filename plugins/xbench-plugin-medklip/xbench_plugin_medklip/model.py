"""MedKLIP wrapped for XBench: building (checkpoint, descriptions, text encoder), queries, forward.

Score (official zero-shot classification, e.g. Sample_zero-shot_Classification_CXR14/test.py):
softmax over the two logits of the finding's entity query, index 1 (present). Native map (official
Sample_Zero-Shot_Grounding_RSNA/test.py): the head-averaged cross-attention of that query over the
14 x 14 image tokens, averaged over the 4 decoder layers (`(ws[-4] + ws[-3] + ws[-2] + ws[-1]) / 4`),
returned on the 14 x 14 grid; the core maps it back to the original image (the official script's
x16 nearest upsampling to 224 is not reproduced: the core's bilinear mapping replaces it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xbench_core import (
    FeatureLayer,
    Geometry,
    Model,
    ModelOutput,
    UnsupportedFinding,
    embed_texts,
    load_checkpoint,
    load_state_dict_strict,
    resolve_asset,
    resolve_text_encoder,
    squash_imagenet,
)

from .entities import (
    DESCRIPTIONS_FILENAME,
    DESCRIPTIONS_SHA256,
    DESCRIPTIONS_URL,
    ENTITIES,
    EXTRA_ENTITY,
    FINDING_TO_ENTITY,
    placeholder_descriptions,
    read_descriptions,
)

CHECKPOINT_FILENAME = "checkpoint_final.pth"
CHECKPOINT_HINT = (
    "checkpoint_final.pth from the Google Drive folder 1HBShH7J_pO8onkzuweDgDq2QPqj6zjG_ linked "
    "in the README of github.com/MediaBrain-SJTU/MedKLIP (not on the Hugging Face Hub); "
    "or use checkpoint=random"
)


@dataclass(frozen=True)
class EntityQueries:
    """The text side of one run: which entity row answers each finding, and how many entity
    queries the decoder sees (75, or 76 when covid19 is appended as in the official COVID code)."""

    findings: tuple[str, ...]
    rows: Any  # LongTensor [F] on the model's device
    entities: int


def _identity(features: Any) -> Any:
    return features


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


class MedKLIP(Model):
    """MedKLIP for XBench (see the module docstring for the score and the map)."""

    map_kind = "cross_attention"

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        descriptions: str | None = None,
        equalize_hist: bool = False,
    ) -> None:
        import torch

        from .decoder import init_like_official
        from .network import MedKLIPNetwork

        self.random_weights = checkpoint == "random"
        self.equalize_hist = bool(equalize_hist)
        # The checkpoint first: a missing file is reported before the slow text side runs.
        checkpoint_file = None
        if not self.random_weights:
            checkpoint_file = resolve_asset(
                "MedKLIP checkpoint",
                checkpoint,
                env="XBENCH_MEDKLIP_CHECKPOINT",
                filename=CHECKPOINT_FILENAME,
                option="medklip.checkpoint",
                hint=CHECKPOINT_HINT,
            )
        self.descriptions = load_descriptions(descriptions, random=self.random_weights)
        self.text_encoder = resolve_text_encoder(
            text_encoder,
            allow_random=self.random_weights,
            env="XBENCH_MEDKLIP_TEXT_ENCODER",
            option="medklip.text_encoder",
            model="MedKLIP",
        )
        self.entities: tuple[str, ...] = ENTITIES + tuple(
            name for name in (EXTRA_ENTITY,) if name in self.descriptions
        )
        self.queries = {
            finding: entity
            for finding, entity in FINDING_TO_ENTITY.items()
            if entity in self.entities
        }
        if EXTRA_ENTITY in self.entities:
            self.queries["covid19"] = EXTRA_ENTITY

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # reproducible random weights, without touching the caller's RNG
            self.module = MedKLIPNetwork()
            init_like_official(self.module)
        if checkpoint_file is not None:
            state = load_checkpoint(checkpoint_file, container="model", strip_prefixes=("module.",))
            load_state_dict_strict(self.module, state, source=str(checkpoint_file))
        book = embed_texts(
            self.text_encoder, [self.descriptions[name] for name in self.entities], tag="medklip"
        )
        if tuple(book.shape) != (len(self.entities), 768):
            raise ValueError(
                f"the text encoder gives {tuple(book.shape[1:])}-dimensional CLS vectors; MedKLIP "
                "needs Bio_ClinicalBERT's 768 (pass a BERT-base-shaped text_encoder)."
            )
        self.module.entity_book = book
        self.module.eval()

    # ---- data side ---------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        """Squash to 224 x 224, three channels, ImageNet statistics (equalized first if asked)."""
        return squash_imagenet(image, (224, 224), equalize=self.equalize_hist)

    def encode_queries(self, findings: Sequence[str]) -> EntityQueries:
        """Entity rows for the findings; the entity embeddings themselves live in the module."""
        import torch

        unsupported = [f for f in findings if f not in self.queries]
        if unsupported:
            raise UnsupportedFinding(
                f"MedKLIP has no entity for {', '.join(unsupported)}; supported findings: "
                f"{', '.join(sorted(self.queries))}."
            )
        rows = [self.entities.index(self.queries[f]) for f in findings]
        # The official code appends covid19 to the 75 entities only for COVID data; with
        # self-attention among the queries, that changes the other entities' outputs slightly.
        count = len(ENTITIES) + (1 if EXTRA_ENTITY in {self.queries[f] for f in findings} else 0)
        return EntityQueries(
            tuple(findings), torch.tensor(rows, dtype=torch.long, device=self.device), count
        )

    # ---- device side -------------------------------------------------------------------------
    def _run(self, pixels: Any, queries: EntityQueries) -> tuple[Any, Any, tuple[int, int]]:
        import torch

        logits, attention, grid = self.module(pixels, queries.entities)
        rows = queries.rows.to(logits.device)
        if rows.is_inference() and not torch.is_inference_mode_enabled():
            # queries made under inference mode (as the engine does), used with gradients
            rows = rows.clone()
        chosen = logits.index_select(1, rows).float()  # B, F, 2
        maps = sum(a.index_select(1, rows).float() for a in attention) / len(attention)
        return chosen, maps, grid

    def forward(self, pixels: Any, queries: EntityQueries) -> ModelOutput:
        """Scores P(present) [B, F] and cross-attention maps [B, F, 14, 14]."""
        chosen, maps, grid = self._run(pixels, queries)
        scores = chosen.softmax(dim=-1)[..., 1]
        maps = maps.reshape(maps.shape[0], maps.shape[1], *grid)
        return ModelOutput(
            scores=scores,
            maps={self.map_kind: maps},
            extras={"logits": chosen[..., 1] - chosen[..., 0]},
        )

    def logits(self, pixels: Any, queries: EntityQueries) -> Any:
        """Present-minus-absent logit per finding [B, F]; sigmoid of it is the score."""
        chosen, _, _ = self._run(pixels, queries)
        return chosen[..., 1] - chosen[..., 0]

    def feature_layer(self) -> FeatureLayer:
        """The ResNet-50 layer3 output [B, 1024, 14, 14] (`res_features`)."""
        return FeatureLayer(self.module.res_features, _identity)
