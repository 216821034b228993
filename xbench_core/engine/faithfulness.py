"""The faithfulness pass: does the model's score depend on the region and on what the map points at?

Optional (`faithfulness: {...}` in the config or `--faithfulness`), for every positive image with a
region of a finding, the model the run evaluates, and each explainer. All perturbed images are the
model's own input tensor with some pixels replaced (`perturbation`), batched through the model on
its device; every value is a probability (the model's score), every drop `score - perturbed score`.

- Region ablation: the score with the region removed, with a control region of the same area and
  shape removed (the region mirrored left-right: the other lung for a lesion in one lung; when the
  mirror overlaps the region by more than 10%, the in-frame translation of the region with the least
  overlap), and with the complement removed (the region kept). Independent of the explainer.
- Causal subset (after MedFocus, Xiong et al. 2025): a sample the model calls positive (score >= 0.5)
  is causal when removing the region flips it (< 0.5) and removing the complement does not.
- Deletion and insertion (RISE, Petsiuk et al. 2018): input pixels ranked by the map (bilinearly
  upsampled to the input; ties in a seeded random order), removed (deletion) or restored onto the
  fully removed image (insertion) in `steps` equal steps with both end points; area under the score
  curve by the trapezoid rule on [0, 1]. The same with a seeded random pixel order is the control.
  Lower deletion and higher insertion AUC are better.
- Sanity check (Adebayo et al. 2018, cascading model-parameter randomization): the modules holding
  parameters, head first (reverse registration order), re-initialized cumulatively in
  `sanity_steps` steps up to the whole model (the module's `reset_parameters`, else a normal draw
  with the weights' own spread, seeded); the queries re-encoded and the explainer's maps recomputed
  at each step; Spearman rank correlation of each map with the original one. A high correlation
  after full randomization means the map does not explain the model.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import calls
from .perturbation import BASELINES, fill_image, perturb

MEASURES = ("ablation", "deletion", "sanity")
KEYS = {
    "steps": "deletion/insertion steps K (K + 1 points), default 10",
    "baseline": f"what replaces removed pixels: {' | '.join(BASELINES)} (default blur)",
    "blur_sigma": "blur baseline: Gaussian sigma as a fraction of the input side (default 0.1)",
    "noise": "linear baseline: ROAD noise, in model-input units (default 0.01)",
    "measures": f"which measures: any of {', '.join(MEASURES)} (default all)",
    "random_order": "deletion/insertion with a random pixel order as a control (default true)",
    "sanity_steps": "cascading randomization steps (default 3)",
}
CONTROL_OVERLAP = 0.1


@dataclass(frozen=True)
class FaithfulnessSettings:
    """The options of the faithfulness pass (recorded in the manifest and the run's identity)."""

    steps: int = 10
    baseline: str = "blur"
    blur_sigma: float = 0.1
    noise: float = 0.01
    measures: tuple[str, ...] = MEASURES
    random_order: bool = True
    sanity_steps: int = 3

    @classmethod
    def parse(cls, value: Any) -> FaithfulnessSettings | None:
        """`faithfulness:` of the config: false/absent (off), true (defaults) or a mapping."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(f"faithfulness must be true, false or a mapping of {', '.join(KEYS)}; got {value!r}")
        for key in value:
            if key not in KEYS:
                raise ConfigError(f"unknown faithfulness key {key!r} (valid: {', '.join(KEYS)})")
        s = cls()
        measures = value.get("measures", list(s.measures))
        if isinstance(measures, str):
            measures = [m.strip() for m in measures.split(",") if m.strip()]
        out = cls(
            steps=_number(value.get("steps", s.steps), int, "faithfulness.steps", 1, 1000),
            baseline=str(value.get("baseline", s.baseline)),
            blur_sigma=_number(value.get("blur_sigma", s.blur_sigma), float, "faithfulness.blur_sigma", 1e-3, 1.0),
            noise=_number(value.get("noise", s.noise), float, "faithfulness.noise", 0.0, 10.0),
            measures=tuple(measures),
            random_order=_flag(value.get("random_order", s.random_order), "faithfulness.random_order"),
            sanity_steps=_number(value.get("sanity_steps", s.sanity_steps), int, "faithfulness.sanity_steps", 1, 100),
        )
        if out.baseline not in BASELINES:
            raise ConfigError(f"faithfulness.baseline must be one of {', '.join(BASELINES)}, got {out.baseline!r}")
        bad = [m for m in out.measures if m not in MEASURES]
        if bad or not out.measures:
            raise ConfigError(f"faithfulness.measures must be a non-empty list of {', '.join(MEASURES)}, got {measures!r}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "baseline": self.baseline, "blur_sigma": self.blur_sigma, "noise": self.noise,
                "measures": list(self.measures), "random_order": self.random_order, "sanity_steps": self.sanity_steps,
                "score": "probability", "drop": "score - perturbed score"}


def _number(value: Any, kind: type, name: str, lo: float, hi: float) -> Any:
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be in [{lo:g}, {hi:g}], got {v!r}")
    return v


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise ConfigError(f"{name} must be true or false, got {value!r}")


# ---- geometry of regions and maps in the input frame ---------------------------------------------
def input_mask(mask: np.ndarray, geometry: Any, grow: int = 1) -> np.ndarray:
    """An eval-frame region mask in the model-input frame: sampled (nearest) at the centers of the
    input pixels, then grown by `grow` input pixels (the resize spreads a lesion's edge over its
    neighbours, which would otherwise stay in the image when the region is removed)."""
    h, w = geometry.input_size
    oh, ow = geometry.original_size
    eh, ew = mask.shape
    yo, xo = geometry.to_original(np.arange(h) + 0.5, np.arange(w) + 0.5)
    ye = np.floor(np.asarray(yo) * eh / oh).astype(np.int64)
    xe = np.floor(np.asarray(xo) * ew / ow).astype(np.int64)
    vy, vx = (ye >= 0) & (ye < eh), (xe >= 0) & (xe < ew)
    out = mask[np.clip(ye, 0, eh - 1)][:, np.clip(xe, 0, ew - 1)].astype(bool) & vy[:, None] & vx[None, :]
    if grow > 0 and out.any():
        from scipy import ndimage

        out = ndimage.binary_dilation(out, structure=np.ones((3, 3), bool), iterations=grow)
    return out


def control_region(region: np.ndarray) -> np.ndarray:
    """A region of the same area and shape elsewhere: the left-right mirror image, or (when that
    overlaps the region by more than 10%) the in-frame translation with the least overlap (ties: the
    shortest shift), shifts on a grid of an eighth of the side."""
    area = int(region.sum())
    mirror = region[:, ::-1]
    if area == 0 or int((mirror & region).sum()) <= CONTROL_OVERLAP * area:
        return mirror.copy()
    h, w = region.shape
    ys, xs = np.nonzero(region)
    best: tuple[float, float, np.ndarray] | None = None
    for dy in range(-h + 1, h, max(1, h // 8)):
        for dx in range(-w + 1, w, max(1, w // 8)):
            if ys.min() + dy < 0 or ys.max() + dy >= h or xs.min() + dx < 0 or xs.max() + dx >= w:
                continue
            moved = np.zeros_like(region)
            moved[ys + dy, xs + dx] = True
            key = (float((moved & region).sum()), float(dy * dy + dx * dx))
            if best is None or key < best[:2]:
                best = (*key, moved)
    return mirror.copy() if best is None else best[2]


def ranks(values: Any, generator: Any) -> Any:
    """Each pixel's position when sorted by value, highest first; ties in a seeded random order."""
    import torch

    flat = values.flatten()
    perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
    order = perm[torch.argsort(-flat[perm], stable=True)]
    out = torch.empty_like(order)
    out[order] = torch.arange(flat.numel(), device=flat.device)
    return out.view(values.shape)


def step_counts(n: int, steps: int) -> list[int]:
    """Pixels removed (deletion) or restored (insertion) at each of the K + 1 points."""
    return [round(k * n / steps) for k in range(steps + 1)]


def trapezoid(curve: Sequence[float]) -> float:
    """Area under a curve sampled at K + 1 equally spaced points of [0, 1]."""
    c = np.asarray(curve, np.float64)
    return float(((c[:-1] + c[1:]) / 2).sum() / (len(c) - 1))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); 1 for identical maps, None when one is
    constant and the other is not."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb / den) if den > 0 else None


