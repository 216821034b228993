"""`contrast`: a training-free reference model that really looks at the image.

Map: the local contrast of the input, the image minus its large-scale background (a separable
Gaussian blur of `sigma` x the input side), average-pooled to a 56 x 56 grid. Score:
sigmoid(gain x (m - level)) where m is the map's maximum in the lung fields, found without training
as the dark regions of the lightly smoothed image (below its mean) that do not touch the image
border (the air outside the body does), closed over 6% of the side and with holes filled so that
lesions belong to them; with no such region, the central 76% of the image. The same map and score
answer every finding: a bright-blob detector. It gives faithfulness measures a known answer (its
score depends on the lesion pixels of the phantom), and on real data it answers "does this VLM beat
a blob detector?".

The blur and the score are layers with parameters (the blur kernels, the score's gain and level),
so that the sanity check's randomization changes its maps as it would a trained model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import ModelOutput
from .baselines import SIZE, _Baseline

GRID = 56


def _lungs(image: np.ndarray) -> np.ndarray:
    """The dark fields of an image [h, w] not connected to its border (the air outside the body
    is), closed and with holes filled so that bright lesions inside or at the edge belong to them."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image.astype(np.float64), 2.0)
    dark = smooth < smooth.mean()
    labels, _ = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = dark & ~np.isin(labels, border)
    if not inside.any():
        h, w = image.shape
        inside = np.zeros_like(dark)
        inside[round(h * 0.12) : round(h * 0.88), round(w * 0.12) : round(w * 0.88)] = True
        return inside
    reach = max(1, round(0.06 * max(image.shape)))
    return ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=reach, border_value=0))


class ContrastReference(_Baseline):
    """Local-contrast map and a score that grows with the map's maximum in the lungs."""

    map_kind = "contrast"

    def __init__(self, sigma: float = 0.05, gain: float = 40.0, level: float = 0.2) -> None:
        import torch

        super().__init__()
        radius = max(1, int(np.ceil(3 * sigma * SIZE)))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(t**2) / (2 * (sigma * SIZE) ** 2))
        k = k / k.sum()
        net = torch.nn.Module()
        net.blur_y = torch.nn.Conv2d(1, 1, (2 * radius + 1, 1), padding=(radius, 0), padding_mode="replicate", bias=False)
        net.blur_x = torch.nn.Conv2d(1, 1, (1, 2 * radius + 1), padding=(0, radius), padding_mode="replicate", bias=False)
        net.score = torch.nn.Linear(1, 1)
        with torch.no_grad():
            net.blur_y.weight.copy_(k.view(1, 1, -1, 1))
            net.blur_x.weight.copy_(k.view(1, 1, 1, -1))
            net.score.weight.fill_(gain)
            net.score.bias.fill_(-gain * level)
        self.module = net.eval().requires_grad_(False)

    def forward(self, pixels: Any, queries: list[str]) -> ModelOutput:
        import torch
        import torch.nn.functional as F

        net = self.module
        x = pixels.float()
        background = net.blur_x(net.blur_y(x))
        contrast = (x - background)[:, 0]
        lungs = torch.from_numpy(np.stack([_lungs(im) for im in x[:, 0].cpu().numpy()])).to(x.device)
        peak = torch.where(lungs, contrast, torch.full_like(contrast, -torch.inf)).flatten(1).max(dim=1).values
        score = torch.sigmoid(net.score(peak[:, None]))  # [B, 1]
        maps = F.adaptive_avg_pool2d(contrast[:, None], GRID)
        b, f = x.shape[0], len(queries)
        return ModelOutput(scores=score.expand(b, f).contiguous(), maps={"contrast": maps.expand(b, f, GRID, GRID).contiguous()})
