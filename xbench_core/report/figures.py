"""The report's figures (matplotlib, Agg, no pyplot state), each as PNG and SVG.

Across datasets: recognition against grounding with the linear fit and R^2 (the paper's Figure 3)
and Dice at the fixed against the best threshold per model (Figure 4). Per dataset: Pointing Game
per finding with 95% intervals, grounding by lesion-size stratum, and the mean Dice curve over the
threshold per model. Figures have a fixed size in pixels (`DPI` times their size in inches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import MEAN
from .tables import DatasetKey, by_dataset, dataset_keys, dataset_label, finding_label

DPI = 100
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class FigureFile:
    """A written figure: where its files are (relative to the report folder) and what it shows."""

    name: str
    title: str
    caption: str
    png: str
    svg: str | None
    size: tuple[int, int]  # (width, height) in pixels
    section: DatasetKey | None = None
    finding: str | None = None


def new_figure(width: float, height: float, constrained: bool = True) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)


def save(fig: Any, folder: Path, name: str, title: str, caption: str, root: Path, *, svg: bool = True,
         **where: Any) -> FigureFile:
    """Write `fig` as folder/name.png (and .svg); paths in the result are relative to `root`."""
    import matplotlib

    folder.mkdir(parents=True, exist_ok=True)
    png, vector = folder / f"{name}.png", folder / f"{name}.svg"
    with matplotlib.rc_context({"svg.hashsalt": "xbench", "svg.fonttype": "none"}):
        fig.savefig(png, dpi=DPI, metadata={"Software": None}, pil_kwargs={"compress_level": 4})
        if svg:
            fig.savefig(vector, metadata={"Date": None})
    w, h = fig.get_size_inches()
    return FigureFile(name, title, caption, png.relative_to(root).as_posix(),
                      vector.relative_to(root).as_posix() if svg else None,
                      (int(round(w * DPI)), int(round(h * DPI))), **where)


def model_colors(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def _series(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(model, explainer) in order of appearance."""
    return list(dict.fromkeys((r["model"], r["explainer"]) for r in rows))


def _name(series: tuple[str, str], several: bool) -> str:
    return f"{series[0]} / {series[1]}" if several else series[0]


def _err(value: float | None, ci: Sequence[float] | None) -> tuple[float, float]:
    if value is None or not ci:
        return (0.0, 0.0)
    return (max(0.0, value - ci[0]), max(0.0, ci[1] - value))


