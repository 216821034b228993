"""DeViDe's networks as the paper describes them, on KAD's code base (no public code exists).

DeViDe (Luo et al., arXiv 2404.03618) states: a ViT-B image encoder, the Med-KEBERT text encoder,
a binary (L_bce) disease-query head as in KAD, and "a novel projection layer" to align each image
with the several descriptions of a multi-label study. Everything below that the paper does not
pin down follows KAD (xiaoman-zhang/KAD, commit 591d999): `CLP_clinical` (Med-KEBERT +
`mlp_embed`), `TQN_Model` (shared `decoder_norm`, 4 pre-norm DETR decoder layers, d 768, 4 heads,
FFN 1024, `mlp_head` -> 2) and `ModelViT224` (Hugging Face ViT-B/16 `vit.*`, tokens after the final
layernorm, class token dropped). This file duplicates the decoder written for the KAD plugin on
purpose: plugins never import each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xbench_core import PreNormDecoderLayer

D_MODEL = 768
HEADS = 4
FFN = 1024
LAYERS = 4
DROPOUT = 0.1
IMAGE_SIZE = 224
PATCH = 16

# ViT-B/16 at 224 (google/vit-base-patch16-224-in21k, the ViT of KAD's ModelViT224).
VIT_WIDTH = 768
VIT_DEPTH = 12
VIT_HEADS = 12
VIT_MLP = 3072
VIT_EPS = 1e-12


def _container(**children: nn.Module) -> nn.Module:
    """A module that only names its children (to keep a checkpoint's key layout)."""
    module = nn.Module()
    for name, child in children.items():
        module.add_module(name, child)
    return module


class ViTLayer(nn.Module):
    """A pre-norm ViT block with the module names of Hugging Face's ViTLayer (transformers 4.x)."""

    def __init__(self) -> None:
        super().__init__()
        qkv = {n: nn.Linear(VIT_WIDTH, VIT_WIDTH) for n in ("query", "key", "value")}
        self.attention = _container(
            attention=_container(**qkv), output=_container(dense=nn.Linear(VIT_WIDTH, VIT_WIDTH))
        )
        self.intermediate = _container(dense=nn.Linear(VIT_WIDTH, VIT_MLP))
        self.output = _container(dense=nn.Linear(VIT_MLP, VIT_WIDTH))
        self.layernorm_before = nn.LayerNorm(VIT_WIDTH, eps=VIT_EPS)
        self.layernorm_after = nn.LayerNorm(VIT_WIDTH, eps=VIT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        h = self.layernorm_before(x)
        heads = [
            getattr(self.attention.attention, n)(h)
            .view(batch, length, VIT_HEADS, VIT_WIDTH // VIT_HEADS)
            .transpose(1, 2)
            for n in ("query", "key", "value")
        ]
        attended = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(batch, length, -1)
        x = x + self.attention.output.dense(attended)
        h = self.intermediate.dense(self.layernorm_after(x))
        return x + self.output.dense(F.gelu(h))


class ViT(nn.Module):
    """ViT-B/16 with the key layout of a Hugging Face ViTModel saved by transformers 4.x
    (`embeddings.*`, `encoder.layer.{i}.attention.attention.query`, ..., `layernorm`, `pooler`).

    Written here rather than taken from transformers, whose 5.x ViTModel renamed its modules
    (`layers.{i}.attention.q_proj`, `mlp.fc1`, ...): a 2024 checkpoint holds the 4.x names, and
    a test checks this module against transformers' ViTModel numerically.
    """

    def __init__(self) -> None:
        super().__init__()
        tokens = (IMAGE_SIZE // PATCH) ** 2 + 1
        self.embeddings = _container(
            patch_embeddings=_container(
                projection=nn.Conv2d(3, VIT_WIDTH, kernel_size=PATCH, stride=PATCH)
            )
        )
        self.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, VIT_WIDTH))
        self.embeddings.position_embeddings = nn.Parameter(torch.zeros(1, tokens, VIT_WIDTH))
        self.encoder = _container(layer=nn.ModuleList(ViTLayer() for _ in range(VIT_DEPTH)))
        self.layernorm = nn.LayerNorm(VIT_WIDTH, eps=VIT_EPS)
        self.pooler = _container(dense=nn.Linear(VIT_WIDTH, VIT_WIDTH))
        # Hugging Face's ViT initialisation (initializer_range 0.02).
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> all tokens after the final layernorm [B, 197, 768]."""
        x = self.embeddings.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        cls = self.embeddings.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat((cls, x), dim=1) + self.embeddings.position_embeddings.to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class ImageEncoder(nn.Module):
    """ViT-B/16 at 224 in `ModelViT224`'s layout (`vit`, pooler included, though unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = ViT()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> patch tokens [B, 196, 768] (after the final layernorm, no CLS)."""
        return self.vit(pixels)[:, 1:]


class TextEncoder(nn.Module):
    """KAD's `CLP_clinical`: Med-KEBERT (`bert_model`, with pooler) and `mlp_embed` on the pooler."""

    def __init__(self, bert_config: object) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert_model = BertModel(bert_config, add_pooling_layer=True)
        hidden = int(bert_config.hidden_size)  # type: ignore[attr-defined]
        self.mlp_embed = nn.Sequential(
            nn.Linear(hidden, D_MODEL), nn.GELU(), nn.Linear(D_MODEL, D_MODEL)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for m in self.mlp_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=D_MODEL**-0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """mlp_embed(pooler_output) -> [Q, 768], not normalised (KAD's `encode_text`)."""
        out = self.bert_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.mlp_embed(out.pooler_output)


class Decoder(nn.Module):
    """The decoder layers and the final norm (shared with `decoder_norm`, as in TQN_Model)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PreNormDecoderLayer(D_MODEL, HEADS, FFN, DROPOUT) for _ in range(LAYERS)
        )
        self.norm = norm

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (normalised output [Q, B, d], every layer's cross-attention [B, Q, N])."""
        maps = []
        for layer in self.layers:
            tgt, weights = layer(tgt, memory)
            maps.append(weights)
        return self.norm(tgt), maps


class QueryDecoder(nn.Module):
    """KAD's `TQN_Model` plus DeViDe's projection layer for multi-description alignment.

    `projection` maps each query's decoded feature (the image as seen by that finding) into the
    text embedding space, where it is compared with the finding's several descriptions. It is a
    training-time head: scores and maps do not use it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.decoder_norm = nn.LayerNorm(D_MODEL)
        self.decoder = Decoder(self.decoder_norm)
        self.dropout_feas = nn.Dropout(DROPOUT)
        self.mlp_head = nn.Sequential(nn.Linear(D_MODEL, 2))
        self.projection = nn.Linear(D_MODEL, D_MODEL)
        self.apply(_init_like_tqn)

    def forward(
        self, image_tokens: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """image_tokens [B, N, d], queries [Q, d] ->
        (logits [B, Q, 2], per-layer cross-attention [B, Q, N], decoded features [B, Q, d])."""
        batch = image_tokens.shape[0]
        memory = self.decoder_norm(image_tokens.transpose(0, 1))
        tgt = self.decoder_norm(queries.unsqueeze(1).expand(-1, batch, -1))
        features, maps = self.decoder(tgt, memory)
        features = self.dropout_feas(features).transpose(0, 1)
        return self.mlp_head(features), maps, features

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Decoded features [B, Q, d] -> unit vectors in the description embedding space."""
        return F.normalize(self.projection(features), dim=-1)


def _init_like_tqn(module: nn.Module) -> None:
    # TQN_Model._init_weights: N(0, 0.02) for linear and attention projection weights.
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=0.02)
    elif isinstance(module, nn.MultiheadAttention):
        module.in_proj_weight.data.normal_(mean=0.0, std=0.02)
        module.out_proj.weight.data.normal_(mean=0.0, std=0.02)


class DeViDeNetwork(nn.Module):
    """Everything DeViDe runs, under one module (image encoder, text encoder, fusion)."""

    def __init__(self, bert_config: object, *, initialize: bool = True) -> None:
        super().__init__()
        # Without `initialize`, the ViT and the decoder are allocated but not initialised (their
        # weights are about to come from a checkpoint; initialising 110 M parameters takes
        # seconds). They hold no non-persistent buffer, so a strict load overwrites every value.
        # BERT keeps its own construction: its position ids are such a buffer.
        self.image_encoder = _built(ImageEncoder, initialize)
        self.text_encoder = TextEncoder(bert_config)
        self.fusion = _built(QueryDecoder, initialize)

    def forward(
        self, pixels: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """pixels [B, 3, 224, 224], queries [Q, 768] -> fusion outputs (see QueryDecoder)."""
        return self.fusion(self.image_encoder(pixels), queries)


def _built(cls: type[nn.Module], initialize: bool) -> nn.Module:
    """An instance of `cls`, initialised, or allocated on the CPU with uninitialised values."""
    if initialize:
        return cls()
    with torch.device("meta"):
        module = cls()
    persistent = set(module.state_dict())
    transient = [name for name, _ in module.named_buffers() if name not in persistent]
    if transient:  # a checkpoint would not fill them
        raise RuntimeError(f"{cls.__name__} has non-persistent buffers {transient}")
    return module.to_empty(device="cpu")
