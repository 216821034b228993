"""`xbench run --preset xbench-paper` end to end on synthetic data in each dataset's real layout
(the dataset plugins' own test fixtures), then the paper's tables and figures and `--compare`.

The default suite runs the preset's seven datasets with the core's two baseline models (seconds);
the `slow` test runs all seven paper models at `checkpoint: random`."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from xbench_core.cli import main


def paper_fixtures() -> Any:
    spec = importlib.util.spec_from_file_location("paper_fixtures", Path(__file__).parent / "paper_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_preset(base: Path, models: list[str], *extra: str, checkpoints: bool = True) -> tuple[int, Path]:
    fx = paper_fixtures()
    sets = fx.write_paper_data(base / "data") + (fx.random_models(models) if checkpoints else [])
    out = base / "run"
    args = ["run", "--preset", "xbench-paper", "--models", ",".join(models), "--out", str(out), "--quiet",
            "--device", "cpu", *extra]
    for s in sets:
        args += ["--set", s]
    return main(args), out


PAPER_DATASETS = ["COVID-19", "Pneumonia", "Pneumothorax", "CheXDet-10", "CheXlocalize", "VinDR-CXR", "ChestX-ray14"]


def check_paper_layout(run: Path) -> None:
    tables = {p.name for p in (run / "tables").iterdir()}
    for name in ("paper_table1", "paper_table2_part1", "paper_table2_part2", "paper_table3", "paper_table4",
                 "paper_table5"):
        assert {f"{name}.csv", f"{name}.md", f"{name}.tex"} <= tables, name
    head = next(csv.reader((run / "tables/paper_table1.csv").open()))
    groups = list(dict.fromkeys(h.rsplit(" ", 1)[0] for h in head[3:] if not h.endswith(("ci_low", "ci_high"))))
    assert groups == PAPER_DATASETS
    for fig in ("paper_figure3", "paper_figure4"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
    page = (run / "report.html").read_text()
    assert 'id="paper"' in page and "Table 1: grounding across datasets" in page
    assert "Table 2: Pointing Game per class on VinDR-CXR (part 2 of 2)" in page


def test_preset_run_with_the_baselines_writes_the_paper_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, run = run_preset(tmp_path, ["random", "center"], "--limit", "2", "--no-report", checkpoints=False)
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    assert {r["dataset"] for r in results["rows"]} == {
        "rsna-pneumonia", "siim-pneumothorax", "covid-rural", "chestx-det10", "chexlocalize", "vindr-cxr",
        "chestx-ray14-bbox"}  # fmt: skip
    assert results["config"]["batch_size"] == 8
    capsys.readouterr()
    # the report with the published numbers of the preset: none of them is about the baselines
    assert main(["report", str(run), "--compare", "xbench-paper", "--no-gallery"]) == 0
    check_paper_layout(run)
    printed = capsys.readouterr().out
    assert ("0 published cells compared: 0 inside our 95% interval, 0 outside, 0 without an interval; "
            "0 published cells not in this run") in printed
    assert "hold no cells yet" in printed
    comparison = json.loads((run / "tables/compare__xbench-paper.json").read_text())
    assert comparison["cells"] == [] and "arXiv:2510.19599" in comparison["citation"]


@pytest.mark.slow
def test_preset_run_with_every_paper_model_at_random_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = ["clip", "biomedclip", "medklip", "kad", "mavl", "carzero", "devide"]
    rc, run = run_preset(tmp_path, models, "--limit", "2")
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    assert sorted(results["random_weights"]) == sorted(models)
    check_paper_layout(run)
    t1 = (run / "tables/paper_table1.md").read_text()
    for name in ("CLIP", "BiomedCLIP", "MedKLIP", "KAD", "MAVL", "CARZero", "DeViDe"):
        assert f"| {name} \N{DAGGER} |" in t1
    capsys.readouterr()
    assert main(["report", str(run), "--compare", "xbench-paper", "--no-gallery", "--quiet"]) == 2
    assert "random weights" in capsys.readouterr().err
