"""The DETR pre-norm query decoder MAVL uses (Zero-shot_grounding/models/transformer.py:
`TransformerDecoder`, `TransformerDecoderLayer` with normalize_before=True, self_attention=True as
in every released config).

Sequence-first tensors (L, B, C); no positional encodings and no masks (the official forward passes
none); every layer returns the head-averaged cross-attention weights of `nn.MultiheadAttention`
(its defaults need_weights=True, average_attn_weights=True), [B, Q, T].
"""

from __future__ import annotations

from torch import Tensor, nn

from xbench_core import PreNormDecoderLayer


class Decoder(nn.Module):
    """A stack of layers and the final LayerNorm; returns (output, per-layer cross-attention)."""

    def __init__(
        self, d_model: int, heads: int, feedforward: int, layers: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            # MAVL creates norm1 and self_attn after linear2 (inside `if self_attention:`)
            PreNormDecoderLayer(d_model, heads, feedforward, dropout, self_attn_late=True)
            for _ in range(layers)
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


__all__ = ["Decoder", "init_like_official"]
