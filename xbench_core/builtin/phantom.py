"""`phantom`: deterministic, procedurally generated chest-radiograph-like images with known findings.

Each image has a body outline, two dark lung fields, a bright mediastinum and heart, ribs and noise,
and each of six findings present with some probability, at graded sizes so that every lesion-size
stratum is populated: nodule (small), mass, consolidation, pleural effusion, pneumothorax and
cardiomegaly. The masks are exact, so grounding statistics on the phantom test the whole pipeline
from image to table with no data to download. Image i depends only on (seed, i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dataset import Dataset, Problem
from ..errors import ConfigError
from ..io.regions import Region
from ..types import Sample

FINDINGS = ("nodule", "mass", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly")
PREVALENCE = 0.35


@dataclass(frozen=True)
class _Layout:
    present: dict[str, bool]
    masks: dict[str, np.ndarray]
    lungs: np.ndarray
    heart: np.ndarray
    body: np.ndarray


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return ((y + 0.5 - cy) / ry) ** 2 + ((x + 0.5 - cx) / rx) ** 2 <= 1.0


class Phantom(Dataset):
    """The built-in synthetic dataset: `size` images of `resolution` pixels, reproducible from `seed`."""

    def __init__(self, size: int = 200, seed: int = 0, resolution: int = 512, split: str = "test") -> None:
        if size < 1 or resolution < 64:
            raise ConfigError(f"phantom needs size >= 1 and resolution >= 64 (got size={size}, resolution={resolution})")
        self.name = "phantom"
        self.split = split
        self.findings = FINDINGS
        self.problems: list[Problem] = []
        self.size, self.seed, self.resolution = size, seed, resolution

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, 7])

    def _layout(self, index: int) -> _Layout:
        n = self.resolution
        rng = self._rng(index)
        s = n / 512.0
        body = _ellipse(n, n, n * 0.55, n * 0.5, n * 0.48, n * 0.44)
        lung_r = _ellipse(n, n, n * 0.47, n * 0.31, n * 0.30, n * 0.14)
        lung_l = _ellipse(n, n, n * 0.47, n * 0.69, n * 0.30, n * 0.14)
        lungs = lung_r | lung_l
        present = {f: bool(rng.random() < PREVALENCE) for f in FINDINGS}
        heart_rx = n * (0.17 if present["cardiomegaly"] else 0.11) * rng.uniform(0.95, 1.1)
        heart = _ellipse(n, n, n * 0.64, n * 0.54, n * 0.12, heart_rx)
        masks: dict[str, np.ndarray] = {}
        side = [lung_r, lung_l]
        centers = [(0.47, 0.31), (0.47, 0.69)]

        def spot(r_lo: float, r_hi: float) -> np.ndarray:
            k = int(rng.integers(2))
            cy, cx = centers[k]
            for _ in range(20):  # a center inside the chosen lung
                y = n * (cy + rng.uniform(-0.22, 0.22))
                x = n * (cx + rng.uniform(-0.09, 0.09))
                if side[k][min(int(y), n - 1), min(int(x), n - 1)]:
                    break
            r = rng.uniform(r_lo, r_hi) * s
            return _ellipse(n, n, y, x, r * rng.uniform(0.8, 1.2), r) & body

        if present["nodule"]:
            masks["nodule"] = spot(4, 12)
        if present["mass"]:
            masks["mass"] = spot(18, 90)  # up to ~10% of the image: every size stratum
        if present["consolidation"]:
            blob = spot(25, 55)
            masks["consolidation"] = blob & lungs
            if not masks["consolidation"].any():
                masks["consolidation"] = blob
        if present["pleural_effusion"]:
            k = int(rng.integers(2))
            level = n * rng.uniform(0.58, 0.72)
            y = np.arange(n)[:, None] + 0.5
            masks["pleural_effusion"] = side[k] & (y >= level)
        if present["pneumothorax"]:
            k = int(rng.integers(2))
            cy, cx = centers[k]
            outer = _ellipse(n, n, n * cy, n * cx, n * 0.30, n * 0.14)
            inner = _ellipse(n, n, n * (cy + 0.03), n * cx + (1 if k else -1) * n * 0.03, n * 0.27, n * rng.uniform(0.08, 0.11))
            masks["pneumothorax"] = outer & ~inner
        if present["cardiomegaly"]:
            masks["cardiomegaly"] = heart
        for f in list(masks):  # a finding whose mask vanished is not present
            if not masks[f].any():
                del masks[f]
                present[f] = False
        return _Layout(present, masks, lungs, heart, body)

    def ids(self) -> list[str]:
        """Every image's id without drawing its layout (the base class builds each annotation)."""
        return [self._id(i) for i in range(self.size)]

    @staticmethod
    def _id(index: int) -> str:
        return f"phantom-{index:05d}"

    def annotation(self, index: int) -> Sample:
        lay = self._layout(index)
        n = self.resolution
        regions = {f: Region((n, n), masks=(m,)) for f, m in lay.masks.items()}
        return Sample(
            dataset=self.name,
            id=self._id(index),
            image=None,
            labels={f: int(v) for f, v in lay.present.items()},
            regions=regions,
            meta={"path": f"phantom://seed-{self.seed}/{index}", "size": (n, n), "index": index},
        )

    def load_image(self, sample: Sample) -> np.ndarray:
        index = sample.meta["index"]
        lay = self._layout(index)
        n = self.resolution
        rng = np.random.default_rng([self.seed, index, 11])
        img = np.where(lay.body, 0.55, 0.02).astype(np.float32)
        img[lay.lungs] = 0.18
        img[_ellipse(n, n, n * 0.45, n * 0.5, n * 0.35, n * 0.055)] = 0.75  # mediastinum and spine
        img[lay.heart] = np.maximum(img[lay.heart], 0.68)
        y = np.arange(n)[:, None] + 0.5
        x = np.arange(n)[None, :] + 0.5
        for k in range(9):  # ribs: bright arcs across the lungs
            arc = np.abs(y - (n * (0.2 + 0.07 * k) + 0.05 * n * np.cos((x / n - 0.5) * np.pi))) < n * 0.008
            img[arc & lay.body] += 0.12
        bright = {"nodule": 0.45, "mass": 0.4, "consolidation": 0.3, "pleural_effusion": 0.45}
        for f, m in lay.masks.items():
            if f in bright:
                img[m] += bright[f]
            elif f == "pneumothorax":
                img[m] = 0.04
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        return np.clip(img, 0.0, 1.0).astype(np.float32)
