"""The CARZero network (`CARZeroDQNWOSAGLMLP`), with the official module names and key layout.

Followed: laihaoran/CARZero (fa4e09c)
- `CARZero/models/transformer_backbones.py`, `MRM` / `mrm_vit_b16`: MAE-style ViT-B/16 (timm
  `Block`s with qkv bias, LayerNorm eps 1e-6, GELU), `image_encoder` returns the normalized class
  token (global) and the 196 patch tokens (local); `vision_model.ImageEncoder` adds no projection.
- `CARZero/models/dqn_wo_self_atten_mlp.py`, `TQN_Model`: shared `decoder_norm` on image tokens and
  queries and as the decoder's final norm, 4 pre-norm layers, `mlp_head` 768-1024-512-256-1.
- `CARZero/models/transformer_decoder.py`, `TransformerDecoderWoSelfAttenLayer.forward_pre`: the
  `self_attn` and `norm1` parameters exist but the self-attention branch is skipped, so queries are
  processed independently; cross-attention weights are nn.MultiheadAttention's head average.
- `CARZero/models/CARZero_model_dqn_wo_self_atten_gl_mlp.py`, `CARZeroDQNWOSAGLMLP.forward` and
  `CARZero/CARZero.py`, `get_dqn_similarities`: image-to-text (memory = global + local image tokens,
  queries = sentence embeddings) and text-to-image (memory = sentence + 97 word embeddings, no
  padding mask, query = image global) passes, averaged.
The modules are written here (not imported from timm) so that only torch is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import nn
from xbench_blocks.decoder import PreNormDecoderLayer

from .text import TextEncoder

IMAGE_SIZE = 224
PATCH = 16
GRID = IMAGE_SIZE // PATCH  # 14
WIDTH = 768


# ---------------------------------------------------------------------------------------------
# Image encoder: MRM's ViT-B/16 (timm Block layout)


class PatchEmbed(nn.Module):
    """16 x 16 patches -> tokens (timm `PatchEmbed`: `proj` convolution, flattened row-major)."""

    def __init__(self, width: int = WIDTH, patch: int = PATCH, channels: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """timm ViT self-attention: one `qkv` projection, scaled dot-product, `proj`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, width * 3, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """timm `Mlp`: fc1, exact GELU, fc2."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm pre-norm transformer block (no layer scale, no drop path at inference)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoderViT(nn.Module):
    """The encoder half of MRM's ViT-B/16: [B, 3, 224, 224] -> normalized tokens [B, 197, 768]."""

    def __init__(self, width: int = WIDTH, depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # Fixed in MRM (requires_grad=False) but saved in the checkpoint.
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID * GRID + 1, width), requires_grad=False)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"CARZero takes 224 x 224 inputs, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed(pixels) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ImageEncoder(nn.Module):
    """`img_encoder`: the ViT is `.model`; global and local embedders are identities."""

    def __init__(self) -> None:
        super().__init__()
        self.model = MaskedAutoencoderViT()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] -> [B, 197, 768]: token 0 is the global embedding, 1: the 14 x 14 grid."""
        return self.model(pixels)


# ---------------------------------------------------------------------------------------------
# Fusion: TQN_Model with decoder layers that skip self-attention


class Decoder(nn.Module):
    """`TransformerDecoder`: the layers, then the final norm (the shared `decoder_norm`)."""

    def __init__(self, layers: int, norm: nn.Module) -> None:
        super().__init__()
        # `TransformerDecoderWoSelfAttenLayer`: self_attn, norm1 and dropout1 are created (their
        # weights are in the checkpoint) and never used, as in the official layer.
        self.layers = nn.ModuleList(
            [PreNormDecoderLayer(WIDTH, 4, 1024, 0.1, self_attention=False) for _ in range(layers)]
        )
        self.norm = norm

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = []
        for layer in self.layers:
            queries, w = layer(queries, memory, need_weights)
            if w is not None:
                weights.append(w)
        return self.norm(queries), weights


class FusionModule(nn.Module):
    """`TQN_Model` of `dqn_wo_self_atten_mlp.py` (the released "mlp_gl" variant)."""

    def __init__(self, width: int = WIDTH, layers: int = 4) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))  # unused at inference
        self.decoder_norm = nn.LayerNorm(width)
        self.decoder = Decoder(layers, self.decoder_norm)
        self.dropout_feas = nn.Dropout(0.1)
        self.mlp_head = nn.Sequential(
            nn.Linear(width, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(1024, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(512, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(256, 1),
        )

    def forward(
        self, memory: torch.Tensor, queries: torch.Tensor, need_weights: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """memory [N, S, D] (batch first), queries [Q, D] shared by the N items ->
        (logits [N, Q], per-layer cross-attention [N, Q, S] when `need_weights`)."""
        n = memory.shape[0]
        memory = self.decoder_norm(memory.transpose(0, 1))  # [S, N, D]
        queries = self.decoder_norm(queries.unsqueeze(1).expand(-1, n, -1))  # [Q, N, D]
        features, weights = self.decoder(queries, memory, need_weights)
        logits = self.mlp_head(self.dropout_feas(features).transpose(0, 1))  # [N, Q, 1]
        return logits.squeeze(-1), weights


class CARZeroNetwork(nn.Module):
    """`CARZeroDQNWOSAGLMLP`: `text_encoder`, `img_encoder`, `fusion_module`."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.text_encoder = TextEncoder(bert)
        self.img_encoder = ImageEncoder()
        self.fusion_module = FusionModule()

    def fuse(
        self,
        image_tokens: torch.Tensor,
        sentence: torch.Tensor,
        text_memory: torch.Tensor,
        need_weights: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Both passes of `get_dqn_similarities`, batched over images and prompts.

        image_tokens [B, 197, D]; sentence [F, D]; text_memory [F, 98, D] (sentence + 97 words).
        Returns the image-to-text logits [B, F], the text-to-image logits [B, F] and the 4
        image-to-text cross-attention maps [B, F, 197].
        """
        i2t, attention = self.fusion_module(image_tokens, sentence, need_weights=need_weights)
        # Text-to-image: each prompt's tokens are the memory, the image global tokens the queries
        # (no padding mask, as in the official code); [F, B] -> [B, F].
        t2i, _ = self.fusion_module(text_memory, image_tokens[:, 0], need_weights=False)
        return i2t, t2i.transpose(0, 1), attention
