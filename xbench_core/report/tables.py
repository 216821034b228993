"""The report's tables, in the paper's layouts, written as CSV, Markdown and LaTeX (booktabs).

Per dataset (and split): grounding (Pointing Game, EBPG, Dice and IoU per model: Table 1),
Pointing Game per finding (Tables 2-5), recognition (AUROC, AUPRC, F1, accuracy), lesion-size strata
and threshold modes; plus an overview of grounding across datasets. In every column where higher is
better the best value is bold and the second best underlined (LaTeX `\\underline`, Markdown
`<ins>`, which GitHub renders), compared at the three decimals shown, in each metric's direction
(`MetricSpec.higher_is_better`: the lowest value is best where lower is better; see `marks`). CSV files hold the full
values and the 95% confidence intervals.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..findings import BY_ID
from ..schema import MEAN
from .marks import higher_is_better, rank_marks

DatasetKey = tuple[str, Any]  # dataset, split


@dataclass(frozen=True)
class Column:
    """One value column: the row field it shows, its header, its group, whether it is ranked, and
    the field whose direction ranks it (default: the key's last `|`-part)."""

    key: str
    label: str
    group: str = ""
    rank: bool = True
    digits: int = 3
    field: str = ""


@dataclass
class Line:
    """One table row: a model (and explainer) with its values and intervals by column key."""

    label: str
    model: str
    explainer: str
    values: dict[str, float | None]
    cis: dict[str, list[float] | None]
    random_weights: bool = False


@dataclass
class Table:
    name: str  # file stem
    title: str
    caption: str
    section: DatasetKey | None
    columns: list[Column]
    lines: list[Line]
    notes: list[str] = field(default_factory=list)
    directions: dict[str, bool] = field(default_factory=dict)  # field -> higher_is_better (see marks.py)

    def marks(self) -> dict[tuple[int, str], str]:
        """{(line index, column key): "best" | "second"} by the values as shown, in each column's
        direction, ties (equal as shown, or overlapping 95% intervals) sharing a mark: `marks.rank_marks`."""
        out: dict[tuple[int, str], str] = {}
        for c in self.columns:
            if not c.rank:
                continue
            higher = higher_is_better(c.field or c.key.rpartition("|")[2], self.directions)
            column = rank_marks({i: ln.values.get(c.key) for i, ln in enumerate(self.lines)},
                                higher_is_better=higher, digits=c.digits,
                                cis={i: ln.cis.get(c.key) for i, ln in enumerate(self.lines)})
            out.update({(i, c.key): m for i, m in column.items()})
        return out


# ---- building -------------------------------------------------------------------------------------
def dataset_keys(rows: Sequence[dict[str, Any]]) -> list[DatasetKey]:
    seen: dict[DatasetKey, None] = {}
    for r in rows:
        seen.setdefault((r["dataset"], r.get("split")), None)
    return list(seen)


def by_dataset(rows: Sequence[dict[str, Any]]) -> list[tuple[DatasetKey, str, str, list[dict[str, Any]]]]:
    """Per dataset (and split) of the rows, in order: its key, label, slug and rows."""
    keys = dataset_keys(rows)
    return [(k, dataset_label(k, keys), dataset_slug(k, keys), [r for r in rows if (r["dataset"], r.get("split")) == k])
            for k in keys]


def dataset_label(key: DatasetKey, keys: Sequence[DatasetKey]) -> str:
    """The dataset's name, with its split when the report holds the dataset with several splits."""
    dataset, split = key
    several = sum(1 for k in keys if k[0] == dataset) > 1
    return f"{dataset} ({split})" if several and split else dataset


def dataset_slug(key: DatasetKey, keys: Sequence[DatasetKey]) -> str:
    dataset, split = key
    several = sum(1 for k in keys if k[0] == dataset) > 1
    text = f"{dataset}-{split}" if several and split else dataset
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def finding_label(finding: str) -> str:
    f = BY_ID.get(finding)
    return f.display if f is not None else finding


def _line_label(row: dict[str, Any], several_explainers: bool, flagged: set[str]) -> str:
    label = row["model"] + (f" / {row['explainer']}" if several_explainers else "")
    return label + (" \N{DAGGER}" if row["model"] in flagged else "")


def _stratum(row: dict[str, Any], name: str) -> dict[str, Any]:
    for s in row.get("strata") or []:
        if s["stratum"] == name:
            return s
    return {}


def _lines(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], getter: Callable[[dict[str, Any], Column], tuple[Any, Any]], flagged: set[str]
) -> list[Line]:
    several = len({r["explainer"] for r in rows}) > 1
    out = []
    for r in rows:
        values, cis = {}, {}
        for c in columns:
            v, ci = getter(r, c)
            values[c.key] = v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            cis[c.key] = ci
        out.append(Line(_line_label(r, several, flagged), r["model"], r["explainer"], values, cis, r["model"] in flagged))
    return out


