"""DeViDe's image encoder as the paper describes it, on KAD's code base (no public code exists).

DeViDe (Luo et al., arXiv 2404.03618) states: a ViT-B image encoder, the Med-KEBERT text encoder,
a binary (L_bce) disease-query head as in KAD, and "a novel projection layer" to align each image
with the several descriptions of a multi-label study. Everything below that the paper does not
pin down follows KAD (xiaoman-zhang/KAD, commit 591d999): `CLP_clinical` (Med-KEBERT +
`mlp_embed`), `TQN_Model` (shared `decoder_norm`, 4 pre-norm DETR decoder layers, d 768, 4 heads,
FFN 1024, `mlp_head` -> 2) and `ModelViT224` (Hugging Face ViT-B/16 `vit.*`, tokens after the final
layernorm, class token dropped). The parts shared with KAD (`CLP_clinical`, `TQN_Model` with
DeViDe's `projection` layer after `mlp_head`) are `xbench_blocks.knowledge`'s `PhraseTextEncoder` and
`QueryDecoder(projection=True)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 224
PATCH = 16

# ViT-B/16 at 224 (google/vit-base-patch16-224-in21k, the ViT of KAD's ModelViT224).
VIT_WIDTH = 768
VIT_DEPTH = 12
VIT_HEADS = 12
VIT_MLP = 3072
VIT_EPS = 1e-12


def _container(**children: nn.Module) -> Any:
    """A module that only names its children (to keep a checkpoint's key layout); typed Any, as
    its attributes are set at run time."""
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
                if m.bias is not None:
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