def _bars(ax: Any, groups: Sequence[str], series: Sequence[tuple[str, str]], value: Any, colors: dict[str, str],
          several: bool, hatches: bool = False) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per series, with interval whiskers."""
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for j, s in enumerate(series):
        vals, lo, hi = [], [], []
        for g in groups:
            v, ci = value(s, g)
            vals.append(np.nan if v is None else v)
            e = _err(v, ci)
            lo.append(e[0])
            hi.append(e[1])
        ax.bar(x - 0.4 + width * (j + 0.5), vals, width, yerr=[lo, hi], capsize=2, color=colors[s[0]],
               edgecolor="black", linewidth=0.4, error_kw={"linewidth": 0.8}, label=_name(s, several),
               hatch="//" if hatches and j % 2 else None)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30 if max((len(g) for g in groups), default=0) > 10 else 0, ha="right" if max((len(g) for g in groups), default=0) > 10 else "center")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def recognition_vs_grounding(results: dict[str, Any], folder: Path, root: Path) -> list[FigureFile]:
    fit = results.get("recognition_vs_grounding") or {}
    fits = fit.get("fits") or []
    explainers = list(dict.fromkeys(f["explainer"] for f in fits))
    if not explainers:
        return []
    colors = model_colors(results.get("rows", []))
    fig = new_figure(6.4 * len(explainers), 4.8)
    axes = fig.subplots(1, len(explainers), squeeze=False)[0]
    for ax, explainer in zip(axes, explainers):
        by_level = {f["level"]: f for f in fits if f["explainer"] == explainer}
        pairs = by_level.get("model_dataset", {}).get("points", [])
        models = by_level.get("model", {}).get("points", [])
        for p in pairs:
            ax.scatter(p["pointing_game"], p["auroc"], s=18, color=colors.get(p["model"], "grey"), alpha=0.35, linewidths=0)
        for p in models:
            ax.scatter(p["pointing_game"], p["auroc"], s=60, color=colors.get(p["model"], "grey"), edgecolors="black",
                       linewidths=0.6, zorder=3)
            ax.annotate(p["model"], (p["pointing_game"], p["auroc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        xs = [p["pointing_game"] for p in pairs + models]
        for level, style, label in (("model", "-", "over models"), ("model_dataset", ":", "over (model, dataset)")):
            f = by_level.get(level)
            if f and f.get("slope") is not None and xs:
                grid = np.linspace(min(xs), max(xs), 50)
                r2 = "undefined" if f.get("r2") is None else f"{f['r2']:.2f}"
                ax.plot(grid, f["slope"] * grid + f["intercept"], style, color="black", linewidth=1,
                        label=f"fit {label}: R\N{SUPERSCRIPT TWO} = {r2} (n = {f['n']})")
        ax.set_xlabel("mean Pointing Game")
        ax.set_ylabel("mean AUROC")
        ax.set_title(f"Recognition vs grounding ({explainer})", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return [save(fig, folder, "recognition_vs_grounding", "Recognition vs grounding",
                 "Mean AUROC against mean Pointing Game: large markers are models (means over datasets), small ones "
                 "(model, dataset) pairs; lines are least-squares fits with their R\N{SUPERSCRIPT TWO}.", root)]


def dice_fixed_vs_best(results: dict[str, Any], folder: Path, root: Path) -> list[FigureFile]:
    rows = [r for r in results.get("rows", []) if r["finding"] == MEAN and r.get("n_regions") and "dice_fixed" in r]
    keys = [k for k in dataset_keys(results.get("rows", [])) if any((r["dataset"], r.get("split")) == k for r in rows)]
    if not keys:
        return []
    allkeys = dataset_keys(results.get("rows", []))
    colors = model_colors(results.get("rows", []))
    fixed = next((r["fixed_threshold"] for r in rows if r.get("fixed_threshold") is not None), 0.5)
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig = new_figure(4.4 * cols, 3.4 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        sub = [r for r in rows if (r["dataset"], r.get("split")) == key]
        series = _series(sub)
        several = len({s[1] for s in series}) > 1
        x = np.arange(len(series))
        for j, (field, label, alpha) in enumerate((("dice_fixed", f"tau = {fixed:g}", 0.45), ("dice_best", "best tau", 1.0))):
            vals: list[float] = []
            err: list[list[float]] = [[], []]
            for s in series:
                r = next(r for r in sub if (r["model"], r["explainer"]) == s)
                v = r.get(field)
                vals.append(np.nan if v is None else v)
                e = _err(v, r.get(f"{field}_ci"))
                err[0].append(e[0])
                err[1].append(e[1])
            ax.bar(x - 0.2 + 0.4 * j, vals, 0.4, yerr=err, capsize=2, color=[colors[s[0]] for s in series], alpha=alpha,
                   edgecolor="black", linewidth=0.4, label=label.replace("tau", "\N{GREEK SMALL LETTER TAU}"))
        ax.set_xticks(x)
        ax.set_xticklabels([_name(s, several) for s in series], rotation=30 if len(series) > 3 else 0, ha="right" if len(series) > 3 else "center")
        ax.set_title(dataset_label(key, allkeys), fontsize=10)
        ax.set_ylabel("mean Dice")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return [save(fig, folder, "dice_fixed_vs_best", "Dice at the fixed vs the best threshold",
                 f"Mean Dice per model at tau = {fixed:g} (light) and at each finding's best tau (dark), with 95% "
                 "intervals; the difference is the calibration gap.", root)]


def per_dataset(results: dict[str, Any], folder: Path, root: Path) -> list[FigureFile]:
    """Pointing Game per finding, strata and Dice curves of every dataset."""
    rows = results.get("rows", [])
    colors = model_colors(rows)
    out: list[FigureFile] = []
    for key, label, slug, sub in by_dataset(rows):
        means = [r for r in sub if r["finding"] == MEAN and r.get("n_regions")]
        if not means:
            continue
        series = _series(means)
        several = len({s[1] for s in series}) > 1
        findings = list(dict.fromkeys(r["finding"] for r in sub if r["finding"] != MEAN and r.get("n_regions")))
        index = {(r["model"], r["explainer"], r["finding"]): r for r in sub}
        if "pointing_game" in means[0]:
            groups = [*findings, MEAN]
            fig = new_figure(max(6.4, 1.0 + 0.35 * len(groups) * max(2, len(series))), 4.2)
            ax = fig.subplots()

            def value(s: tuple[str, str], g: str, index: dict = index) -> tuple[Any, Any]:
                r = index.get((s[0], s[1], g), {})
                return r.get("pointing_game"), r.get("pointing_game_ci")

            _bars(ax, groups, series, value, colors, several)
            ax.set_xticklabels([finding_label(g) if g != MEAN else "Mean" for g in groups],
                               rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
            ax.set_ylabel("Pointing Game")
            ax.set_ylim(0, 1.05)
            ax.set_title(f"Pointing Game per finding: {label}", fontsize=10)
            ax.legend(fontsize=7, ncols=min(4, len(series)))
            out.append(save(fig, folder, f"pointing_game_per_finding__{slug}", f"Pointing Game per finding on {label}",
                            "Pointing Game per finding and model, with 95% bootstrap intervals over images.",
                            root, section=key))
        strata = means[0].get("strata") or []
        if strata:
            names = [s["stratum"] for s in strata]
            fig = new_figure(9.6, 3.8)
            axes = fig.subplots(1, 2)

            def stratum(s: tuple[str, str], name: str, field: str, index: dict = index) -> tuple[Any, Any]:
                r = index.get((s[0], s[1], MEAN), {})
                st: dict[str, Any] = next((x for x in r.get("strata") or [] if x["stratum"] == name), {})
                return st.get(field), st.get(f"{field}_ci")

            labels = []
            for s in strata:
                lo, hi = s["range"]
                n = max(int(stratum(m, s["stratum"], "n_regions")[0] or 0) for m in series)
                labels.append(f"{s['stratum']}\n{lo * 100:g}-{hi * 100:g}%, n={n}")
            for ax, (field, title) in zip(axes, (("pointing_game", "Pointing Game"), ("dice_best", "Dice (best \N{GREEK SMALL LETTER TAU})"))):
                _bars(ax, names, series, lambda s, g, f=field: stratum(s, g, f), colors, several)
                ax.set_xticklabels(labels, fontsize=8)
                ax.set_ylabel(title)
                ax.set_title(title, fontsize=10)
                ax.set_ylim(0, 1.05)
            axes[0].legend(fontsize=7)
            fig.suptitle(f"Grounding by lesion size: {label}", fontsize=10)
            out.append(save(fig, folder, f"strata__{slug}", f"Grounding by lesion size on {label}",
                            "Pointing Game and Dice at the best threshold per lesion-size stratum (region area as a share "
                            "of the image; n = regions over all findings), means over findings, with 95% intervals.",
                            root, section=key))
        curves = [(s, index[(s[0], s[1], MEAN)].get("dice_curve")) for s in series]
        curves = [(s, c) for s, c in curves if c]
        if curves:
            fig = new_figure(6.4, 4.2)
            ax = fig.subplots()
            tau = np.arange(101) / 100
            fixed = means[0].get("fixed_threshold", 0.5)
            for s, c in curves:
                c = np.asarray(c)
                k = int(np.argmax(c))
                ax.plot(tau, c, color=colors[s[0]], label=_name(s, several), linewidth=1.5)
                ax.plot(tau[k], c[k], "o", color=colors[s[0]], markersize=5)
            ax.axvline(fixed, color="grey", linestyle="--", linewidth=1, label=f"\N{GREEK SMALL LETTER TAU} = {fixed:g}")
            ax.set_xlabel("threshold \N{GREEK SMALL LETTER TAU}")
            ax.set_ylabel("mean Dice")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
            ax.set_title(f"Dice over the threshold: {label}", fontsize=10)
            ax.legend(fontsize=7)
            out.append(save(fig, folder, f"dice_curve__{slug}", f"Dice over the threshold on {label}",
                            "Mean Dice over findings as a function of the threshold, per model; dots mark the maximum of "
                            "the mean curve, the dashed line the fixed threshold.", root, section=key))
    return out


def all_figures(results: dict[str, Any], folder: Path, root: Path) -> list[FigureFile]:
    from .faithfulness import faithfulness_figures

    return [*recognition_vs_grounding(results, folder, root), *dice_fixed_vs_best(results, folder, root),
            *per_dataset(results, folder, root), *faithfulness_figures(results, folder, root)]
