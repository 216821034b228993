"""The report's faithfulness table and figures (runs with the faithfulness pass only).

Per dataset: a table of the mean rows' faithfulness fields (directions in the headers), the mean
deletion and insertion curves per model with their random-order controls, and the score drops per
finding when the region and when the control region are removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .figures import FigureFile, _bars, _name, _series, model_colors, new_figure, save
from .tables import (
    MEAN,
    Column,
    Table,
    _lines,
    _plain,
    by_dataset,
    finding_label,
)

# (field, header, higher is better: None for a control, not ranked); best and second are marked in
# each column's direction (report/marks.py)
COLUMNS = (
    ("ablation_drop", "region drop \N{UPWARDS ARROW}", True),
    ("ablation_control_drop", "control drop \N{DOWNWARDS ARROW}", False),
    ("ablation_gap", "drop gap \N{UPWARDS ARROW}", True),
    ("causal_retention", "causal \N{UPWARDS ARROW}", True),
    ("deletion_auc", "deletion \N{DOWNWARDS ARROW}", False),
    ("deletion_auc_random", "deletion, random order", None),
    ("insertion_auc", "insertion \N{UPWARDS ARROW}", True),
    ("insertion_auc_random", "insertion, random order", None),
    ("sanity_rank_corr", "sanity \N{GREEK SMALL LETTER RHO} \N{DOWNWARDS ARROW}", False),
)


def _faithful(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["finding"] == MEAN and r.get("n_faithfulness")]


def faithfulness_tables(results: dict[str, Any]) -> list[Table]:
    rows = results.get("rows", [])
    flagged = set(results.get("random_weights", []))
    out = []
    for key, label, slug, sub in by_dataset(rows):
        means = _faithful(sub)
        if not means:
            continue
        cols = [Column(f, h, rank=better is not None) for f, h, better in COLUMNS if any(r.get(f) is not None for r in means)]
        out.append(Table(
            f"faithfulness__{slug}", f"Faithfulness on {label}",
            f"Faithfulness on {label}, means over findings of the positive images with a region: score drops "
            "(probability) when the region, a control region of the same shape elsewhere, are removed, and their "
            "gap; the share of images called positive whose call flips when the region is removed and not when the "
            "rest is (causal); deletion and insertion AUCs guided by the map and in random pixel order; the rank "
            "correlation of the maps with those of the fully randomized model (sanity). Arrows: the better direction.",
            key, cols, _lines(means, cols, _plain, flagged),
            ["\N{DAGGER} random weights: a smoke test, not a real result"] if flagged else [],
            directions={f: better for f, _, better in COLUMNS if better is not None}))
    return out


def faithfulness_figures(results: dict[str, Any], folder: Path, root: Path) -> list[FigureFile]:
    rows = results.get("rows", [])
    colors = model_colors(rows)
    out: list[FigureFile] = []
    for key, label, slug, sub in by_dataset(rows):
        means = [r for r in _faithful(sub) if r.get("deletion_curve") or r.get("deletion_curve_random")]
        series = _series(_faithful(sub))
        several = len({s[1] for s in series}) > 1
        if means:
            fig = new_figure(9.6, 3.8)
            axes = fig.subplots(1, 2)
            for ax, kind in zip(axes, ("deletion", "insertion")):
                for r in means:
                    s = (r["model"], r["explainer"])
                    for field, style in ((f"{kind}_curve", "-"), (f"{kind}_curve_random", ":")):
                        curve = r.get(field)
                        if curve:
                            x = np.linspace(0, 1, len(curve))
                            ax.plot(x, curve, style, color=colors[s[0]], linewidth=1.5,
                                    label=_name(s, several) + (" (random order)" if style == ":" else ""))
                better = "lower" if kind == "deletion" else "higher"
                ax.set_xlabel(f"share of pixels {'removed' if kind == 'deletion' else 'restored'}")
                ax.set_ylabel("score")
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1.02)
                ax.grid(alpha=0.3)
                ax.set_title(f"{kind.capitalize()} ({better} area is better)", fontsize=10)
            axes[0].legend(fontsize=7)
            fig.suptitle(f"Deletion and insertion guided by the map: {label}", fontsize=10)
            out.append(save(fig, folder, f"deletion_insertion__{slug}", f"Deletion and insertion curves on {label}",
                            "Mean score over the positive images with a region as the pixels the map ranks highest are "
                            "removed (deletion) or restored onto the removed image (insertion); dotted: the same in a "
                            "random pixel order.", root, section=key))
        findings = [r for r in sub if r["finding"] != MEAN and r.get("ablation_drop") is not None]
        if findings:
            names = list(dict.fromkeys(r["finding"] for r in findings))
            index = {(r["model"], r["explainer"], r["finding"]): r for r in findings}
            fig = new_figure(max(9.6, 2.0 + 0.5 * len(names) * max(2, len(series))), 4.0)
            axes = fig.subplots(1, 2, sharey=True)
            for ax, (field, title) in zip(axes, (("ablation_drop", "region removed"), ("ablation_control_drop", "control region removed"))):
                def value(s: tuple[str, str], g: str, field: str = field, index: dict = index) -> tuple[Any, Any]:
                    r = index.get((s[0], s[1], g), {})
                    return r.get(field), r.get(f"{field}_ci")

                _bars(ax, names, series, value, colors, several)
                ax.set_xticklabels([finding_label(n) for n in names], rotation=30, ha="right")
                ax.axhline(0, color="black", linewidth=0.6)
                ax.set_title(f"Score drop, {title}", fontsize=10)
            axes[0].set_ylabel("score drop (probability)")
            axes[0].legend(fontsize=7)
            fig.suptitle(f"Region ablation per finding: {label}", fontsize=10)
            out.append(save(fig, folder, f"ablation__{slug}", f"Region ablation on {label}",
                            "Score drop per finding when the radiologist region is removed (left) and when a region of the "
                            "same shape elsewhere is (right), means with 95% bootstrap intervals over images.",
                            root, section=key))
    return out
