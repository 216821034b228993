"""Overlay gallery: for a few images per finding, every model's map over the X-ray with the
ground-truth region's contour, side by side (the paper's Figure 2).

Maps come from the run's map cache (input frame) with the Geometry each was saved with, and
`grounding.to_eval_frame` maps them back to the image at a small frame (long side `FRAME` pixels)
to stay cheap: no model is built (no plugin, no weights needed). The dataset is rebuilt from the
run's config for the images and regions. Images are chosen per finding among those every model has
a map and a region for: the first (by id) of each lesion-size stratum, then the next ids. What
cannot be drawn (data not at hand, maps saved without geometry) is skipped with a note. Gallery
figures are PNG only: they are rasters, which an SVG would only wrap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import MEAN
from .figures import FigureFile, new_figure, save
from .sources import GroupKey, Merged, RunSource
from .tables import by_dataset, finding_label

FRAME = 256
PER_FINDING = 3
MAX_COLUMNS = 8


def _frame(h: int, w: int, cap: int = FRAME) -> tuple[int, int]:
    if max(h, w) <= cap:
        return h, w
    f = cap / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def _entry(config: dict[str, Any], kind: str, name: str, split: Any = None) -> dict[str, Any]:
    items = [({"name": e} if isinstance(e, str) else e) for e in config.get(kind) or []]
    matches = [e for e in items if e["name"] == name]
    if split is not None:
        matches = [e for e in matches if e.get("split") == split] or matches
    return {k: v for k, v in (matches[0] if matches else {"name": name}).items() if k != "name"}


class _Cache:
    """Records and datasets, each loaded once."""

    def __init__(self, registry: Any, k_fixed: int) -> None:
        self.registry, self.k_fixed = registry, k_fixed
        self.records: dict[int, dict[GroupKey, list[dict[str, Any]]]] = {}
        self.datasets: dict[tuple[int, str, Any], Any] = {}

    def group_records(self, src: RunSource, key: GroupKey) -> list[dict[str, Any]]:
        if id(src) not in self.records:
            from ..metrics.analysis import split_resolver

            split_of, _ = split_resolver(src.config, self.registry)
            groups: dict[GroupKey, list[dict[str, Any]]] = defaultdict(list)
            for r in src.store.records():
                st = r.get("stats")
                if st is not None and not r.get("error"):
                    # only what the panels show, not the records' 101-threshold counts
                    slim = {"area_fraction": st["area_fraction"], "pointing_game": st["pointing_game"],
                            "dice_fixed": _dice_at(st, self.k_fixed)}
                    groups[(r["dataset"], split_of(r), r["model"], r["explainer"])].append(
                        {"id": r["id"], "finding": r["finding"], "stats": slim})
            self.records[id(src)] = groups
        return self.records[id(src)].get(key, [])

    def dataset(self, src: RunSource, name: str, split: Any) -> tuple[Any, dict[str, int]]:
        k = (id(src), name, split)
        if k not in self.datasets:
            ds = self.registry.datasets[name].build(**_entry(src.config, "datasets", name, split))
            self.datasets[k] = (ds, {i: n for n, i in enumerate(ds.ids())})
        return self.datasets[k]


def _choose(candidates: dict[str, float], bins: Sequence[tuple[float, float]], n: int) -> list[str]:
    """Up to n ids: the first id of each stratum (small to large), then the next ids."""
    ids = sorted(candidates)
    chosen: list[str] = []
    for lo, hi in bins:
        pick = next((i for i in ids if lo <= candidates[i] < hi or (hi >= 1 and candidates[i] == hi)), None)
        if pick is not None and pick not in chosen:
            chosen.append(pick)
    chosen += [i for i in ids if i not in chosen]
    return chosen[:n]


def _dice_at(stats: dict[str, Any], k: int) -> float:
    den = stats["hits_all"][k] + stats["region_px"]
    return 2 * stats["hits_region"][k] / den if den else 0.0


def gallery(merged: Merged, folder: Path, root: Path, registry: Any, per_finding: int = PER_FINDING) -> tuple[list[FigureFile], list[str]]:
    """One overlay figure per (dataset, finding); returns the figures and notes on what was skipped.
    Maps are read and mapped in numpy (no torch import: `xbench report` alone stays light)."""
    from ..grounding import normalize, to_eval_frame
    from ..metrics.bootstrap import single_threaded_blas

    with single_threaded_blas():  # tiny products: a thread pool only adds waiting, on a busy machine a lot
        return _gallery(merged, folder, root, registry, per_finding, normalize, to_eval_frame)


def _gallery(merged: Merged, folder: Path, root: Path, registry: Any, per_finding: int, normalize: Any,
             to_eval_frame: Any) -> tuple[list[FigureFile], list[str]]:
    results = merged.results
    rows = results.get("rows", [])
    bins = [tuple(s["range"]) for s in (results.get("analysis") or {}).get("strata", [])] or [(0.0, 1.0)]
    fixed = next((r["fixed_threshold"] for r in rows if r.get("fixed_threshold") is not None), 0.5)
    k_fixed = int(round(fixed * 100))
    cache = _Cache(registry, k_fixed)
    figures: list[FigureFile] = []
    notes: list[str] = []
    for dkey, label, slug, sub in by_dataset(rows):
        means = [r for r in sub if r["finding"] == MEAN and r.get("n_regions")]
        series = list(dict.fromkeys((r["model"], r["explainer"]) for r in means))[:MAX_COLUMNS]
        if not series:
            continue
        dataset, split = dkey
        sources = {s: merged.origin.get((dataset, split, *s)) for s in series}
        series = [s for s in series if sources[s] is not None]
        if not series:
            continue
        stats: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        for s in series:
            recs = cache.group_records(sources[s], (dataset, split, *s))  # type: ignore[arg-type]
            stats[s] = {(r["id"], r["finding"]): r["stats"] for r in recs}
        try:
            ds, index = cache.dataset(sources[series[0]], dataset, split)  # type: ignore[arg-type]
        except Exception as exc:
            notes.append(f"gallery of {label} skipped: the dataset could not be rebuilt ({type(exc).__name__}: {exc})")
            continue
        findings = list(dict.fromkeys(r["finding"] for r in sub if r["finding"] != MEAN and r.get("n_regions")))
        for finding in findings:
            common = None
            for s in series:
                have = {i for (i, f) in stats[s] if f == finding}
                common = have if common is None else common & have
            candidates = {i: stats[series[0]][(i, finding)]["area_fraction"] for i in (common or set()) if i in index}
            chosen = _choose(candidates, bins, per_finding)
            if not chosen:
                continue
            maps, geometries = {}, {}
            for s in series:
                maps[s], geometries[s] = sources[s].store.load_maps(dataset, split, s[0], s[1], {f"{i}|{finding}" for i in chosen}, numpy=True)  # type: ignore[union-attr]
            if not any(maps.values()):
                note = f"gallery of {label}: no cached maps (the run had save_maps: false)"
                if note not in notes:
                    notes.append(note)
                continue
            for s in series:
                if maps[s] and not geometries[s]:
                    note = f"gallery of {label}: maps of {s[0]} were saved without their geometry (an older run): not drawn"
                    if note not in notes:
                        notes.append(note)
            panels = []
            for i in chosen:
                sample = ds[index[i]]
                image = np.asarray(sample.image, np.float32)
                h, w = _frame(*image.shape[:2])
                shown = _resize(image, (h, w))
                region = sample.regions.get(finding)
                mask = region.rasterize((h, w)) if region is not None else np.zeros((h, w), bool)
                overlays = {}
                for s in series:
                    m = maps[s].get(f"{i}|{finding}")
                    geometry = geometries[s].get(i)
                    if m is None or geometry is None:
                        continue
                    frame = to_eval_frame(m[None], geometry, (h, w))
                    normed, _ = normalize(frame)
                    overlays[s] = normed[0]
                panels.append((i, shown, mask, overlays, float(candidates[i])))
            several = len({s[1] for s in series}) > 1
            width, height = 2.3 * (1 + len(series)), 2.5 * len(panels) + 0.3
            fig = new_figure(width, height, constrained=False)  # a plain grid: no layout solver needed
            fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height, wspace=0.04, hspace=0.3)
            axes = fig.subplots(len(panels), 1 + len(series), squeeze=False)
            for row_axes, (i, shown, mask, overlays, area) in zip(axes, panels):
                _show(row_axes[0], shown, mask, None)
                row_axes[0].set_title(f"{i}\nregion {area * 100:.1f}% of image", fontsize=7)
                for ax, s in zip(row_axes[1:], series):
                    st = stats[s].get((i, finding))
                    _show(ax, shown, mask, overlays.get(s))
                    name = f"{s[0]} / {s[1]}" if several else s[0]
                    if st is None or s not in overlays:
                        ax.set_title(f"{name}\n(no map)", fontsize=7)
                    else:
                        ax.set_title(f"{name}\nPG {st['pointing_game']:.2f} · Dice@{fixed:g} {st['dice_fixed']:.2f}", fontsize=7)
            fig.suptitle(f"{finding_label(finding)} on {label}", fontsize=9)
            fslug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in finding)
            figures.append(save(
                fig, folder, f"gallery__{slug}__{fslug}", f"{finding_label(finding)} on {label}",
                f"Maps of every model for {len(panels)} image(s) with {finding_label(finding)} on {label}: the map "
                "(min-max normalized, warm = high) over the X-ray, the ground-truth region's contour in green, the "
                "map's peak as a white cross; titles give the image's Pointing Game and Dice at the fixed threshold.",
                root, svg=False, section=dkey, finding=finding))
    return figures, notes


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _show(ax: Any, image: np.ndarray, mask: np.ndarray, overlay: np.ndarray | None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if overlay is not None:
        ax.imshow(overlay, cmap="jet", vmin=0, vmax=1, alpha=0.45, interpolation="bilinear")
        y, x = np.unravel_index(int(np.argmax(overlay)), overlay.shape)
        ax.plot([x], [y], "x", color="white", markersize=6, markeredgewidth=1.5)
    if mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=["#39ff14"], linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
