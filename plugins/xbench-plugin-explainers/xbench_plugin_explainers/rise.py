"""RISE: Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018), for any model.

    saliency_f(x) = 1 / (N p) * sum_i score_f(image * mask_i) * mask_i(x)

The score is the model's own probability (`forward(...).scores`), so RISE needs nothing of a model
but its forward pass (`requires` is empty). Masks, as in the authors' code (eclique/RISE,
`explanations.py`, `RISE.generate_masks`): a binary s x s grid (each cell kept with probability p)
is upsampled bilinearly to (s + 1) x cell size, cell = ceil(side / s), and cropped at a random shift
of less than one cell, which smooths the cells' edges and moves them off a fixed lattice. Differences
from that code, all minor: the upsampling clamps at the border (torch `interpolate`,
`align_corners=False`) where skimage reflects; the masks are drawn from a seeded generator (option
`seed`), so every image of every run sees the same N masks and a map does not depend on the batch;
masking multiplies the model's input tensor, i.e. a masked pixel becomes 0 in the model's normalized
space (the dataset mean for mean-subtracted inputs), as in the authors' code.

Cost: N = `masks` image forward passes per image, in ceil(N / batch) calls of `batch` masked images
each, under inference mode (no gradients). With the default 500 masks, RISE costs about 500 times
the model's native map per image (the native map comes free with the one forward pass the engine
does anyway); see the plugin README for measured numbers.

Output grid (option `grid`): the saliency is computed at the input resolution and, by default
("native"), area-averaged to the grid of the model's native map (e.g. 224 -> 14 x 14), which keeps
saved maps small and compares explainers at the same resolution; "input" returns the full input
resolution. Either grid covers the model input, i.e. is in the input frame; the core maps it back.
"""

from __future__ import annotations

import math
from typing import Any

from xbench_core import ConfigError, Explainer, Model, ModelOutput


class RISE(Explainer):
    """Score-weighted average of random smooth masks; model-agnostic (needs only `forward`)."""

    requires: frozenset[str] = frozenset()
    needs_grad = False

    def __init__(
        self,
        masks: int = 500,
        cells: int = 7,
        p: float = 0.5,
        batch: int = 50,
        seed: int = 0,
        grid: str = "native",
    ) -> None:
        import torch

        if masks < 1 or cells < 1 or batch < 1:
            raise ConfigError(
                f"rise: masks, cells and batch must be >= 1 (got {masks}, {cells}, {batch})"
            )
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"rise.p must be in (0, 1], got {p}")
        if grid not in ("native", "input"):
            raise ConfigError(f"rise.grid must be 'native' or 'input', got {grid!r}")
        self.n, self.s, self.p, self.batch, self.grid = masks, cells, p, batch, grid
        # Drawn once, on the CPU, from the seed alone: the same masks on every device and run.
        generator = torch.Generator().manual_seed(seed)
        self._cells = (torch.rand(masks, cells, cells, generator=generator) < p).float()
        self._shifts = torch.rand(masks, 2, generator=generator)  # fractions of a cell

    def masks(self, start: int, stop: int, size: tuple[int, int], device: Any) -> Any:
        """Masks start..stop-1 at input size (h, w), float32 [n, h, w] in [0, 1] on `device`."""
        import torch
        import torch.nn.functional as F

        h, w = size
        ch, cw = math.ceil(h / self.s), math.ceil(w / self.s)
        up = F.interpolate(
            self._cells[start:stop, None].to(device),
            size=((self.s + 1) * ch, (self.s + 1) * cw),
            mode="bilinear",
            align_corners=False,
        )[:, 0]
        dy = (self._shifts[start:stop, 0] * ch).long().clamp_max(ch - 1).tolist()
        dx = (self._shifts[start:stop, 1] * cw).long().clamp_max(cw - 1).tolist()
        return torch.stack([m[y : y + h, x : x + w] for m, y, x in zip(up, dy, dx)])

    def _out_size(
        self, model: Model, output: ModelOutput, size: tuple[int, int]
    ) -> tuple[int, int]:
        if self.grid == "input" or not output.maps:
            return size
        native = output.maps.get(model.map_kind)
        if native is None:
            native = next(iter(output.maps.values()))
        return (int(native.shape[-2]), int(native.shape[-1]))

    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        """Maps [B, F, gh, gw]: the native map's grid by default, or the input resolution."""
        import torch
        import torch.nn.functional as F

        b, h, w = pixels.shape[0], pixels.shape[-2], pixels.shape[-1]
        n_findings = int(output.scores.shape[1])
        with torch.inference_mode():
            sal = torch.zeros((b, n_findings, h * w), dtype=torch.float32, device=pixels.device)
            if n_findings:
                # Masks outside, images inside: each chunk of masks is built once per batch.
                for start in range(0, self.n, self.batch):
                    stop = min(start + self.batch, self.n)
                    m = self.masks(start, stop, (h, w), pixels.device)
                    flat = m.reshape(stop - start, h * w)
                    for i in range(b):
                        masked = pixels[i].unsqueeze(0) * m.unsqueeze(1).to(pixels.dtype)
                        scores = model.forward(masked, queries).scores.float()  # [n, F]
                        # Accumulate in float32 even under the engine's bf16/fp16 autocast.
                        with torch.autocast(device_type=pixels.device.type, enabled=False):
                            sal[i] += scores.T @ flat
            sal = (sal / (self.n * self.p)).reshape(b, n_findings, h, w)
            out = self._out_size(model, output, (h, w))
            if out != (h, w):
                sal = F.adaptive_avg_pool2d(sal, out)
        return sal
