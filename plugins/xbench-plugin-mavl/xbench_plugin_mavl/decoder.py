"""The DETR pre-norm query decoder MAVL uses (Zero-shot_grounding/models/transformer.py:
`TransformerDecoder`, `TransformerDecoderLayer` with normalize_before=True, self_attention=True as
in every released config).

Sequence-first tensors (L, B, C); no positional encodings and no masks (the official forward passes
none); every layer returns the head-averaged cross-attention weights of `nn.MultiheadAttention`
(its defaults need_weights=True, average_attn_weights=True), [B, Q, T].
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DecoderLayer(nn.Module):
    """One pre-norm layer: t += SA(norm1(t)); t += CA(norm2(t), memory); t += FFN(norm3(t))."""

    def __init__(self, d_model: int, heads: int, feedforward: int, dropout: float = 0.1) -> None:
        super().__init__()
        # Creation order as in MAVL's layer (norm1 and self_attn come after linear2 there, inside
        # `if self_attention:`), so that state_dict keys come in the official order.
        self.multihead_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, target: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        normed = self.norm1(target)
        attended, _ = self.self_attn(normed, normed, normed, need_weights=False)
        target = target + self.dropout1(attended)
        normed = self.norm2(target)
        attended, weights = self.multihead_attn(normed, memory, memory, need_weights=True)
        target = target + self.dropout2(attended)
        normed = self.norm3(target)
        target = target + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(normed)))))
        return target, weights


class Decoder(nn.Module):
    """A stack of layers and the final LayerNorm; returns (output, per-layer cross-attention)."""

    def __init__(
        self, d_model: int, heads: int, feedforward: int, layers: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, heads, feedforward, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, queries: Tensor, memory: Tensor) -> tuple[Tensor, list[Tensor]]:
        output, attention = queries, []
        for layer in self.layers:
            output, weights = layer(output, memory)
            attention.append(weights)
        return self.norm(output), attention


def init_like_official(module: nn.Module) -> None:
    """MAVL._init_weights: Linear weights and attention projections ~ N(0, 0.02); biases, convs and
    the ResNet's own init are left as they are (the official code does not touch them either)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=0.02)
        elif isinstance(sub, nn.MultiheadAttention):
            nn.init.normal_(sub.in_proj_weight, mean=0.0, std=0.02)
            nn.init.normal_(sub.out_proj.weight, mean=0.0, std=0.02)


__all__ = ["Decoder", "DecoderLayer", "init_like_official"]
