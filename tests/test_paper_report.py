"""The paper's layouts (Table 1, Tables 2-5, Figures 3-4) and `xbench report --compare`, on results
constructed by hand: every cell, difference and count is known exactly."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from xbench_core.errors import ConfigError
from xbench_core.report.paper import compare, comparison_csv, line_fit, load_published, paper_tables
from xbench_core.report.tables import to_csv, to_latex, to_markdown


def row(dataset: str, model: str, finding: str = "__mean__", **values: Any) -> dict[str, Any]:
    out = {"dataset": dataset, "split": "test", "finding": finding, "model": model, "explainer": "native",
           "n_regions": 4}
    for k, v in values.items():
        if isinstance(v, tuple):  # (value, ci_low, ci_high)
            out[k], out[f"{k}_ci"] = v[0], [v[1], v[2]]
        else:
            out[k] = v
    return out


def constructed() -> dict[str, Any]:
    rows = [
        row("rsna-pneumonia", "kad", pointing_game=(0.50, 0.40, 0.60), dice_best=(0.30, 0.25, 0.35),
            iou_best=0.20, dice_fixed=0.10, auroc=0.80),
        row("rsna-pneumonia", "medklip", pointing_game=(0.70, 0.65, 0.75), dice_best=(0.40, 0.30, 0.50),
            iou_best=0.25, dice_fixed=0.30, auroc=0.90),
        row("rsna-pneumonia", "clip", pointing_game=(0.10, 0.05, 0.15), dice_best=0.05, iou_best=0.02,
            dice_fixed=0.01, auroc=0.55),
        row("covid-rural", "medklip", pointing_game=0.9, dice_best=0.6, iou_best=0.5, dice_fixed=0.4, auroc=0.7),
        row("chestx-ray14-bbox", "medklip", pointing_game=0.3, dice_best=0.2, iou_best=0.1, dice_fixed=0.1),
        row("chestx-ray14-bbox", "medklip", "mass", pointing_game=(0.25, 0.1, 0.4)),
        row("chestx-ray14-bbox", "medklip", "nodule", pointing_game=(0.35, 0.2, 0.5)),
        row("chestx-ray14-bbox", "kad", "mass", pointing_game=(0.45, 0.3, 0.6)),
        # another explainer of a model that has native maps is not the paper's
        {**row("rsna-pneumonia", "kad", pointing_game=0.99), "explainer": "gradcam"},
    ]
    rows += [row("vindr-cxr", "kad", f, pointing_game=i / 100) for i, f in enumerate(
        ["aortic_enlargement", "atelectasis", "calcification", "cardiomegaly", "consolidation"])]
    return {"rows": rows, "random_weights": []}


def table(tables: list, name: str) -> Any:
    return next(t for t in tables if t.name == name)


def test_table1_layout_values_in_percent_and_marks() -> None:
    tables = paper_tables(constructed())
    assert [t.name for t in tables] == ["paper_table1", "paper_table2_part1", "paper_table2_part2", "paper_table3"]
    t1 = table(tables, "paper_table1")
    # the paper's dataset order, whatever the run's order; rows in the paper's model order
    assert [c.group for c in t1.columns][::3] == ["COVID-19", "Pneumonia", "ChestX-ray14"]
    assert [c.label for c in t1.columns][:3] == ["Point", "Dice", "IoU"]
    assert [ln.label for ln in t1.lines] == ["CLIP", "MedKLIP", "KAD"]
    medklip = t1.lines[1]
    assert medklip.values["rsna-pneumonia|pointing_game"] == pytest.approx(70.0)
    assert medklip.cis["rsna-pneumonia|dice_best"] == pytest.approx([30.0, 50.0])
    assert t1.lines[0].values["covid-rural|pointing_game"] is None
    marks = t1.marks()
    assert marks[(1, "rsna-pneumonia|pointing_game")] == "best"
    assert marks[(2, "rsna-pneumonia|pointing_game")] == "second"
    assert (0, "rsna-pneumonia|pointing_game") not in marks
    md = to_markdown(t1)
    assert "**70.00**" in md and "<ins>50.00</ins>" in md
    tex = to_latex(t1)
    assert "\\multicolumn{3}{c}{Pneumonia}" in tex and "\\textbf{70.00}" in tex and "\\underline{50.00}" in tex
    first = next(csv.reader(io.StringIO(to_csv(t1))))
    assert first[:6] == ["model", "explainer", "random_weights", "COVID-19 Point", "COVID-19 Point ci_low",
                         "COVID-19 Point ci_high"]


def test_per_class_tables() -> None:
    tables = paper_tables(constructed())
    t3 = table(tables, "paper_table3")
    assert [c.key for c in t3.columns] == ["mass", "nodule"]
    assert [ln.model for ln in t3.lines] == ["medklip", "kad"]
    assert t3.lines[1].values == {"mass": pytest.approx(45.0), "nodule": None}
    # VinDr-CXR in two halves, each model once per half
    a, b = table(tables, "paper_table2_part1"), table(tables, "paper_table2_part2")
    assert [c.key for c in a.columns] == ["aortic_enlargement", "atelectasis", "calcification"]
    assert [c.key for c in b.columns] == ["cardiomegaly", "consolidation"]
    assert [ln.model for ln in a.lines] == [ln.model for ln in b.lines] == ["kad"]
    assert b.lines[0].values["consolidation"] == pytest.approx(4.0)


def test_line_fit_against_the_definition() -> None:
    import numpy as np

    x, y = np.array([10.0, 50.0, 70.0]), np.array([55.0, 80.0, 90.0])
    slope, intercept, r2 = line_fit(x, y)
    pred = slope * x + intercept
    assert r2 == pytest.approx(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert slope == pytest.approx(np.cov(x, y, bias=True)[0, 1] / x.var())
    assert line_fit(np.array([1.0, 1.0]), np.array([2.0, 3.0])) is None


PUBLISHED = {
    "citation": "constructed for this test (not the paper's numbers)",
    "cells": [
        {"table": "1", "dataset": "rsna-pneumonia", "finding": "__mean__", "model": "medklip",
         "metric": "pointing_game", "value": 72.5},  # inside [65, 75], ours 70 -> -2.5
        {"table": "1", "dataset": "rsna-pneumonia", "finding": "__mean__", "model": "kad",
         "metric": "dice_best", "value": 40.0},  # outside [25, 35], ours 30 -> -10
        {"table": "1", "dataset": "rsna-pneumonia", "finding": "__mean__", "model": "kad",
         "metric": "iou_best", "value": 18.0},  # no interval, ours 20 -> +2
        {"table": "3", "dataset": "chestx-ray14-bbox", "finding": "mass", "model": "kad",
         "metric": "pointing_game", "value": 30.0},  # the lower bound itself: inside
        {"table": "1", "dataset": "vindr-cxr", "finding": "__mean__", "model": "devide",
         "metric": "pointing_game", "value": 12.0},  # not in this run
    ],
}


def test_compare_cells_differences_and_counts() -> None:
    out = compare(constructed(), PUBLISHED)
    got = [(c["model"], c["metric"], c["published"], c["ours"], c["difference"], c["inside"]) for c in out["cells"]]
    assert got == [
        ("medklip", "pointing_game", 72.5, pytest.approx(70.0), pytest.approx(-2.5), True),
        ("kad", "dice_best", 40.0, pytest.approx(30.0), pytest.approx(-10.0), False),
        ("kad", "iou_best", 18.0, pytest.approx(20.0), pytest.approx(2.0), None),
        ("kad", "pointing_game", 30.0, pytest.approx(45.0), pytest.approx(15.0), True),
    ]
    assert out["counts"] == {"compared": 4, "inside": 2, "outside": 1, "no_interval": 1, "not_in_run": 1}
    lines = list(csv.reader(io.StringIO(comparison_csv(out))))
    assert lines[2][-2:] == [repr(30.0 - 40.0), "no"] and lines[3][-1] == ""


def test_compare_refuses_random_weights() -> None:
    results = {**constructed(), "random_weights": ["kad"]}
    with pytest.raises(ConfigError, match="random weights \\(kad\\)"):
        compare(results, PUBLISHED)


def test_published_reference_data_is_cited_and_holds_no_invented_numbers() -> None:
    data = load_published("xbench-paper")
    assert "arXiv:2510.19599" in data["citation"]
    for c in data["cells"]:  # every cell names its table and a metric the comparison knows
        assert c["table"] in {"1", "3", "4", "5"} and c["metric"] in {"pointing_game", "dice_best", "iou_best"}
    if not data["cells"]:
        assert "PLACEHOLDER" in data["note"]


def test_report_compare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(constructed()))
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(PUBLISHED))
    from xbench_core.report.paper import write_comparison

    write_comparison(run, str(ref))
    printed = capsys.readouterr().out
    assert "4 published cells compared: 2 inside our 95% interval, 1 outside, 1 without an interval; " \
           "1 published cells not in this run" in printed
    md = (run / "tables/compare__ref.md").read_text()
    assert "| 72.50 | 70.00 [65.00, 75.00] | -2.50 | yes |" in md