# ---- the pass ------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One perturbed image: image b of the batch, pixels kept = mask, or rank >= n (deletion) / < n."""

    b: int
    mask: Any
    n: int = -1
    insert: bool = False

    def keep(self) -> Any:
        if self.n < 0:
            return self.mask
        return self.mask < self.n if self.insert else self.mask >= self.n


class ModelPart:
    """The faithfulness values of one batch of one model: ablation and random-order controls once,
    then map-guided deletion/insertion and the sanity check per explainer (`measure`)."""

    def __init__(self, pass_: FaithfulnessPass, model: Any, pixels: Any, queries: Any, scores: np.ndarray,
                 findings: Sequence[str], items: Sequence[Mapping[str, Any]], model_name: str) -> None:
        import torch

        self.p, self.model, self.pixels, self.queries = pass_, model, pixels, queries
        self.scores, self.findings, self.items = scores, list(findings), items
        self.s = pass_.settings
        self.fill = None if self.s.baseline == "linear" else fill_image(pixels.float(), self.s.baseline, self.s.blur_sigma).to(pixels.dtype)
        self.targets: list[tuple[int, int, str]] = []  # (b, j, finding) with a region
        self.regions: dict[tuple[int, int], Any] = {}
        h, w = pixels.shape[-2:]
        for b, it in enumerate(items):
            for j, f in enumerate(self.findings):
                if it["labels"].get(f) == 1 and f in it["masks"] and np.isfinite(scores[b, j]):
                    region = input_mask(it["masks"][f], it["geometry"][model_name])
                    if region.any():
                        self.targets.append((b, j, f))
                        self.regions[(b, j)] = torch.from_numpy(region).to(pixels.device)
        self.values: dict[tuple[int, str], dict[str, Any]] = {(b, f): {} for b, j, f in self.targets}
        self.gens = {b: _generator(pass_.seed, it["id"]) for b, it in enumerate(items)}
        self.n = h * w
        self.counts = step_counts(self.n, self.s.steps)
        if not self.targets:
            return
        jobs: list[_Job] = []
        if "ablation" in self.s.measures:
            for b, j, _ in self.targets:
                region = self.regions[(b, j)]
                control = torch.from_numpy(control_region(region.cpu().numpy())).to(pixels.device)
                jobs += [_Job(b, ~region), _Job(b, ~control), _Job(b, region)]
        images = sorted({b for b, _, _ in self.targets})
        base = [_Job(b, torch.zeros(h, w, dtype=torch.bool, device=pixels.device)) for b in images]
        random: dict[int, Any] = {}
        if "deletion" in self.s.measures and self.s.random_order:
            for b in images:
                random[b] = ranks(torch.zeros(h, w, device=pixels.device), self.gens[b])
                jobs += self._curve_jobs(b, random[b])
        out = self.p.forward(model, pixels, queries, jobs + base, self.gens, self.fill)
        k = 0
        if "ablation" in self.s.measures:
            for b, j, f in self.targets:
                s0 = float(scores[b, j])
                region_s, control_s, complement_s = (float(out[k + i, j]) for i in range(3))
                k += 3
                self.values[(b, f)].update(
                    ablation_drop=s0 - region_s,
                    ablation_control_drop=s0 - control_s,
                    ablation_complement_drop=s0 - complement_s,
                    causal=None if s0 < 0.5 else bool(region_s < 0.5 and complement_s >= 0.5),
                )
        self.base_scores = {b: out[len(jobs) + i] for i, b in enumerate(images)}
        if random:
            for b in images:
                curves = out[k : k + 2 * (self.s.steps - 1)]
                k += 2 * (self.s.steps - 1)
                for bb, j, f in self.targets:
                    if bb == b:
                        dele, ins = self._curves(b, j, curves)
                        self.values[(b, f)].update(deletion_auc_random=trapezoid(dele), insertion_auc_random=trapezoid(ins),
                                                   deletion_curve_random=_rounded(dele), insertion_curve_random=_rounded(ins))

    def _curve_jobs(self, b: int, rank: Any) -> list[_Job]:
        inner = self.counts[1:-1]
        return [_Job(b, rank, n) for n in inner] + [_Job(b, rank, n, insert=True) for n in inner]

    def _curves(self, b: int, j: int, out: np.ndarray) -> tuple[list[float], list[float]]:
        s0, sb = float(self.scores[b, j]), float(self.base_scores[b][j])
        m = self.s.steps - 1
        return [s0, *map(float, out[:m, j]), sb], [sb, *map(float, out[m:, j]), s0]

    def measure(self, maps: Any, explain: Callable[[Any, Any, Any], Any]) -> dict[tuple[int, str], dict[str, Any]]:
        """Every value of one explainer's maps [B, F, gh, gw]: {(b, finding): {name: value}}."""
        import torch
        import torch.nn.functional as F

        values = {k: dict(v) for k, v in self.values.items()}
        if not self.targets:
            return values
        h, w = self.pixels.shape[-2:]
        if "deletion" in self.s.measures:
            jobs: list[_Job] = []
            for b, j, _ in self.targets:
                up = F.interpolate(maps[b, j][None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                jobs += self._curve_jobs(b, ranks(torch.nan_to_num(up, nan=float("-inf")), self.gens[b]))
            out = self.p.forward(self.model, self.pixels, self.queries, jobs, self.gens, self.fill)
            m = 2 * (self.s.steps - 1)
            for i, (b, j, f) in enumerate(self.targets):
                dele, ins = self._curves(b, j, out[i * m : (i + 1) * m])
                values[(b, f)].update(deletion_auc=trapezoid(dele), insertion_auc=trapezoid(ins),
                                      deletion_curve=_rounded(dele), insertion_curve=_rounded(ins))
        if "sanity" in self.s.measures:
            original = maps.detach().float().cpu().numpy()
            steps = [explain_randomized(self.p, self.model, self.pixels, self.findings, s, explain) for s in range(1, self.p.sanity_count(self.model) + 1)]
            for b, j, f in self.targets:
                curve = [spearman(original[b, j], r[b, j]) for r in steps]
                values[(b, f)].update(sanity_rank_corr=curve[-1] if curve else 1.0, sanity_curve=curve)
        return values


def _rounded(curve: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in curve]


def _generator(seed: int, sample_id: str) -> Any:
    import torch

    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(str(sample_id).encode())) % (2**63))
    return g