def _plain(r: dict[str, Any], c: Column) -> tuple[Any, Any]:
    return r.get(c.key), r.get(f"{c.key}_ci")


def build_tables(results: dict[str, Any]) -> list[Table]:
    """Every table of the report, from results.json content."""
    rows = results.get("rows", [])
    flagged = set(results.get("random_weights", []))
    keys = dataset_keys(rows)
    fixed = _fixed_threshold(results)
    notes = ["\N{DAGGER} random weights: a smoke test, not a real result"] if flagged else []
    tables: list[Table] = []
    overview = _overview(rows, keys, flagged, fixed)
    if overview is not None:
        overview.notes += notes
        tables.append(overview)
    for key, label, slug, sub in by_dataset(rows):
        means = [r for r in sub if r["finding"] == MEAN]
        findings = [r for r in sub if r["finding"] != MEAN]
        grounded = [r for r in means if r.get("n_regions")]
        if grounded:
            cols = [Column("pointing_game", "PG"), Column("ebpg", "EBPG"), Column("dice_fixed", f"Dice@{fixed:g}"),
                    Column("dice_best", "Dice*"), Column("iou_fixed", f"IoU@{fixed:g}"), Column("iou_best", "IoU*")]
            cols = [c for c in cols if any(c.key in r for r in grounded)]
            tables.append(Table(
                f"grounding__{slug}", f"Grounding on {label}",
                f"Grounding on {label}: Pointing Game (PG), energy-based PG, Dice and IoU at tau = {fixed:g} and at "
                "the best tau of each finding (*), means over findings.",
                key, cols, _lines(grounded, cols, _plain, flagged), list(notes)))
            tables.append(_per_finding(findings, means, key, label, slug, flagged, notes))
            strata = _strata_table(grounded, key, label, slug, flagged, fixed)
            if strata is not None:
                strata.notes += notes
                tables.append(strata)
            tables.append(_thresholds(grounded, key, label, slug, flagged, fixed, notes))
        recognized = [r for r in means if any(r.get(k) is not None for k in ("auroc", "auprc", "f1", "accuracy"))]
        if recognized:
            cols = [Column("auroc", "AUROC"), Column("auprc", "AUPRC"), Column("f1", "F1"), Column("accuracy", "Accuracy")]
            tables.append(Table(
                f"recognition__{slug}", f"Recognition on {label}",
                f"Recognition on {label}: AUROC, AUPRC, and F1 and accuracy at score 0.5, means over findings.",
                key, cols, _lines(recognized, cols, _plain, flagged), list(notes)))
    from .faithfulness import faithfulness_tables

    return tables + faithfulness_tables(results)


def _fixed_threshold(results: dict[str, Any]) -> float:
    for r in results.get("rows", []):
        if r.get("fixed_threshold") is not None:
            return float(r["fixed_threshold"])
    return float(((results.get("config") or {}).get("grounding") or {}).get("fixed_threshold", 0.5))


