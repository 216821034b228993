"""Shared pieces of the knowledge-enhanced disease-query models: KAD's code base, where a trained
BERT (Med-KEBERT) embeds a plain disease phrase per finding and a DETR-style query decoder (TQN)
reads the image tokens with those embeddings as its queries.

Used by the KAD plugin (xbench-plugin-kad; xiaoman-zhang/KAD, commit 591d999) and the DeViDe plugin
(xbench-plugin-devide; DeViDe is built on KAD's code, arXiv 2404.03618). The official files
followed are KAD's `A3_CLIP/test_chexpert.py`, `test_chestxray14.py` (text features, score),
`dataset/test_dataset.py` (transform), `plot_visualize_512.py` (map) and `models/clip_tqn.py`
(`CLP_clinical`, `TQN_Model`):

- `DISEASE_PHRASES`: the phrase that asks for each canonical finding (KAD's official lists).
- `squash_bicubic_8bit`: the test transform, the 8-bit image squashed with Pillow's bicubic
  resampler, normalized with ImageNet statistics.
- `resolve_text_config_folder`, `read_text_side`: Med-KEBERT's config and tokenizer (the text
  tower is trained, so its weights come from the model's checkpoint, not from these files).
- `PhraseTextEncoder` (`CLP_clinical`), `QueryDecoder` (`TQN_Model`), `QueryNetwork` (an image
  encoder of the plugin's, the text encoder and the decoder under one module), with the official
  module names, so that the checkpoints load strictly.
- `PhraseQueryModel`: the `xbench_core.Model` of such a model: building (checkpoint, text side,
  seeded random weights), preprocessing, queries, score softmax([neg, pos])[pos], the map (the
  last decoder layer's head-averaged cross-attention, or the mean of the layers) and logits
  pos - neg. The image encoder, the checkpoint reader and the feature layer stay in the plugins.

Public (through `xbench_core`): `DISEASE_PHRASES`, `OLD_BERT_BUFFERS`, `PhraseQueryModel`,
`squash_bicubic_8bit`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xbench_core import AssetError, ConfigError, Geometry, Model, ModelOutput, UnsupportedFinding
from xbench_core.assets import resolve_asset

from .fusion import PreNormDecoder
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .text import BERT_BASE

# Canonical finding id -> KAD's query phrase. KAD's official test scripts use these lists
# (`test_chestxray14.py`, `test_chexpert.py`, `test_padchest.py`):
# - ChestX-ray14: atelectasis, cardiomegaly, pleural effusion, infiltration, lung mass, lung nodule,
#   pneumonia, pneumothorax, consolidation, edema, emphysema, fibrosis, pleural thicken, hernia
# - CheXpert: atelectasis, cardiomegaly, consolidation, edema, pleural effusion
# - PadChest (193 names), e.g. normal, clavicle fracture, rib fracture, fracture, tuberculosis,
#   mediastinal shift, pulmonary artery enlargement, COPD signs, ...
# A phrase from those lists is used wherever one exists, quirks kept ("pleural thicken" is the
# official ChestX-ray14 query). The remaining findings get their plain name in the same style
# ("ours"). Catch-all labels ("other diseases", "other lesion", "pleural other") have no disease
# phrase and are unsupported. The tokenizer lower-cases; the phrases are lower case already.
DISEASE_PHRASES: dict[str, str] = {
    "aortic_enlargement": "aortic enlargement",  # ours
    "atelectasis": "atelectasis",  # CXR14, CheXpert
    "calcification": "calcification",  # ChestX-Det10 list of plot_visualize_512.py
    "cardiomegaly": "cardiomegaly",  # CXR14, CheXpert
    "clavicle_fracture": "clavicle fracture",  # PadChest
    "consolidation": "consolidation",  # CXR14, CheXpert
    "copd": "copd signs",  # PadChest "COPD signs"
    "covid19": "covid-19",  # ours
    "diffuse_nodule": "multiple nodules",  # PadChest
    "edema": "edema",  # CXR14, CheXpert
    "emphysema": "emphysema",  # CXR14
    "enlarged_cardiomediastinum": "enlarged cardiomediastinum",  # ours (CheXpert label name)
    "enlarged_pa": "pulmonary artery enlargement",  # PadChest
    "fibrosis": "fibrosis",  # CXR14
    "fracture": "fracture",  # PadChest
    "ground_glass_opacity": "ground glass pattern",  # PadChest
    "hernia": "hernia",  # CXR14
    "ild": "interstitial pattern",  # PadChest
    "infiltration": "infiltration",  # CXR14
    "lung_cavity": "cavitation",  # PadChest
    "lung_cyst": "cyst",  # PadChest
    "lung_lesion": "lung lesion",  # ours (CheXpert label name)
    "lung_opacity": "lung opacity",  # ours (CheXpert label name)
    "lung_tumor": "lung tumor",  # ours
    "mass": "lung mass",  # CXR14
    "mediastinal_shift": "mediastinal shift",  # PadChest
    "no_finding": "normal",  # PadChest
    "nodule": "lung nodule",  # CXR14
    "nodule_mass": "lung nodule or mass",  # ours
    "pleural_effusion": "pleural effusion",  # CXR14, CheXpert
    "pleural_thickening": "pleural thicken",  # CXR14 (sic)
    "pneumonia": "pneumonia",  # CXR14
    "pneumothorax": "pneumothorax",  # CXR14
    "rib_fracture": "rib fracture",  # PadChest
    "support_devices": "support devices",  # ours (CheXpert label name)
    "tuberculosis": "tuberculosis",  # PadChest
}

MAX_LENGTH = 256  # --max_length of the official test scripts
DEFAULT_TEXT_ENCODER = "xmcmic/Med-KEBERT"
# Med-KEBERT's shape (BERT-base, uncased, 30522 tokens), for checkpoint=random without files.
MED_KEBERT_SHAPE: dict[str, Any] = {"vocab_size": 30522, **BERT_BASE}
# Buffers that transformers < 4.31 saved with BertModel and today's BertModel does not keep: a
# checkpoint reader drops them from the text encoder's keys.
OLD_BERT_BUFFERS = ("bert_model.embeddings.position_ids", "bert_model.embeddings.token_type_ids")

# TQN_Model.__init__: the decoder's width, heads, feed-forward width, depth and dropout.
D_MODEL = 768
HEADS = 4
FFN = 1024
LAYERS = 4
DROPOUT = 0.1


# --------------------------------------------------------------------------------------------------
# Preprocessing


def squash_bicubic_8bit(image: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, Geometry]:
    """Gray H x W [0, 1] -> (ImageNet-normalised 3 x size tensor, its squash Geometry), as KAD's
    test transform: `Resize([h, w], BICUBIC)` of the 8-bit RGB image, `ToTensor`, `Normalize`.

    Pillow resizes 8-bit images in two passes with an 8-bit intermediate (clamped, rounded), which
    a float resize does not reproduce at edges, so the resize runs on the 8-bit image exactly as the
    official one does; the three RGB channels of a gray image are equal.
    """
    from PIL import Image

    gray = np.asarray(image, np.float32)
    eight_bit = np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
    resized = Image.fromarray(eight_bit).resize(size[::-1], Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, np.float32) / np.float32(255.0))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    geometry = Geometry.squash(gray.shape[:2], size)
    return ((pixels.unsqueeze(0) - mean) / std).contiguous(), geometry


# --------------------------------------------------------------------------------------------------
# Text encoder files


def resolve_text_config_folder(given: str | None, *, env: str, option: str, label: str) -> Path:
    """The folder with Med-KEBERT's config and tokenizer files (weights come from the checkpoint).

    `given` (else `$env`) is a local folder, used as it is, or a hub id (default
    xmcmic/Med-KEBERT), of which only the config and vocabulary files are fetched through the
    core's asset resolver. `option` (e.g. "kad.text_encoder") and `label` (e.g. "KAD") name the
    option and the model in the messages.
    """
    value = given or os.environ.get(env) or None
    if value is not None and Path(value).expanduser().exists():
        folder = Path(value).expanduser()
        missing = [n for n in ("config.json", "vocab.txt") if not (folder / n).is_file()]
        if not folder.is_dir() or missing:
            raise AssetError(
                f"the {label} text encoder {folder} must be a folder with config.json and "
                f"vocab.txt (missing: {missing or 'it is a file'}); pass the Med-KEBERT folder "
                f"with --set {option}=FOLDER"
            )
        return folder
    found = None
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        try:
            found = resolve_asset(
                "Med-KEBERT text encoder",
                value,
                env=env,
                hub_repo=DEFAULT_TEXT_ENCODER,
                filename=name,
                option=option,
            )
        except AssetError:
            if name in ("config.json", "vocab.txt"):
                raise
    assert found is not None
    return found.parent


def read_text_side(
    given: str | None, *, random: bool, env: str, option: str, label: str
) -> tuple[Any, Any]:
    """(BertConfig, tokenizer) from the text encoder folder or hub id; for `random` with nothing
    given, a Med-KEBERT-shaped config with a generated vocabulary."""
    if random and given is None:
        from .text import write_bert_folder

        with tempfile.TemporaryDirectory(prefix=f"xbench-{label.lower()}-bert-") as tmp:
            return _read_text_folder(write_bert_folder(tmp, **MED_KEBERT_SHAPE))
    return _read_text_folder(resolve_text_config_folder(given, env=env, option=option, label=label))


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


# --------------------------------------------------------------------------------------------------
# Networks (official module names: `CLP_clinical`, `TQN_Model`)


class PhraseTextEncoder(nn.Module):
    """`CLP_clinical`: Med-KEBERT (`bert_model`, with pooler) and `mlp_embed` on the pooler output."""

    def __init__(self, bert_config: Any) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert_model = BertModel(bert_config, add_pooling_layer=True)
        hidden = int(bert_config.hidden_size)
        # Official: Linear(768, 768), GELU, Linear(768, 768) with a 768-wide BERT; a tiny test
        # BERT only changes the first input width.
        self.mlp_embed = nn.Sequential(
            nn.Linear(hidden, D_MODEL), nn.GELU(), nn.Linear(D_MODEL, D_MODEL)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for m in self.mlp_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=D_MODEL**-0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`encode_text`: mlp_embed(pooler_output), not normalised -> [Q, 768]."""
        out = self.bert_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.mlp_embed(out.pooler_output)


