"""Attention maps of a decoder LVLM's answer token over its image tokens, and the explainers that
return them.

Every function takes the eager attention tensors the language model returns, one [S, H, L, L] per
layer for S sequences, with `lengths` [S] (the answer is predicted at position length - 1, padding
after it) and `image_positions` [N] (the image tokens, in the image-token grid's row-major order).

- `answer_attention`: the answer token's attention row, heads averaged, at the image columns
  (MedFocus `attention_head`, head "avg", one answer position);
- `rollout`: attention rollout (Abnar and Zuidema 2020): per layer A' = (mean_heads(A) + I),
  rows normalized to 1, composed from the last layer down, r = e_answer A'_L ... A'_1, read at the
  image columns. (MedFocus's `attention_rollout` multiplies the layers in the other order,
  A'_1 ... A'_L; the definition of the paper is followed here.)
"""

from __future__ import annotations

from typing import Any

from xbench_core import Explainer, Model, ModelOutput


def answer_attention(attention: Any, lengths: Any, image_positions: Any) -> Any:
    """[S, H, L, L] -> [S, N]: the answer row (position length - 1), heads averaged, image columns."""
    import torch

    rows = attention[torch.arange(attention.shape[0], device=attention.device), :, lengths - 1]  # [S, H, L]
    return rows.float().mean(1)[:, image_positions]


def rollout(layers: Any, lengths: Any, image_positions: Any) -> Any:
    """Attention rollout of the answer token over the image tokens, [S, N] (float32)."""
    import torch

    s, _, length, _ = layers[0].shape
    device = layers[0].device
    eye = torch.eye(length, device=device)
    r = torch.zeros((s, 1, length), device=device)
    r[torch.arange(s, device=device), 0, lengths - 1] = 1.0
    with torch.autocast(device.type, enabled=False):  # float32 products under bf16 autocast too
        for attention in reversed(layers):
            a = attention.float().mean(1) + eye
            a = a / a.sum(-1, keepdim=True)
            r = r @ a
    return r[:, 0, image_positions]


class StoredMap(Explainer):
    """One of the maps the LVLM's forward pass already computed (no extra pass)."""

    requires = frozenset({"lvlm_attention"})
    kind = ""

    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        return output.maps[self.kind]


class AttentionMean(StoredMap):
    """Answer-token attention to the image tokens, heads and layers averaged."""

    kind = "attention_mean"


class Rollout(StoredMap):
    """Attention rollout of the answer token over the image tokens."""

    kind = "rollout"


class GradientAttention(Explainer):
    """ReLU(d logit / d A) * A of the last layer (Chefer et al. 2021), answer row, image columns."""

    requires = frozenset({"lvlm_attention"})
    needs_grad = True

    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        return model.gradient_attention(pixels, queries)  # type: ignore[attr-defined]