def _overview(rows: Sequence[dict[str, Any]], keys: Sequence[DatasetKey], flagged: set[str], fixed: float) -> Table | None:
    """Table 1 of the paper: per model, PG, Dice and IoU of every dataset side by side."""
    means = [r for r in rows if r["finding"] == MEAN and r.get("n_regions")]
    if not means:
        return None
    cols: list[Column] = []
    present = [k for k in keys if any((r["dataset"], r.get("split")) == k for r in means)]
    for k in present:
        g = dataset_label(k, keys)
        cols += [Column(f"{g}|pointing_game", "PG", g), Column(f"{g}|dice_fixed", "Dice", g), Column(f"{g}|iou_fixed", "IoU", g)]
    by_model: dict[tuple[str, str], dict[str, Any]] = {}
    for r in means:
        entry = by_model.setdefault((r["model"], r["explainer"]), {"model": r["model"], "explainer": r["explainer"]})
        g = dataset_label((r["dataset"], r.get("split")), keys)
        for f in ("pointing_game", "dice_fixed", "iou_fixed"):
            entry[f"{g}|{f}"] = r.get(f)
            entry[f"{g}|{f}_ci"] = r.get(f"{f}_ci")
    return Table(
        "grounding_overview", "Grounding across datasets",
        f"Pointing Game (PG), Dice and IoU at tau = {fixed:g} per model and dataset (means over findings).",
        None, cols, _lines(list(by_model.values()), cols, _plain, flagged))


def _per_finding(findings: Sequence[dict[str, Any]], means: Sequence[dict[str, Any]], key: DatasetKey, label: str,
                 slug: str, flagged: set[str], notes: list[str]) -> Table:
    names = list(dict.fromkeys(r["finding"] for r in findings if r.get("n_regions")))
    cols = [Column(f, finding_label(f), field="pointing_game") for f in names] + [Column(MEAN, "Mean", field="pointing_game")]
    pivot: dict[tuple[str, str], dict[str, Any]] = {}
    for r in [*findings, *means]:
        e = pivot.setdefault((r["model"], r["explainer"]), {"model": r["model"], "explainer": r["explainer"]})
        e[r["finding"]] = r.get("pointing_game")
        e[f"{r['finding']}_ci"] = r.get("pointing_game_ci")
    return Table(
        f"pointing_game_per_finding__{slug}", f"Pointing Game per finding on {label}",
        f"Pointing Game per finding on {label} (share of maps whose peak lies in the region).",
        key, cols, _lines(list(pivot.values()), cols, _plain, flagged), list(notes))


def _strata_table(means: Sequence[dict[str, Any]], key: DatasetKey, label: str, slug: str, flagged: set[str], fixed: float) -> Table | None:
    names = [s["stratum"] for s in (means[0].get("strata") or [])]
    if not names:
        return None
    cols: list[Column] = []
    for n in names:
        s0 = [_stratum(r, n) for r in means]
        lo, hi = s0[0].get("range", [0, 1])
        count = max(s.get("n_regions", 0) for s in s0)
        group = f"{n} ({_pct(lo)}-{_pct(hi)}, n={count})"
        cols += [Column(f"{n}|pointing_game", "PG", group), Column(f"{n}|dice_fixed", f"Dice@{fixed:g}", group),
                 Column(f"{n}|dice_best", "Dice*", group)]

    def get(r: dict[str, Any], c: Column) -> tuple[Any, Any]:
        name, f = c.key.split("|")
        s = _stratum(r, name)
        return s.get(f), s.get(f"{f}_ci")

    return Table(
        f"strata__{slug}", f"Grounding by lesion size on {label}",
        f"Grounding on {label} by lesion size (region area as a share of the image; n = regions): Pointing Game, "
        f"Dice at tau = {fixed:g} and at the stratum's best tau (*), means over findings.",
        key, cols, _lines(means, cols, get, flagged))


def _pct(v: float) -> str:
    return f"{v * 100:g}%"


def _thresholds(means: Sequence[dict[str, Any]], key: DatasetKey, label: str, slug: str, flagged: set[str], fixed: float,
                notes: list[str]) -> Table:
    val = any(r.get("dice_val") is not None for r in means)
    cols = [Column("dice_fixed", f"tau={fixed:g}", "Dice"), Column("dice_best", "best", "Dice"),
            Column("dice_crossval", "cross-val", "Dice")]
    cols += [Column("dice_val", "val", "Dice")] if val else []
    cols += [Column("calibration_gap", "gap", "Dice", rank=False)]
    cols += [Column("iou_fixed", f"tau={fixed:g}", "IoU"), Column("iou_best", "best", "IoU"),
             Column("iou_crossval", "cross-val", "IoU")]
    cols += [Column("iou_val", "val", "IoU")] if val else []
    cols += [Column("best_threshold", "tau*", "threshold", rank=False, digits=2)]
    cols += [Column("val_threshold", "tau val", "threshold", rank=False, digits=2)] if val else []
    return Table(
        f"thresholds__{slug}", f"Threshold selection on {label}",
        f"Dice and IoU on {label} by threshold mode: fixed tau = {fixed:g}; best (tau maximizing each finding's mean "
        "Dice on the same images, optimistic); cross-validated (5-fold over images, tau tuned on the other folds)"
        + ("; val (tau tuned on the validation split)" if val else "")
        + "; gap = Dice best - Dice fixed; tau* = mean best threshold over findings.",
        key, [c for c in cols if any(c.key in r for r in means)], _lines(means, cols, _plain, flagged), list(notes))