class QueryDecoder(nn.Module):
    """`TQN_Model`: shared `decoder_norm` on image tokens and queries, 4 pre-norm DETR decoder
    layers whose final norm is that same `decoder_norm`, `mlp_head` -> [neg, pos].

    With `projection`, a d -> d `projection` layer follows `mlp_head` (DeViDe's head that aligns
    each query's decoded feature with the finding's descriptions; scores and maps do not use it).
    """

    def __init__(self, *, projection: bool = False) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.decoder_norm = nn.LayerNorm(D_MODEL)
        self.decoder = PreNormDecoder(D_MODEL, HEADS, FFN, LAYERS, DROPOUT, norm=self.decoder_norm)
        self.dropout_feas = nn.Dropout(DROPOUT)
        self.mlp_head = nn.Sequential(nn.Linear(D_MODEL, 2))
        if projection:
            self.projection = nn.Linear(D_MODEL, D_MODEL)
        self.apply(_init_like_tqn)

    def forward(
        self, image_tokens: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """image_tokens [B, N, d], queries [Q, d] -> (logits [B, Q, 2], every layer's
        cross-attention [B, Q, N] (first layer first), decoded features [B, Q, d])."""
        batch = image_tokens.shape[0]
        memory = self.decoder_norm(image_tokens.transpose(0, 1))
        tgt = self.decoder_norm(queries.unsqueeze(1).expand(-1, batch, -1))
        features, maps = self.decoder(tgt, memory)
        features = self.dropout_feas(features).transpose(0, 1)
        return self.mlp_head(features), maps, features


def _init_like_tqn(module: nn.Module) -> None:
    # TQN_Model._init_weights through `self.apply` (children before their parent): N(0, 0.02)
    # for linear and attention projection weights.
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=0.02)
    elif isinstance(module, nn.MultiheadAttention):
        module.in_proj_weight.data.normal_(mean=0.0, std=0.02)
        module.out_proj.weight.data.normal_(mean=0.0, std=0.02)


