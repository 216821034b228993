"""The XBench paper's own layouts (Luo et al., 2025, arXiv:2510.19599) from any run, and the
comparison of a run with the paper's published numbers (`xbench report RUN --compare xbench-paper`).

Table 1: per model, one column group per dataset (COVID-19, Pneumonia, Pneumothorax, CheXDet-10,
CheXlocalize, VinDR-CXR, ChestX-ray14) with Point (mean Pointing Game), Dice and IoU (at the best
threshold), in percent. Tables 2-5: Pointing Game per class on VinDr-CXR (its 22 classes in two
halves, each model on one row per half), ChestX-ray14, ChestX-Det10 and CheXlocalize. Figure 3:
AUROC against Pointing Game, one point per model (means over datasets), with the fitted line and
R^2; Figure 4: Dice at the fixed threshold against Dice at the best threshold per model, with the
gap. Best values are marked by the report's one marking function (`marks.rank_marks`, through
`Table.marks`).

The published numbers are reference data in `xbench_core/presets/<preset>.published.json`: a
citation and a flat list of cells `{table, dataset, finding, model, metric, value}` (value in
percent; finding `__mean__` for Table 1).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..schema import MEAN
from .tables import Column, Line, Table, finding_label

PAPER_SECTION = ("paper", None)  # the report section of the paper's layouts
# (dataset plugin, the paper's column name), in the paper's order
DATASETS = (
    ("covid-rural", "COVID-19"),
    ("rsna-pneumonia", "Pneumonia"),
    ("siim-pneumothorax", "Pneumothorax"),
    ("chestx-det10", "CheXDet-10"),
    ("chexlocalize", "CheXlocalize"),
    ("vindr-cxr", "VinDR-CXR"),
    ("chestx-ray14-bbox", "ChestX-ray14"),
)
MODELS = ("clip", "biomedclip", "medklip", "kad", "mavl", "carzero", "devide")
MODEL_NAMES = {"clip": "CLIP", "biomedclip": "BiomedCLIP", "medklip": "MedKLIP", "kad": "KAD",
               "mavl": "MAVL", "carzero": "CARZero", "devide": "DeViDe"}
TABLE1 = (("pointing_game", "Point"), ("dice_best", "Dice"), ("iou_best", "IoU"))
PER_CLASS = (("2", "vindr-cxr"), ("3", "chestx-ray14-bbox"), ("4", "chestx-det10"), ("5", "chexlocalize"))
DIGITS = 2  # percent with two decimals
HERE = Path(__file__).resolve().parent.parent / "presets"


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the paper's maps: the native explainer's where a model has them."""
    rows = results.get("rows", [])
    native = {r["model"] for r in rows if r["explainer"] == "native"}
    return [r for r in rows if r["explainer"] == "native" or r["model"] not in native]


