"""Shared pieces of the query-decoder ("fusion") models, where image tokens are the memory of a
DETR-style decoder whose queries are text embeddings, and a finding's map is the cross-attention of
its query over the image tokens.

Used by the MedKLIP and MAVL plugins (MAVL is built on MedKLIP's code base):

- `PreNormDecoder`: DETR's `TransformerDecoder` (a stack of `PreNormDecoderLayer`s and a final
  LayerNorm, keys `layers.{i}.*`, `norm.*`) returning every layer's cross-attention. Its options
  cover the other fusion models too: MAVL's late self-attention (`self_attn_late`), CARZero's
  skipped self-attention (`self_attention=False`, with `need_weights`), and KAD's and DeViDe's
  final norm shared with `decoder_norm` (`norm=`).
- `init_normal_weights`: the official `_init_weights`, N(0, 0.02) on Linear and attention
  projection weights, in `module.modules()` order (KAD's `self.apply(...)` visits modules in
  another order, so it draws other random values).
- `MEDKLIP_ENTITIES`, `COVID19_ENTITY`, `MEDKLIP_FINDINGS`: MedKLIP's 75 entities (also MAVL's),
  the entity the official COVID evaluation appends, and the table from XBench findings to them.
- `EntityQueryModel` (with `EntityQueries`): the `xbench_core.Model` of an entity-book model, whose
  query embeddings are computed once from frozen Bio_ClinicalBERT and kept in the network as a
  buffer: building (checkpoint, text encoder, random init, strict load, query book), preprocessing,
  queries, scores, maps, logits and feature layer. A subclass states its names, its network, the
  texts of its query book and how a finding's map is read from the attention.
- `write_tiny_text_encoder`: a one-layer BERT with Bio_ClinicalBERT's width, for tests.

Public (through `xbench_core`): `PreNormDecoder`, `init_normal_weights`, `MEDKLIP_ENTITIES`,
`COVID19_ENTITY`, `MEDKLIP_FINDINGS`, `EntityQueries`, `EntityQueryModel`,
`write_tiny_text_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xbench_core import FeatureLayer, Geometry, Model, ModelOutput, UnsupportedFinding
from xbench_core.assets import resolve_asset
from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

from .decoder import PreNormDecoderLayer
from .frozen_text import embed_texts, resolve_text_encoder
from .preprocessing import squash_imagenet
from .text import generated_vocabulary, write_bert_folder


class PreNormDecoder(nn.Module):
    """A stack of `layers` pre-norm decoder layers and the final norm (a new LayerNorm, or `norm`
    when the model shares one); `layer_options` go to every `PreNormDecoderLayer`
    (`self_attention`, `self_attn_late`). `forward(queries [Q, B, C], memory [T, B, C],
    need_weights=True) -> (norm(output) [Q, B, C], the per-layer cross-attention [B, Q, T], first
    layer first; empty without weights)`."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        feedforward: int,
        layers: int,
        dropout: float = 0.1,
        *,
        norm: nn.Module | None = None,
        **layer_options: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PreNormDecoderLayer(d_model, heads, feedforward, dropout, **layer_options)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model) if norm is None else norm

    def forward(
        self, queries: Tensor, memory: Tensor, need_weights: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        output, attention = queries, []
        for layer in self.layers:
            output, weights = layer(output, memory, need_weights)
            if weights is not None:
                attention.append(weights)
        return self.norm(output), attention


def init_normal_weights(module: nn.Module, std: float = 0.02) -> None:
    """MedKLIP's and MAVL's `_init_weights`: every Linear weight and attention projection weight
    ~ N(0, std), in `module.modules()` order; biases, convolutions and norms keep their init."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
        elif isinstance(sub, nn.MultiheadAttention):
            nn.init.normal_(sub.in_proj_weight, mean=0.0, std=std)
            nn.init.normal_(sub.out_proj.weight, mean=0.0, std=std)


# `MedKLIP.disease_name` / `original_class` of the official MedKLIP
# (Sample_Zero-Shot_Grounding_RSNA/models/model_MedKLIP.py, test.py) and MAVL
# (Zero-shot_grounding/test.py) code, in query order.
MEDKLIP_ENTITIES: tuple[str, ...] = (
    "normal", "clear", "sharp", "sharply", "unremarkable", "intact", "stable", "free",
    "effusion", "opacity", "pneumothorax", "edema", "atelectasis", "tube", "consolidation",
    "process", "abnormality", "enlarge", "tip", "low", "pneumonia", "line", "congestion",
    "catheter", "cardiomegaly", "fracture", "air", "tortuous", "lead", "disease", "calcification",
    "prominence", "device", "engorgement", "picc", "clip", "elevation", "expand", "nodule", "wire",
    "fluid", "degenerative", "pacemaker", "thicken", "marking", "scar", "hyperinflate", "blunt",
    "loss", "widen", "collapse", "density", "emphysema", "aerate", "mass", "crowd", "infiltrate",
    "obscure", "deformity", "hernia", "drainage", "distention", "shift", "stent", "pressure",
    "lesion", "finding", "borderline", "hardware", "dilation", "chf", "redistribution",
    "aspiration", "tail_abnorm_obs", "excluded_obs",
)  # fmt: skip

# Appended as a 76th entity by the official code for COVID data (MAVL's Zero-shot_grounding/
# test.py: `original_class.append('covid19')` for COVID-Rural, for MedKLIP as well); a model has
# it when its description files have a "covid19" entry.
COVID19_ENTITY = "covid19"

# XBench finding id -> entity. Official mappings: ChestX-ray14 in MedKLIP's
# Sample_zero-shot_Classification_CXR14/test.py and MAVL's Zero-shot_classification/test.py
# (`chexray14_cls`: infiltration -> infiltrate, pleural thickening -> thicken, fibrosis ->
# tail_abnorm_obs, ...), CheXpert in MAVL's (`chexpert_cls`: no finding -> normal, enlarged
# cardiomediastinum -> enlarge, lung opacity -> opacity, lung lesion -> lesion, pleural other ->
# abnormality, support devices -> device), covid19 in MAVL's COVID configs. The rows marked
# "XBench" have no official mapping and use the entity whose description names the finding (the
# plugins' READMEs, "Findings").
MEDKLIP_FINDINGS: dict[str, str] = {
    "atelectasis": "atelectasis",
    "calcification": "calcification",
    "cardiomegaly": "cardiomegaly",
    "clavicle_fracture": "fracture",  # XBench: the only fracture entity
    "consolidation": "consolidation",
    "covid19": COVID19_ENTITY,  # only for a model whose files have the entry
    "diffuse_nodule": "nodule",  # XBench
    "edema": "edema",
    "emphysema": "emphysema",
    "enlarged_cardiomediastinum": "enlarge",
    "fibrosis": "tail_abnorm_obs",
    "fracture": "fracture",
    "ground_glass_opacity": "opacity",  # XBench
    "hernia": "hernia",
    "infiltration": "infiltrate",
    "lung_lesion": "lesion",
    "lung_opacity": "opacity",
    "lung_tumor": "mass",  # XBench: "a lung mass ... can also view as lung cancer"
    "mass": "mass",
    "mediastinal_shift": "shift",  # XBench: "The mediastinal shift is ..."
    "no_finding": "normal",
    "nodule": "nodule",
    "nodule_mass": "lesion",  # XBench: "Lung nodules, ... lesions these terms all describe ..."
    "pleural_effusion": "effusion",
    "pleural_other": "abnormality",
    "pleural_thickening": "thicken",
    "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax",
    "rib_fracture": "fracture",  # XBench: "fracture is a break in a rib bone"
    "support_devices": "device",
}


@dataclass(frozen=True)
class EntityQueries:
    """The text side of one run: which entity answers each finding, and how many entities the
    decoder sees (75, or 76 when covid19 is appended as in the official COVID code)."""

    findings: tuple[str, ...]
    rows: Any  # LongTensor [F] on the model's device
    entities: int


def _identity(features: Any) -> Any:
    return features


class EntityQueryModel(Model):
    """An entity-book fusion model for XBench (MedKLIP, MAVL).

    The network (`module`) holds the frozen text embeddings of its query book in the non-persistent
    buffer named `book`, so that its state_dict holds exactly the official keys, and
    `module(pixels, entities)` decodes the first `entities` entities: -> (logits [B, E, 2] over
    (absent, present), the per-layer cross-attention [B, queries, h*w], the grid (h, w)).

    Score: softmax over the finding's entity's two logits, index 1 (present); `logits` is present
    minus absent, whose sigmoid is the score. Map: `select_maps` of the subclass, on the grid.

    A subclass sets `name` (the plugin's name: options `<name>.checkpoint`, environment variables
    `XBENCH_<NAME>_CHECKPOINT`, the query cache tag), `label` (the name in messages), `book` and
    `backbone` (the network's attributes: the query-book buffer and the image backbone whose output
    is the feature grid), implements `query_texts` and `select_maps`, and builds itself with
    `_checkpoint_file` first and `_build` last.
    """

    map_kind = "cross_attention"
    name: str
    label: str
    book: str
    backbone: str
    entities: tuple[str, ...] = ()
    equalize_hist: bool = False

    # ---- building ----------------------------------------------------------------------------
    def _checkpoint_file(self, checkpoint: str | None, *, filename: str, hint: str) -> Path | None:
        """Sets `random_weights`; resolves the checkpoint first, so that a missing file is
        reported before the slow text side runs (None for `checkpoint=random`)."""
        self.random_weights = checkpoint == "random"
        if self.random_weights:
            return None
        return resolve_asset(
            f"{self.label} checkpoint",
            checkpoint,
            env=f"XBENCH_{self.name.upper()}_CHECKPOINT",
            filename=filename,
            option=f"{self.name}.checkpoint",
            hint=hint,
        )

    def _build(
        self,
        network: Callable[[], nn.Module],
        checkpoint_file: Path | None,
        text_encoder: str | None,
        *,
        covid19: bool,
        **read_options: Any,
    ) -> None:
        """Resolve the text encoder; set the entities (75, plus covid19 when `covid19`) and the
        supported findings; build `network()` with reproducible random weights; load the
        checkpoint strictly (the official container 'model', 'module.' prefixes stripped, and
        `read_options` for `load_checkpoint`); embed `query_texts()` into the book; eval mode."""
        self.text_encoder = resolve_text_encoder(
            text_encoder,
            allow_random=self.random_weights,
            env=f"XBENCH_{self.name.upper()}_TEXT_ENCODER",
            option=f"{self.name}.text_encoder",
            model=self.label,
        )
        self.entities = MEDKLIP_ENTITIES + ((COVID19_ENTITY,) if covid19 else ())
        self.queries = {
            finding: entity
            for finding, entity in MEDKLIP_FINDINGS.items()
            if entity in self.entities
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # reproducible random weights, without touching the caller's RNG
            self.module = network()
            init_normal_weights(self.module)
        if checkpoint_file is not None:
            state = load_checkpoint(
                checkpoint_file, container="model", strip_prefixes=("module.",), **read_options
            )
            load_state_dict_strict(self.module, state, source=str(checkpoint_file))
        texts = self.query_texts()
        book = embed_texts(self.text_encoder, texts, tag=self.name)
        if tuple(book.shape) != (len(texts), 768):
            raise ValueError(
                f"the text encoder gives {tuple(book.shape[1:])}-dimensional CLS vectors; "
                f"{self.label} needs Bio_ClinicalBERT's 768 (pass a BERT-base-shaped text_encoder)."
            )
        setattr(self.module, self.book, book)
        self.module.eval()

    def query_texts(self) -> list[str]:
        """The texts of the query book, in book order, for `self.entities`."""
        raise NotImplementedError

    def select_maps(self, attention: list[Any], rows: Any, entities: int) -> Any:
        """The per-layer cross-attention [B, queries, h*w] of `entities` entities -> the maps
        [B, F, h*w] of the entities in `rows` (float32)."""
        raise NotImplementedError

    # ---- data side ---------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        """Squash to 224 x 224, three channels, ImageNet statistics (equalized first if asked)."""
        return squash_imagenet(image, (224, 224), equalize=self.equalize_hist)

    def encode_queries(self, findings: Sequence[str]) -> EntityQueries:
        """Entity rows for the findings; the query embeddings themselves live in the module."""
        unsupported = ", ".join(f for f in findings if f not in self.queries)
        if unsupported:
            supported = ", ".join(sorted(self.queries))
            raise UnsupportedFinding(
                f"{self.label} has no entity for {unsupported}; supported findings: {supported}."
            )
        rows = [self.entities.index(self.queries[f]) for f in findings]
        # The official code appends covid19 to the 75 entities only for COVID data; with
        # self-attention among the queries, that changes the other entities' outputs slightly.
        extra = COVID19_ENTITY in {self.queries[f] for f in findings}
        return EntityQueries(
            tuple(findings),
            torch.tensor(rows, dtype=torch.long, device=self.device),
            len(MEDKLIP_ENTITIES) + (1 if extra else 0),
        )

    # ---- device side -------------------------------------------------------------------------
    def _run(self, pixels: Any, queries: EntityQueries) -> tuple[Any, Any, tuple[int, int]]:
        logits, attention, grid = self.module(pixels, queries.entities)
        rows = queries.rows.to(logits.device)
        chosen = logits.index_select(1, rows).float()  # B, F, 2
        return chosen, self.select_maps(attention, rows, queries.entities), grid

    def forward(self, pixels: Any, queries: EntityQueries) -> ModelOutput:
        """Scores P(present) [B, F] and cross-attention maps [B, F, h, w]."""
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
        """The image backbone (the network's attribute `backbone`), whose output is the feature
        grid itself (MedKLIP, MAVL: ResNet-50 layer3, [B, 1024, 14, 14])."""
        return FeatureLayer(getattr(self.module, self.backbone), _identity)


_TINY_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 1,
    "num_attention_heads": 12,
    "intermediate_size": 64,
}


def write_tiny_text_encoder(folder: str | Path, words: Iterable[str], seed: int = 0) -> Path:
    """A BERT with Bio_ClinicalBERT's hidden size (768, what the query books hold) but one layer
    and a small generated vocabulary that keeps `words` whole: a cheap, local text encoder for
    the tests of entity-book models, never a download."""
    vocab = generated_vocabulary(extra_words=words)
    return write_bert_folder(folder, vocab=vocab, weights=True, seed=seed, **_TINY_TEXT_ENCODER)
