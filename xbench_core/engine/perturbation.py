"""Replacing pixels of a model's input: the baselines of the faithfulness pass.

Every perturbation acts on the model's own input tensor [C, h, w] (after its preprocessing: resize,
crop, normalization), so the model sees exactly what its preprocessing makes of an edited image; the
baselines below are linear in the pixels, so editing before or after the per-channel normalization
gives the same input (up to ROAD's noise, stated in input units). `keep` [h, w] marks the pixels
kept; the others are replaced by:

- `blur`: the image blurred by a Gaussian of standard deviation `blur_sigma` x the input side
  (RISE's insertion baseline, with a wider kernel so that a lesion's content is removed);
- `mean`: the image's per-channel mean (a constant fill);
- `linear`: ROAD's noisy linear imputation (Rong et al., 2022): each removed pixel is the weighted
  mean of its 8 neighbours (weight 1/6 for the 4 direct ones, 1/12 for the diagonal ones, only
  neighbours inside the image), a sparse linear system in the removed pixels solved here by
  conjugate gradients on the device, then Gaussian noise of standard deviation `noise` is added to
  the removed pixels. With no pixel kept there is nothing to interpolate: the channel mean.
"""

from __future__ import annotations

import math
from typing import Any

BASELINES = ("blur", "mean", "linear")
# ROAD's neighbour weights: (dy, dx) -> weight
NEIGHBOURS = tuple(
    ((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def gaussian_blur(x: Any, sigma: float) -> Any:
    """Separable Gaussian blur of [N, C, h, w] with reflected borders (kernel radius 3 sigma)."""
    import torch
    import torch.nn.functional as F

    radius = max(1, min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def fill_image(x: Any, baseline: str, blur_sigma: float) -> Any:
    """The image every removed pixel takes for `blur` and `mean` ([N, C, h, w] -> same)."""
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma * max(x.shape[-2:]))
    return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)


def _neighbour_sum(x: Any) -> Any:
    """sum_n w_n x_n over the 8 neighbours inside the image (zero padding: outside counts 0)."""
    import torch
    import torch.nn.functional as F

    kernel = torch.zeros(3, 3, dtype=x.dtype, device=x.device)
    for (dy, dx), wgt in NEIGHBOURS:
        kernel[1 + dy, 1 + dx] = wgt
    n, c, h, w = x.shape
    return F.conv2d(x.reshape(n * c, 1, h, w), kernel.view(1, 1, 3, 3), padding=1).reshape(n, c, h, w)


def linear_impute(x: Any, keep: Any, noise: float = 0.01, generator: Any = None, tol: float = 1e-5, max_iter: int = 2000) -> Any:
    """ROAD's noisy linear imputation of the pixels not in `keep`, batched: x [N, C, h, w], keep [N, h, w].

    The removed pixels u solve  d_p u_p - sum_{n removed} w_n u_n = sum_{n kept} w_n x_n  (d_p the
    weight of p's neighbours inside the image): a symmetric positive definite system (each connected
    hole touches a kept pixel), solved by conjugate gradients started from a normalized blur."""
    import torch

    x = x.float()
    hole = (~keep.bool())[:, None].expand_as(x).float()
    known = 1.0 - hole
    empty = known.flatten(1).sum(1) == 0  # nothing to interpolate from
    degree = _neighbour_sum(torch.ones_like(x[:1])).expand_as(x)

    def apply(u: Any) -> Any:  # the system's matrix on the removed pixels (zero elsewhere)
        u = u * hole
        return (degree * u - _neighbour_sum(u)) * hole

    rhs = _neighbour_sum(x * known) * hole
    # start: a wide normalized blur of the kept pixels (close to the solution far from the hole's edge)
    sigma = max(x.shape[-2:]) / 16
    num, den = gaussian_blur(x * known, sigma), gaussian_blur(known, sigma)
    u = torch.where(den > 1e-6, num / den.clamp_min(1e-6), x.mean(dim=(-2, -1), keepdim=True).expand_as(x)) * hole
    r = rhs - apply(u)
    p = r.clone()
    rs = (r * r).flatten(1).sum(1)
    scale = (rhs * rhs).flatten(1).sum(1).clamp_min(1e-12)
    for _ in range(max_iter):
        if bool((rs <= tol**2 * scale).all()):
            break
        ap = apply(p)
        alpha = rs / (p * ap).flatten(1).sum(1).clamp_min(1e-30)
        u = u + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * ap
        rs_new = (r * r).flatten(1).sum(1)
        p = r + (rs_new / rs.clamp_min(1e-30)).view(-1, 1, 1, 1) * p
        rs = rs_new
    if noise > 0:
        u = u + noise * torch.randn(u.shape, generator=generator, device="cpu").to(u.device) * hole
    out = x * known + u * hole
    if bool(empty.any()):
        out[empty] = x[empty].mean(dim=(-2, -1), keepdim=True).expand_as(x[empty])
    return out


def perturb(x: Any, keep: Any, baseline: str, fill: Any = None, *, blur_sigma: float = 0.1, noise: float = 0.01, generator: Any = None) -> Any:
    """x [N, C, h, w] with the pixels outside `keep` [N, h, w] replaced by the baseline (`fill`: the
    precomputed `fill_image` of x for blur and mean)."""
    import torch

    if baseline == "linear":
        return linear_impute(x, keep, noise, generator).to(x.dtype)
    if fill is None:
        fill = fill_image(x, baseline, blur_sigma)
    return torch.where(keep.bool()[:, None], x, fill)
