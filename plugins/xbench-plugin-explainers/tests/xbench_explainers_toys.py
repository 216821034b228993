"""Tiny `xbench_core.Model`s whose explanations are known, for the explainer tests and the cost
benchmark; also a plugin (the hook at the bottom) so that `xbench run` can use them in a subprocess.

ToyConv: a 4 x 4 / stride-4 patch convolution and a ReLU (the feature layer, A = [B, K, 12, 16] on
a 48 x 64 input), and logit_f = gain * (q_f . r) + bias (+ curvature * (q_f . r)^2) with r_k the
mean of A_k over a region R of the grid (the whole grid when region is None: then the logit is
linear in A and Grad-CAM has a closed form). With `detector=True` the two channels are fixed:
channel 0 = ReLU(patch mean - 0.5) fires on bright patches, channel 1 = ReLU(0.5 - patch mean) on
dark ones. ToyTokens: the same with a ViT-like feature layer (a class token plus one token per
patch) and a `to_grid` that drops the class token and reshapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xbench_core import FeatureLayer, Model, ModelOutput, ModelSpec, Option, hookimpl
from xbench_core.geometry import squash

INPUT = (48, 64)
PATCH = 4
GRID = (INPUT[0] // PATCH, INPUT[1] // PATCH)  # (12, 16): not square, so a transposition shows
REGION = (2, 6, 9, 14)  # rows 2..5, columns 9..13 of the grid: input rows 8..23, columns 36..55


def region_mask(region: tuple[int, int, int, int] | None) -> torch.Tensor:
    """The region as a float [12, 16] mask of grid cells (all ones when None)."""
    mask = torch.zeros(GRID) if region is not None else torch.ones(GRID)
    if region is not None:
        r0, r1, c0, c1 = region
        mask[r0:r1, c0:c1] = 1.0
    return mask


class _Net(nn.Module):
    def __init__(self, k: int, detector: bool, batchnorm: bool, generator: torch.Generator) -> None:
        super().__init__()
        conv = nn.Conv2d(3, k, PATCH, stride=PATCH)
        with torch.no_grad():
            if detector:
                conv.weight.zero_()
                conv.weight[0].fill_(1.0 / (3 * PATCH * PATCH))
                conv.weight[1].fill_(-1.0 / (3 * PATCH * PATCH))
                conv.bias.copy_(torch.tensor([-0.5, 0.5]))
            else:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
                conv.bias.copy_(torch.randn(k, generator=generator) * 0.1)
        layers: list[nn.Module] = [conv]
        if batchnorm:
            bn = nn.BatchNorm2d(k)
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(k, generator=generator) * 0.1)
                bn.running_var.copy_(torch.rand(k, generator=generator) + 0.5)
                bn.weight.copy_(torch.rand(k, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(k, generator=generator) * 0.1)
            layers.append(bn)
        layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.register_buffer("region", torch.ones(GRID))


class ToyConv(Model):
    """A patch-conv model whose logit reads only a region of the grid (see the module docstring)."""

    map_kind = "similarity"

    def __init__(
        self,
        region: tuple[int, int, int, int] | None = REGION,
        detector: bool = True,
        k: int = 6,
        gain: float = 1.0,
        bias: float = 0.0,
        curvature: float = 0.0,
        batchnorm: bool = False,
        seed: int = 0,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        k = 2 if detector else k
        self.module = _Net(k, detector, batchnorm, generator)
        self.module.region.copy_(region_mask(region))
        self.module.eval()
        self.gain, self.bias, self.curvature = gain, bias, curvature
        if detector:
            vectors = {"nodule": [1.0, 0.0], "mass": [0.0, 1.0], "pneumothorax": [1.0, -1.0]}
            self.vectors = {f: torch.tensor(v) for f, v in vectors.items()}
        else:
            names = ("nodule", "mass", "pneumothorax")
            self.vectors = {f: torch.randn(k, generator=generator) for f in names}
        self.queries = {f: f for f in self.vectors}

    def preprocess(self, image: np.ndarray) -> tuple[Any, Any]:
        pixels, geometry = squash(image, INPUT)
        return torch.from_numpy(pixels)[None].expand(3, -1, -1).clone(), geometry

    def encode_queries(self, findings: Sequence[str]) -> Any:
        return torch.stack([self.vectors[f] for f in findings]).to(self.device)

    def features(self, pixels: Any) -> Any:
        return self.module.features(pixels)

    def _logits(self, a: Any, queries: Any) -> Any:
        region = self.module.region
        r = (a * region).sum(dim=(2, 3)) / region.sum()  # [B, K]
        s = r @ queries.T  # [B, F]
        return self.gain * s + self.curvature * s * s + self.bias

    def logits(self, pixels: Any, queries: Any) -> Any:
        return self._logits(self.features(pixels), queries)

    def forward(self, pixels: Any, queries: Any) -> ModelOutput:
        a = self.features(pixels)
        logits = self._logits(a, queries)
        maps = torch.einsum("bkhw,fk->bfhw", a, queries)
        return ModelOutput(scores=torch.sigmoid(logits), maps={"similarity": maps})

    def feature_layer(self) -> FeatureLayer:
        return FeatureLayer(self.module.features, lambda a: a)


class _TokenLayer(nn.Module):
    """Patch conv -> tokens [B, 1 + h*w, K] with a learned class token (like a ViT block's output)."""

    def __init__(self, k: int, generator: torch.Generator) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, k, PATCH, stride=PATCH)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.3)
        self.cls = nn.Parameter(torch.randn(1, 1, k, generator=generator))

    def forward(self, pixels: Any) -> Any:
        patches = self.conv(pixels).flatten(2).transpose(1, 2)  # [B, h*w, K]
        return torch.cat([self.cls.expand(patches.shape[0], -1, -1), patches], dim=1)