class FaithfulnessPass:
    """Runs the perturbed images of a batch through a model in chunks of `batch_size`."""

    def __init__(self, settings: FaithfulnessSettings, batch_size: int, seed: int, device: Any = None,
                 precision: str = "fp32") -> None:
        self.settings, self.batch_size, self.seed = settings, max(1, batch_size), seed
        self.device, self.precision = device, precision  # the run's, for its autocast
        self._cascades: dict[int, Cascade] = {}

    def part(self, *args: Any, **kwargs: Any) -> ModelPart:
        return ModelPart(self, *args, **kwargs)

    def forward(self, model: Any, pixels: Any, queries: Any, jobs: Sequence[_Job], gens: Mapping[int, Any],
                fill: Any = None) -> np.ndarray:
        """Scores [len(jobs), F] of the perturbed images (`fill`: the batch's `fill_image`)."""
        import torch

        out = []
        for lo in range(0, len(jobs), self.batch_size):
            chunk = jobs[lo : lo + self.batch_size]
            idx = torch.tensor([j.b for j in chunk], device=pixels.device)
            x = pixels.index_select(0, idx)
            keep = torch.stack([j.keep() for j in chunk])
            part = None if fill is None else fill.index_select(0, idx)
            gen = gens[chunk[0].b] if gens else None
            x = perturb(x, keep, self.settings.baseline, part, blur_sigma=self.settings.blur_sigma, noise=self.settings.noise, generator=gen)
            out.append(calls.forward(model, x, queries, self.device, self.precision).scores.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def sanity_count(self, model: Any) -> int:
        return self._cascade(model).steps

    def _cascade(self, model: Any) -> Cascade:
        if id(model) not in self._cascades:
            self._cascades[id(model)] = Cascade(model.module, self.settings.sanity_steps, self.seed)
        return self._cascades[id(model)]


class Cascade:
    """Cascading randomization of a module's parameters, head first, restorable."""

    def __init__(self, module: Any, steps: int, seed: int) -> None:
        import torch

        self.layers = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))][::-1] if module is not None else []
        self.steps = min(steps, len(self.layers))
        self.original = [[p.detach().clone() for p in m.parameters(recurse=False)] for m in self.layers]
        devices = sorted({p.device.index for p in module.parameters() if p.device.type == "cuda"}) if module is not None else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for m, orig in zip(self.layers, self.original):
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
                for p, o in zip(m.parameters(recurse=False), orig):
                    if torch.equal(p, o):  # no reset of its own (or one that gives the same values)
                        spread = float(o.float().std()) if o.numel() > 1 else 0.0
                        p.copy_(torch.randn_like(p) * (spread if spread > 0 else 1.0))
            self.random = [[p.detach().clone() for p in m.parameters(recurse=False)] for m in self.layers]
            self.restore()

    def upto(self, step: int) -> int:
        """Layers randomized at cascade step `step` (1..steps): the top ceil(step/steps) share."""
        return -(-step * len(self.layers) // self.steps)

    def set(self, step: int) -> None:
        import torch

        n = self.upto(step)
        with torch.no_grad():
            for i, m in enumerate(self.layers):
                for p, v in zip(m.parameters(recurse=False), self.random[i] if i < n else self.original[i]):
                    p.copy_(v)

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for m, orig in zip(self.layers, self.original):
                for p, v in zip(m.parameters(recurse=False), orig):
                    p.copy_(v)


def explain_randomized(pass_: FaithfulnessPass, model: Any, pixels: Any, findings: Sequence[str], step: int,
                       explain: Callable[[Any, Any, Any], Any]) -> np.ndarray:
    """The explainer's maps [B, F, gh, gw] with the model randomized up to cascade `step`."""
    cascade = pass_._cascade(model)
    cascade.set(step)
    try:
        return explain(model, pixels, calls.encode_queries(model, findings)).detach().float().cpu().numpy()
    finally:
        cascade.restore()
