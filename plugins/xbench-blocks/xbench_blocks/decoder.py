"""The DETR-style pre-norm transformer decoder layer of MedKLIP, MAVL, KAD, DeViDe and CARZero.

DETR's models/transformer.py `TransformerDecoderLayer` with normalize_before=True, as copied into
each official repository: sequence-first tensors (L, B, C), no positional encodings and no masks
(every official forward passes pos=None, query_pos=None), ReLU FFN. The cross-attention weights of
`nn.MultiheadAttention` are returned averaged over heads, [B, Q, T].

The attribute names and their creation order are the official ones, so that the state_dict keys
match the released checkpoints: `self_attn, multihead_attn, linear1, dropout, linear2, norm1..3,
dropout1..3`; MAVL creates `norm1` and `self_attn` after `linear2` (`self_attn_late=True`).
CARZero's `TransformerDecoderWoSelfAttenLayer` creates the self-attention but never runs it
(`self_attention=False`).

Public (through `xbench_core`): `PreNormDecoderLayer`.
"""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import Tensor, nn


class PreNormDecoderLayer(nn.Module):
    """t += SA(norm1(t)) (unless `self_attention` is False); t += CA(norm2(t), memory);
    t += FFN(norm3(t)). `forward(target, memory, need_weights=True) -> (target, weights | None)`."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        feedforward: int,
        dropout: float = 0.1,
        *,
        self_attention: bool = True,
        self_attn_late: bool = False,
    ) -> None:
        super().__init__()
        self.self_attention = self_attention
        if not self_attn_late:
            self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        if self_attn_late:
            self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, target: Tensor, memory: Tensor, need_weights: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """target [Q, B, C], memory [T, B, C] -> (target, cross-attention [B, Q, T] or None)."""
        if self.self_attention:
            normed = self.norm1(target)
            attended, _ = self.self_attn(normed, normed, normed, need_weights=False)
            target = target + self.dropout1(attended)
        normed = self.norm2(target)
        attended, weights = self.multihead_attn(
            normed, memory, memory, need_weights=need_weights, average_attn_weights=True
        )
        target = target + self.dropout2(attended)
        normed = self.norm3(target)
        target = target + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(normed)))))
        return target, weights
