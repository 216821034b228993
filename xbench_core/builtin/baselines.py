"""Chance references: `random` (seeded random maps and scores) and `center` (a centered Gaussian
prior map with a constant score). Any real model should beat both; on a real dataset they show how
much of a grounding score comes from where lesions usually are (`center`) or from nothing (`random`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..findings import BY_ID
from ..geometry import Geometry, squash
from ..model import Explainer, Model
from ..types import ModelOutput

GRID = 14
SIZE = 224


class _Baseline(Model):
    def __init__(self) -> None:
        import torch

        self.module = torch.nn.Module()
        self.module.register_buffer("anchor", torch.zeros(1))  # carries the device
        self.queries = {f: f for f in BY_ID}

    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        import torch

        pixels, geom = squash(image, (SIZE, SIZE))
        return torch.from_numpy(pixels)[None], geom

    def encode_queries(self, findings: Sequence[str]) -> list[str]:
        return list(findings)


class RandomBaseline(_Baseline):
    """Random maps and scores, the same for the same image whatever the batch (seeded by content)."""

    map_kind = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def forward(self, pixels: Any, queries: list[str]) -> ModelOutput:
        import torch

        scores, maps = [], []
        for img in pixels.detach().float().cpu().numpy():
            crc = zlib.crc32(np.ascontiguousarray(img).tobytes())
            s, m = [], []
            for f in queries:
                rng = np.random.default_rng([self.seed, crc, zlib.crc32(f.encode())])
                s.append(rng.random())
                m.append(rng.random((GRID, GRID)))
            scores.append(s)
            maps.append(m)
        dev = pixels.device
        return ModelOutput(
            scores=torch.tensor(np.array(scores), dtype=torch.float32, device=dev),
            maps={"random": torch.tensor(np.array(maps), dtype=torch.float32, device=dev)},
        )


class CenterBaseline(_Baseline):
    """A centered isotropic Gaussian map (sigma a quarter of the side) and a constant score 0.5."""

    map_kind = "prior"

    def __init__(self, sigma: float = 0.25) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, pixels: Any, queries: list[str]) -> ModelOutput:
        import torch

        c = (torch.arange(GRID, dtype=torch.float32, device=pixels.device) + 0.5) / GRID - 0.5
        g = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * self.sigma**2))
        b, f = pixels.shape[0], len(queries)
        return ModelOutput(
            scores=torch.full((b, f), 0.5, device=pixels.device),
            maps={"prior": g.expand(b, f, GRID, GRID).clone()},
        )


class NativeExplainer(Explainer):
    """The model's own map (similarity or cross-attention), as its forward pass returns it."""

    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        if model.map_kind in output.maps:
            return output.maps[model.map_kind]
        return next(iter(output.maps.values()))
