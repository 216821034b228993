"""MAVL wrapped for XBench: building (checkpoint, descriptions, aspects, text encoder), queries,
forward.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from xbench_core import (
    ConfigError,
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
    ASPECTS_FILENAME,
    ASPECTS_SHA256,
    ASPECTS_URL,
    CONCEPTS,
    DESCRIPTIONS_FILENAME,
    DESCRIPTIONS_SHA256,
    DESCRIPTIONS_URL,
    ENTITIES,
    EXTRA_ENTITY,
    FINDING_TO_ENTITY,
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


@dataclass(frozen=True)
class EntityQueries:
    """The text side of one run: which entity answers each finding, and how many entities the
    decoder sees (75, or 76 when covid19 is appended as in the official COVID configs)."""

    findings: tuple[str, ...]
    rows: Any  # LongTensor [F] on the model's device
    entities: int


def _identity(features: Any) -> Any:
    return features


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


class MAVL(Model):
    """MAVL for XBench (see the module docstring for the score and the map)."""

    map_kind = "cross_attention"

    def __init__(
        self,
        checkpoint: str | None = None,
        variant: str = "full_40",
        text_encoder: str | None = None,
        descriptions: str | None = None,
        aspects: str | None = None,
        equalize_hist: bool = False,
    ) -> None:
        import torch

        from .decoder import init_like_official
        from .network import MAVLNetwork

        if variant not in CHECKPOINT_FILES:
            raise ConfigError(
                f"mavl.variant must be one of {', '.join(CHECKPOINT_FILES)}; got {variant!r}"
            )
        self.random_weights = checkpoint == "random"
        self.equalize_hist = bool(equalize_hist)
        checkpoint_file = None
        if not self.random_weights:
            # First: a missing checkpoint is reported before the slow text side runs.
            checkpoint_file = resolve_asset(
                "MAVL checkpoint",
                checkpoint,
                env="XBENCH_MAVL_CHECKPOINT",
                filename=CHECKPOINT_FILES[variant],
                option="mavl.checkpoint",
                hint=CHECKPOINT_HINT,
            )
        self.descriptions = load_descriptions(descriptions, random=self.random_weights)
        self.aspects = load_aspects(aspects, random=self.random_weights)
        self.text_encoder = resolve_text_encoder(
            text_encoder,
            allow_random=self.random_weights,
            env="XBENCH_MAVL_TEXT_ENCODER",
            option="mavl.text_encoder",
            model="MAVL",
        )
        extra = EXTRA_ENTITY in self.descriptions and EXTRA_ENTITY in self.aspects
        self.entities: tuple[str, ...] = ENTITIES + ((EXTRA_ENTITY,) if extra else ())
        self.queries = {
            finding: entity
            for finding, entity in FINDING_TO_ENTITY.items()
            if entity in self.entities
        }

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # reproducible random weights, without touching the caller's RNG
            self.module = MAVLNetwork()
            init_like_official(self.module)
        if checkpoint_file is not None:
            # Zero-shot_grounding/test.py: strip 'module.', drop every key containing 'temp'.
            state = load_checkpoint(
                checkpoint_file,
                container="model",
                strip_prefixes=("module.",),
                drop_contains=("temp",),
            )
            load_state_dict_strict(self.module, state, source=str(checkpoint_file))
        # Entity-major: [description, border, fluid, ..., texture] of entity 0, then entity 1, ...
        texts = [
            text
            for name in self.entities
            for text in (self.descriptions[name], *self.aspects[name])
        ]
        book = embed_texts(self.text_encoder, texts, tag="mavl")
        if tuple(book.shape) != (len(texts), 768):
            raise ValueError(
                f"the text encoder gives {tuple(book.shape[1:])}-dimensional CLS vectors; MAVL "
                "needs Bio_ClinicalBERT's 768 (pass a BERT-base-shaped text_encoder)."
            )
        self.module.concept_book = book
        self.module.eval()

    # ---- data side ---------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        """Squash to 224 x 224, three channels, ImageNet statistics (equalized first if asked)."""
        return squash_imagenet(image, (224, 224), equalize=self.equalize_hist)

    def encode_queries(self, findings: Sequence[str]) -> EntityQueries:
        """Entity rows for the findings; the concept embeddings themselves live in the module."""
        import torch

        unsupported = [f for f in findings if f not in self.queries]
        if unsupported:
            raise UnsupportedFinding(
                f"MAVL has no entity for {', '.join(unsupported)}; supported findings: "
                f"{', '.join(sorted(self.queries))}."
            )
        rows = [self.entities.index(self.queries[f]) for f in findings]
        # The official code appends covid19 to the 75 entities only for COVID data; with
        # self-attention among all queries, that changes the other entities' outputs slightly.
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
        batch = logits.shape[0]
        layers = sum(a.float() for a in attention) / len(attention)  # B, E*9, h*w
        concepts = layers.view(batch, queries.entities, len(CONCEPTS), -1).index_select(1, rows)
        keep = torch_index(MAP_CONCEPTS, concepts.device)
        maps = concepts.index_select(2, keep).mean(dim=2)  # B, F, h*w
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
        """The ResNet-50 layer3 output [B, 1024, 14, 14] (`backbone`)."""
        return FeatureLayer(self.module.backbone, _identity)


def torch_index(values: Sequence[int], device: Any) -> Any:
    """A LongTensor of `values` on `device`."""
    import torch

    return torch.tensor(list(values), dtype=torch.long, device=device)
