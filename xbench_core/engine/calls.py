"""How the engine calls a model and an explainer: the grad modes and autocast around
`encode_queries`, `forward` and `explain`. The run loop and the conformance suites
(`xbench_core.testing`) both call these, so a suite tests a plugin exactly as a run uses it.

- `encode_queries` (and `encode_phrases`, per batch) runs under `torch.no_grad()`, not `torch.inference_mode()`: the queries are
  encoded once and reused by every batch, and gradient explainers build graphs with them (autograd
  cannot save inference tensors for backward). No graph is recorded either way.
- `forward` and explainers without gradients run under `torch.inference_mode()`.
- explainers with `needs_grad` run with gradients on (and outside inference mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..types import ModelOutput
from .device import autocast


def encode_queries(model: Any, findings: Sequence[str]) -> Any:
    """The model's queries for `findings`, usable by the forward pass and by gradient explainers."""
    import torch

    with torch.no_grad():
        return model.encode_queries(list(findings))


def encode_phrases(model: Any, phrases: Sequence[Any]) -> Any:
    """The model's queries for one batch's phrases (as `encode_queries`: no_grad, ordinary tensors)."""
    import torch

    with torch.no_grad():
        return model.encode_phrases(list(phrases))


def forward(model: Any, pixels: Any, queries: Any, device: Any = None, precision: str = "fp32") -> ModelOutput:
    """One batch through the model, under inference mode and the run's autocast."""
    import torch

    with torch.inference_mode(), autocast(device or pixels.device, precision):
        return model.forward(pixels, queries)


def explain(
    explainer: Any,
    needs_grad: bool,
    model: Any,
    pixels: Any,
    queries: Any,
    output: ModelOutput,
    device: Any = None,
    precision: str = "fp32",
) -> Any:
    """An explainer's maps [B, F, gh, gw] (detached float32), with gradients when it needs them."""
    import torch

    if needs_grad:
        with torch.inference_mode(False), torch.enable_grad(), autocast(device or pixels.device, precision):
            maps = explainer.explain(model, pixels, queries, output)
    else:
        with torch.inference_mode(), autocast(device or pixels.device, precision):
            maps = explainer.explain(model, pixels, queries, output)
    return maps.detach().float()