def tokens_to_grid(tokens: Any) -> Any:
    """[B, 1 + h*w, K] -> [B, K, h, w]: drop the class token, row-major patches."""
    b, _, k = tokens.shape
    return tokens[:, 1:].transpose(1, 2).reshape(b, k, *GRID)


class ToyTokens(ToyConv):
    """ViT-like: logit_f = q_f . mean(patch tokens) + v_f . class token (linear in the tokens)."""

    def __init__(self, k: int = 5, seed: int = 0) -> None:
        super().__init__(region=None, detector=False, k=k, seed=seed)
        generator = torch.Generator().manual_seed(seed + 1)
        self.module = nn.Module()
        self.module.tokens = _TokenLayer(k, generator)
        self.module.eval()
        self.class_weights = torch.randn(k, generator=generator)

    def features(self, pixels: Any) -> Any:
        return self.module.tokens(pixels)

    def logits(self, pixels: Any, queries: Any) -> Any:
        tokens = self.features(pixels)
        return tokens[:, 1:].mean(dim=1) @ queries.T + (tokens[:, 0] @ self.class_weights)[:, None]

    def forward(self, pixels: Any, queries: Any) -> ModelOutput:
        grid = tokens_to_grid(self.features(pixels))
        maps = torch.einsum("bkhw,fk->bfhw", grid, queries)
        return ModelOutput(
            scores=torch.sigmoid(self.logits(pixels, queries)), maps={"similarity": maps}
        )

    def feature_layer(self) -> FeatureLayer:
        return FeatureLayer(self.module.tokens, tokens_to_grid)


def toyconv_factory(gain: float = 20.0, bias: float = -2.0) -> ToyConv:
    """The region model with a steep score, as the `toyconv` plugin model builds it."""
    return ToyConv(gain=gain, bias=bias)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """`toyconv`: the region model, for end-to-end runs of the explainers through the engine."""
    register(
        ModelSpec(
            name="toyconv",
            summary="test model: bright patches in one region of the grid raise the logit",
            factory="xbench_explainers_toys:toyconv_factory",
            capabilities=frozenset({"logits", "feature_layer"}),
            options=(Option("gain", float, 20.0), Option("bias", float, -2.0)),
        )
    )