def _model_order(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    series = list(dict.fromkeys((r["model"], r["explainer"]) for r in rows))
    rank = {m: i for i, m in enumerate(MODELS)}
    return sorted(series, key=lambda s: (rank.get(s[0], len(MODELS)), series.index(s)))


def _pct(v: Any) -> float | None:
    return float(v) * 100 if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _pct_ci(ci: Any) -> list[float] | None:
    return [float(x) * 100 for x in ci] if ci else None


def _line(model: str, explainer: str, several: bool, flagged: set[str], cells: dict[str, tuple[Any, Any]]) -> Line:
    label = MODEL_NAMES.get(model, model) + (f" / {explainer}" if several else "")
    label += " \N{DAGGER}" if model in flagged else ""
    return Line(label, model, explainer, {k: _pct(v) for k, (v, _) in cells.items()},
                {k: _pct_ci(ci) for k, (_, ci) in cells.items()}, model in flagged)


def paper_tables(results: dict[str, Any]) -> list[Table]:
    """Table 1 and Tables 2-5 for the datasets the run has (none when it has none of them)."""
    rows = _rows(results)
    flagged = set(results.get("random_weights", []))
    notes = ["\N{DAGGER} random weights: a smoke test, not a real result"] if flagged else []
    notes.append("In percent; Dice and IoU at each finding's best threshold (0.01 grid). Layout of "
                 "Luo et al., 2025 (arXiv:2510.19599).")
    series = _model_order(rows)
    several = len({e for _, e in series}) > 1
    tables: list[Table] = []
    means = {(r["dataset"], r["model"], r["explainer"]): r for r in rows if r["finding"] == MEAN and r.get("n_regions")}
    present = [(d, name) for d, name in DATASETS if any(k[0] == d for k in means)]
    if present:
        cols = [Column(f"{d}|{f}", label, name, digits=DIGITS) for d, name in present for f, label in TABLE1]
        lines = []
        for m, e in series:
            cells = {}
            for c in cols:
                d, f = c.key.split("|")
                r = means.get((d, m, e), {})
                cells[c.key] = (r.get(f), r.get(f"{f}_ci"))
            if any(v is not None for v, _ in cells.values()):
                lines.append(_line(m, e, several, flagged, cells))
        tables.append(Table("paper_table1", "Table 1: grounding across datasets",
                            "Point (Pointing Game), Dice and IoU per model and dataset, means over findings.",
                            PAPER_SECTION, cols, lines, list(notes)))
    for number, dataset in PER_CLASS:
        tables += _per_class(number, dataset, rows, series, several, flagged, notes)
    return tables


def _per_class(number: str, dataset: str, rows: Sequence[dict[str, Any]], series: Sequence[tuple[str, str]],
               several: bool, flagged: set[str], notes: list[str]) -> list[Table]:
    mine = [r for r in rows if r["dataset"] == dataset and r["finding"] != MEAN and r.get("n_regions")]
    if not mine:
        return []
    name = dict(DATASETS)[dataset]
    findings = list(dict.fromkeys(r["finding"] for r in mine))
    by = {(r["finding"], r["model"], r["explainer"]): r for r in mine}
    # VinDr-CXR's 22 classes are printed in two halves, each model once per half
    halves = [findings[: (len(findings) + 1) // 2], findings[(len(findings) + 1) // 2:]] if number == "2" else [findings]
    out = []
    for part, chunk in enumerate(h for h in halves if h):
        cols = [Column(f, finding_label(f), digits=DIGITS, field="pointing_game") for f in chunk]
        lines = [_line(m, e, several, flagged, {f: (by.get((f, m, e), {}).get("pointing_game"),
                                                    by.get((f, m, e), {}).get("pointing_game_ci")) for f in chunk})
                 for m, e in series if any((f, m, e) in by for f in chunk)]
        suffix = f" (part {part + 1} of {len(halves)})" if len(halves) > 1 else ""
        out.append(Table(f"paper_table{number}" + (f"_part{part + 1}" if len(halves) > 1 else ""),
                         f"Table {number}: Pointing Game per class on {name}{suffix}",
                         f"Pointing Game per class on {name}, in percent.", PAPER_SECTION, cols, lines,
                         [n for n in notes if not n.startswith("In percent")]))
    return out


# ---- figures --------------------------------------------------------------------------------------
def _model_means(rows: Sequence[dict[str, Any]], field: str) -> dict[tuple[str, str], float]:
    """Per (model, explainer) the mean of a field's dataset means (datasets where it is defined)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        v = r.get(field)
        if r["finding"] == MEAN and isinstance(v, (int, float)) and not isinstance(v, bool):
            acc.setdefault((r["model"], r["explainer"]), []).append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def paper_figures(results: dict[str, Any], folder: Path, root: Path) -> list[Any]:
    """Figures 3 and 4 in the paper's layout (models only, means over the paper's datasets that the
    run has; none without them)."""
    from .figures import model_colors, new_figure, save

    paper = dict(DATASETS)
    rows = [r for r in _rows(results) if r["dataset"] in paper]  # means over the paper's datasets
    colors = model_colors(rows)
    out = []
    pg, auroc = _model_means(rows, "pointing_game"), _model_means(rows, "auroc")
    both = [s for s in _model_order(rows) if s in pg and s in auroc]
    if both:
        x = np.array([pg[s] for s in both]) * 100
        y = np.array([auroc[s] for s in both]) * 100
        fig = new_figure(5.6, 4.4)
        ax = fig.subplots()
        for s, xi, yi in zip(both, x, y):
            ax.scatter(xi, yi, s=60, color=colors.get(s[0], "grey"), edgecolors="black", linewidths=0.6, zorder=3)
            ax.annotate(MODEL_NAMES.get(s[0], s[0]), (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=8)
        fit = line_fit(x, y)
        if fit is not None:
            slope, intercept, r2 = fit
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(grid, slope * grid + intercept, "-", color="black", linewidth=1,
                    label=f"fit: R\N{SUPERSCRIPT TWO} = {'undefined' if r2 is None else f'{r2:.2f}'} (n = {len(x)})")
            ax.legend(fontsize=8)
        ax.set_xlabel("Pointing Game (%)")
        ax.set_ylabel("AUROC (%)")
        ax.grid(alpha=0.3)
        out.append(save(fig, folder, "paper_figure3", "Figure 3: recognition against grounding",
                        "AUROC against Pointing Game per model (means over datasets, in percent), with the "
                        "least-squares line and its R\N{SUPERSCRIPT TWO}.", root, section=PAPER_SECTION))
    fixed, best = _model_means(rows, "dice_fixed"), _model_means(rows, "dice_best")
    pairs = [s for s in _model_order(rows) if s in fixed and s in best]
    if pairs:
        threshold = next((r["fixed_threshold"] for r in rows if r.get("fixed_threshold") is not None), 0.5)
        fig = new_figure(5.6, 4.4)
        ax = fig.subplots()
        xs = np.array([fixed[s] for s in pairs]) * 100
        ys = np.array([best[s] for s in pairs]) * 100
        top = float(max(xs.max(), ys.max(), 1.0)) * 1.1
        ax.plot([0, top], [0, top], ":", color="grey", linewidth=1)
        for s, xi, yi in zip(pairs, xs, ys):
            ax.plot([xi, xi], [xi, yi], "-", color=colors.get(s[0], "grey"), linewidth=1)
            ax.scatter(xi, yi, s=60, color=colors.get(s[0], "grey"), edgecolors="black", linewidths=0.6, zorder=3)
            ax.annotate(f"{MODEL_NAMES.get(s[0], s[0])} (+{yi - xi:.1f})", (xi, yi), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"Dice at \N{GREEK SMALL LETTER TAU} = {threshold:g} (%)")
        ax.set_ylabel("Dice at the best \N{GREEK SMALL LETTER TAU} (%)")
        ax.grid(alpha=0.3)
        out.append(save(fig, folder, "paper_figure4", "Figure 4: Dice at the fixed and at the best threshold",
                        f"Dice at tau = {threshold:g} against Dice at each finding's best tau per model (means over "
                        "datasets, in percent); the vertical segment and the number are the gap.", root,
                        section=PAPER_SECTION))
    return out


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float | None] | None:
    """Least-squares slope, intercept and R^2 (None when y is constant); None under 2 distinct x."""
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = None if ss_tot == 0 else 1 - float(((y - (slope * x + intercept)) ** 2).sum()) / ss_tot
    return float(slope), float(intercept), r2


# ---- published numbers ----------------------------------------------------------------------------
def load_published(name: str) -> dict[str, Any]:
    """The published numbers of a preset (`<name>.published.json` beside it) or of a JSON file."""
    path = Path(name)
    if not path.suffix == ".json":
        path = HERE / f"{name}.published.json"
        if not path.is_file():
            known = sorted(p.name.removesuffix(".published.json") for p in HERE.glob("*.published.json"))
            raise ConfigError(f"--compare {name}: no published numbers of that name (known: {', '.join(known)}; "
                              "or give a .json file in the same format)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the published numbers ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise DataError(f"{path}: published numbers need a 'cells' list of {{table, dataset, finding, model, metric, value}}")
    return data


def refuse_random_weights(results: dict[str, Any]) -> None:
    flagged = results.get("random_weights") or []
    if flagged:
        raise ConfigError(
            f"this run has models with random weights ({', '.join(flagged)}): its numbers are a smoke test, "
            "comparing them with published numbers means nothing; run with the real checkpoints"
        )


def compare(results: dict[str, Any], published: dict[str, Any]) -> dict[str, Any]:
    """Every published cell beside ours: ours and our 95% interval in percent, the difference
    (ours - published) and whether the published value lies inside our interval; and the counts."""
    refuse_random_weights(results)
    rows = {(r["dataset"], r["finding"], r["model"]): r for r in _rows(results)}
    cells, missing = [], 0
    for c in published["cells"]:
        r = rows.get((c["dataset"], c.get("finding", MEAN), c["model"]))
        if r is None or (ours := _pct(r.get(c["metric"]))) is None:
            missing += 1
            continue
        ci = _pct_ci(r.get(f"{c['metric']}_ci"))
        value = float(c["value"])
        inside = None if ci is None else bool(ci[0] <= value <= ci[1])
        cells.append({**c, "published": value, "ours": ours, "ci": ci, "difference": ours - value, "inside": inside})
    counts = {
        "compared": len(cells),
        "inside": sum(1 for c in cells if c["inside"] is True),
        "outside": sum(1 for c in cells if c["inside"] is False),
        "no_interval": sum(1 for c in cells if c["inside"] is None),
        "not_in_run": missing,
    }
    return {"citation": published.get("citation", ""), "note": published.get("note", ""), "cells": cells, "counts": counts}


def summary_line(comparison: dict[str, Any]) -> str:
    n = comparison["counts"]
    return (f"{n['compared']} published cells compared: {n['inside']} inside our 95% interval, {n['outside']} outside, "
            f"{n['no_interval']} without an interval; {n['not_in_run']} published cells not in this run")


def comparison_csv(comparison: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "dataset", "finding", "model", "metric", "published", "ours", "ci_low", "ci_high",
                "difference", "inside"])
    for c in comparison["cells"]:
        ci = c["ci"] or ["", ""]
        w.writerow([c.get("table", ""), c["dataset"], c.get("finding", MEAN), c["model"], c["metric"],
                    repr(c["published"]), repr(c["ours"]), *[repr(x) if x != "" else "" for x in ci],
                    repr(c["difference"]), "" if c["inside"] is None else ("yes" if c["inside"] else "no")])
    return buf.getvalue()


def comparison_markdown(comparison: dict[str, Any]) -> str:
    out = ["#### Published numbers beside ours", "", comparison["citation"], ""]
    if comparison["note"]:
        out += [comparison["note"], ""]
    out += ["| Table | Dataset | Finding | Model | Metric | Published | Ours (95% CI) | Difference | Inside |",
            "|:--|:--|:--|:--|:--|--:|--:|--:|:--|"]
    for c in comparison["cells"]:
        ci = f" [{c['ci'][0]:.{DIGITS}f}, {c['ci'][1]:.{DIGITS}f}]" if c["ci"] else ""
        inside = "-" if c["inside"] is None else ("yes" if c["inside"] else "no")
        finding = "mean" if c.get("finding", MEAN) == MEAN else finding_label(c["finding"])
        out.append(f"| {c.get('table', '')} | {c['dataset']} | {finding} | {c['model']} | {c['metric']} | "
                   f"{c['published']:.{DIGITS}f} | {c['ours']:.{DIGITS}f}{ci} | {c['difference']:+.{DIGITS}f} | {inside} |")
    out += ["", summary_line(comparison)]
    return "\n".join(out).replace("_", "\\_") + "\n"


def write_comparison(run: str | Path, name: str, *, quiet: bool = False) -> dict[str, Any]:
    """`xbench report RUN --compare NAME`: tables/compare__NAME.csv|.md|.json from the run's results."""
    folder = Path(run)
    results_path = folder / "merged-results.json"
    if not results_path.exists():
        results_path = folder / "results.json"
    results = json.loads(results_path.read_text())
    comparison = compare(results, load_published(name))
    stem = Path(name).stem.removesuffix(".published")
    out = folder / "tables"
    out.mkdir(exist_ok=True)
    (out / f"compare__{stem}.csv").write_text(comparison_csv(comparison), encoding="utf-8")
    (out / f"compare__{stem}.md").write_text(comparison_markdown(comparison), encoding="utf-8")
    (out / f"compare__{stem}.json").write_text(json.dumps(comparison, indent=2), encoding="utf-8")
    if not quiet:
        print(summary_line(comparison))
        if not load_published(name)["cells"]:
            print(f"note: the published numbers of {name} hold no cells yet ({comparison['note']})")
        print(f"comparison: {out / f'compare__{stem}.md'}")
    return comparison