class QueryNetwork(nn.Module):
    """Everything the model runs, under one module so that the engine moves and casts it at once:
    `image_encoder` (the plugin's: pixels -> tokens [B, N, 768]), `text_encoder`
    (`PhraseTextEncoder`) and `fusion` (`QueryDecoder`), created in that order."""

    def __init__(
        self,
        image_encoder: Callable[[], nn.Module],
        bert_config: Any,
        *,
        initialize: bool = True,
        projection: bool = False,
    ) -> None:
        super().__init__()
        # Without `initialize`, the image encoder and the decoder are allocated but not
        # initialised (their weights are about to come from a checkpoint; initialising 60 M
        # parameters or more takes seconds). They hold no non-persistent buffer, so a strict load
        # overwrites every value. BERT keeps its own construction: its position ids are such a
        # buffer.
        self.image_encoder = _built(image_encoder, initialize)
        self.text_encoder = PhraseTextEncoder(bert_config)
        self.fusion = _built(lambda: QueryDecoder(projection=projection), initialize)

    def forward(
        self, pixels: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """pixels [B, 3, H, W], query embeddings [Q, 768] -> the outputs of `QueryDecoder`."""
        return self.fusion(self.image_encoder(pixels), queries)


def _built(factory: Callable[[], nn.Module], initialize: bool) -> nn.Module:
    """`factory()`, initialised, or allocated on the CPU with uninitialised values."""
    if initialize:
        return factory()
    with torch.device("meta"):
        module = factory()
    persistent = set(module.state_dict())
    transient = [name for name, _ in module.named_buffers() if name not in persistent]
    if transient:  # a checkpoint would not fill them
        raise RuntimeError(f"{type(module).__name__} has non-persistent buffers {transient}")
    return module.to_empty(device="cpu")


# --------------------------------------------------------------------------------------------------
# The model


class PhraseQueryModel(Model):
    """A disease-phrase query model for XBench (KAD, DeViDe).

    A subclass sets `name` (the plugin's name: options `<name>.*`, environment variables
    `XBENCH_<NAME>_*`), `label` (the name in messages), `input_size` (h, w) and `stride` (input
    pixels per map cell), implements `load_weights(path)` (its checkpoint reader: strict load into
    `module`) and `feature_layer`, and builds itself with `_build`. `attention_layers` chooses the
    native map: the last decoder layer's cross-attention (KAD's recipe) or the mean of the layers.
    `_extras(features)` may add to `ModelOutput.extras`.
    """

    map_kind = "cross_attention"
    name: str
    label: str
    input_size: tuple[int, int]
    stride: int
    attention_layers = "last"

    # ---- building ----------------------------------------------------------------------------
    def _build(
        self,
        checkpoint: str | None,
        text_encoder: str | None,
        image_encoder: Callable[[], nn.Module],
        *,
        asset: str,
        hint: str,
        filename: str | None = None,
        projection: bool = False,
    ) -> None:
        """Resolve the checkpoint (`asset` names it in messages, `filename` is its name in a
        folder or the cache) before anything is built, read the text side, build the network
        with seeded random weights, then load the checkpoint; eval mode."""
        upper = self.name.upper()
        self.queries = dict(DISEASE_PHRASES)
        self.random_weights = checkpoint == "random"
        self.checkpoint: Path | None = None
        if not self.random_weights:
            self.checkpoint = resolve_asset(
                asset,
                checkpoint,
                env=f"XBENCH_{upper}_CHECKPOINT",
                filename=filename,
                option=f"{self.name}.checkpoint",
                hint=hint,
            )
        bert_config, self.tokenizer = read_text_side(
            text_encoder,
            random=self.random_weights,
            env=f"XBENCH_{upper}_TEXT_ENCODER",
            option=f"{self.name}.text_encoder",
            label=self.label,
        )
        # Seeded and isolated, so that a random-weight model is the same in every process and
        # building one does not disturb the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.module = QueryNetwork(
                image_encoder,
                bert_config,
                initialize=self.checkpoint is None,
                projection=projection,
            )
        if self.checkpoint is not None:
            self.load_weights(self.checkpoint)
        self.module.eval()

    def load_weights(self, path: Path) -> None:
        """Load the checkpoint at `path` strictly into `module`."""
        raise NotImplementedError

    # ---- data side ---------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Gray H x W [0, 1] -> ImageNet-normalised 3 x h x w (squash, 8-bit bicubic), with its
        Geometry (`squash_bicubic_8bit`)."""
        return squash_bicubic_8bit(image, self.input_size)

    def encode_queries(self, findings: Sequence[str]) -> torch.Tensor:
        """Query embeddings [F, 768] (`mlp_embed` of Med-KEBERT's pooler output) for the findings."""
        unknown = [f for f in findings if f not in self.queries]
        if unknown:
            raise UnsupportedFinding(
                f"{self.label} has no query for {unknown}; supported findings: "
                f"{sorted(self.queries)}"
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

    # ---- device side -------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, queries: torch.Tensor) -> ModelOutput:
        """Scores softmax([neg, pos])[pos] [B, F]; cross-attention [B, F, h/stride, w/stride] of
        the last decoder layer (`attention_layers` "last") or the mean of the layers ("mean")."""
        logits, maps, features = self.module(pixels, queries)
        scores = torch.softmax(logits.float(), dim=-1)[..., 1]
        if self.attention_layers == "last":
            attention = maps[-1].float()
        else:
            attention = torch.stack([m.float() for m in maps]).mean(0)
        grid = (pixels.shape[-2] // self.stride, pixels.shape[-1] // self.stride)
        attention = attention.reshape(*attention.shape[:2], *grid)
        return ModelOutput(
            scores=scores, maps={self.map_kind: attention}, extras=self._extras(features)
        )

    def _extras(self, features: torch.Tensor) -> dict[str, Any]:
        """What `forward` adds to `ModelOutput.extras`, from the decoded features [B, F, 768]."""
        return {}

    def logits(self, pixels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """pos - neg logit [B, F]: its sigmoid is the score, so its gradient explains the score."""
        logits = self.module(pixels, queries)[0]
        return (logits[..., 1] - logits[..., 0]).float()
