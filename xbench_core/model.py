"""The base class of model plugins' objects, and the explainer interface.

The engine places `module` on the device, sets eval mode and precision, calls `encode_queries` once
per run for the findings the model supports, then, per batch, `forward` under inference mode.
Gradient explainers use `logits` and `feature_layer` when the model offers them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Geometry
from .types import ModelOutput, Phrase


@dataclass(frozen=True)
class FeatureLayer:
    """A spatial layer for gradient explainers: the module whose output is hooked, and how to turn
    that output into a [B, D, gh, gw] grid (CNN maps pass through; ViT tokens drop the class token and
    reshape)."""

    module: Any
    to_grid: Callable[[Any], Any]


class Model:
    """A vision-language model wrapped for XBench.

    Subclasses set `module` (an `nn.Module` holding every parameter), `queries` (finding id -> the
    model's own query: prompt, entity or phrase; findings absent from it are unsupported), `map_kind`,
    and implement `preprocess`, `encode_queries` and `forward`.
    """

    module: Any = None
    queries: Mapping[str, Any] = {}
    map_kind: str = "similarity"
    random_weights: bool = False  # True when built with checkpoint="random"

    def supports(self, finding: str) -> bool:
        return finding in self.queries

    @property
    def device(self) -> Any:
        import torch

        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        """Original H x W float32 image in [0, 1] -> (C x h x w float32 tensor, its Geometry). CPU, in workers."""
        raise NotImplementedError

    def encode_queries(self, findings: Sequence[str]) -> Any:
        """The text side for these (supported) findings, on the model's device; computed once a run."""
        raise NotImplementedError

    def forward(self, pixels: Any, queries: Any) -> ModelOutput:
        """One batch [B, C, h, w] on the device -> scores [B, F] and maps {kind: [B, F, gh, gw]}."""
        raise NotImplementedError

    # ---- optional, for phrase grounding -----------------------------------------------------
    def encode_phrases(self, phrases: Sequence[Phrase]) -> Any:
        """The text side for these phrases (each with its finding), in the form `forward` takes:
        one column per phrase. Called per batch by the engine; cache by text inside."""
        raise NotImplementedError

    # ---- optional, for gradient explainers -------------------------------------------------
    def logits(self, pixels: Any, queries: Any) -> Any:
        """Differentiable per-finding logits [B, F] (the quantity whose gradient explains the score)."""
        raise NotImplementedError

    def feature_layer(self) -> FeatureLayer:
        """The spatial layer gradient explainers hook."""
        raise NotImplementedError

    def capabilities(self) -> frozenset[str]:
        """What this object offers the engine and explainers: "logits", "feature_layer", "phrases"."""
        caps = set()
        if type(self).encode_phrases is not Model.encode_phrases:
            caps.add("phrases")
        if type(self).logits is not Model.logits:
            caps.add("logits")
        if type(self).feature_layer is not Model.feature_layer:
            caps.add("feature_layer")
        return frozenset(caps)


class Explainer:
    """Turns a model's batch into maps [B, F, gh, gw] in the model-input frame."""

    requires: frozenset[str] = frozenset()
    needs_grad: bool = False

    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        raise NotImplementedError