# ---- rendering ------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [(c.group + " " if c.group else "") + c.label for c in t.columns]
    head = ["model", "explainer", "random_weights"]
    for name in names:
        head += [name, f"{name} ci_low", f"{name} ci_high"]
    w.writerow(head)
    for ln in t.lines:
        cells: list[Any] = [ln.model, ln.explainer, int(ln.random_weights)]
        for c in t.columns:
            v = ln.values[c.key]
            ci = ln.cis.get(c.key)
            cells += ["" if v is None else repr(float(v))] + ([repr(float(x)) for x in ci] if ci else ["", ""])
        w.writerow(cells)
    return buf.getvalue()


def _marked_cells(t: Table, escape: Any, best: tuple[str, str], second: tuple[str, str]) -> list[list[str]]:
    """Each line's cells: its escaped label, then its formatted values, a column's best and second
    best wrapped in `best` and `second` (opening, closing)."""
    marks, wraps = t.marks(), {"best": best, "second": second}
    out = []
    for i, ln in enumerate(t.lines):
        cells = [escape(ln.label)]
        for c in t.columns:
            start, end = wraps.get(marks.get((i, c.key), ""), ("", ""))
            cells.append(start + fmt(ln.values[c.key], c.digits) + end)
        out.append(cells)
    return out


def to_markdown(t: Table) -> str:
    head = ["Model"] + [(c.group + " " if c.group else "") + c.label for c in t.columns]
    out = [f"#### {_md_escape(t.title)}", "", _md_escape(tau_symbol(t.caption)), "",
           "| " + " | ".join(_md_escape(tau_symbol(h)) for h in head) + " |",
           "|:--" + "|--:" * len(t.columns) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in _marked_cells(t, _md_escape, ("**", "**"), ("<ins>", "</ins>"))]
    out += [""] + [_md_escape(n) for n in t.notes] + ["Best in bold, second best underlined."]
    return "\n".join(out) + "\n"


def tau_symbol(text: str) -> str:
    return re.sub(r"\btau\b", "\N{GREEK SMALL LETTER TAU}", text)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\N{DAGGER}": r"$^\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex_text(text: str) -> str:
    """Escaped prose of ours, with the word tau as the symbol."""
    return re.sub(r"\btau\b", lambda _: r"$\tau$", latex_escape(text))


def to_latex(t: Table) -> str:
    n = len(t.columns)
    out = ["% generated by xbench report; needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
           f"\\caption{{{latex_text(t.caption)}}}", f"\\label{{tab:{t.name.replace('_', '-')}}}",
           "\\begin{tabular}{l" + "r" * n + "}", "\\toprule"]
    groups = column_groups(t.columns)
    if any(g for g, _ in groups):
        cells, rules, col = [""], [], 2
        for g, span in groups:
            cells.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_text(g)}}}" if g else " & ".join([""] * span))
            if g:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        out.append(" & ".join(cells) + " \\\\")
        out.append(" ".join(rules))
    out.append(" & ".join(["Model"] + [latex_text(c.label) for c in t.columns]) + " \\\\")
    out.append("\\midrule")
    out += [" & ".join(cells) + " \\\\" for cells in _marked_cells(t, latex_escape, ("\\textbf{", "}"), ("\\underline{", "}"))]
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def column_groups(columns: Sequence[Column]) -> list[tuple[str, int]]:
    """The columns' groups in order, each with the number of adjacent columns it spans."""
    out: list[tuple[str, int]] = []
    for c in columns:
        if out and out[-1][0] == c.group:
            out[-1] = (c.group, out[-1][1] + 1)
        else:
            out.append((c.group, 1))
    return out
