"""The faithfulness pass end to end through the command line with CLIP at random weights (full-size
ViT-B-16, no download): on the phantom and on a dataset in its real format (the RSNA plugin's Kaggle
fixture: DICOMs and the label CSV), then `xbench report` with the curves and ablation figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from xbench_core.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run_and_report(out: Path, *args: str) -> dict:
    pytest.importorskip("xbench_plugin_clip")
    pytest.importorskip("matplotlib")
    code = main(["run", "--models", "clip", "--set", "clip.checkpoint=random", "--faithfulness", "--out", str(out),
                 "--batch-size", "4", "--quiet", *args])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["faithfulness"]["steps"] == 3
    mean = next(r for r in results["rows"] if r["finding"] == "__mean__")
    assert mean["n_faithfulness"] >= 1
    for field in ("ablation_drop", "ablation_control_drop", "deletion_auc", "deletion_auc_random", "insertion_auc",
                  "sanity_rank_corr"):
        assert mean[field] is not None and f"{field}_ci" in mean, field
    assert len(mean["deletion_curve"]) == 4 and 0 <= mean["deletion_auc"] <= 1
    assert mean["sanity_rank_corr"] < 0.99  # random weights re-drawn: the maps change
    html = (out / "report.html").read_text()
    assert "Deletion and insertion" in html and "Faithfulness on" in html
    assert any((out / "figures").glob("deletion_insertion__*.png"))
    return results


def test_clip_random_weights_on_phantom(tmp_path: Path) -> None:
    config = tmp_path / "faith.yaml"
    config.write_text("faithfulness: {steps: 3, sanity_steps: 2}\n")
    _run_and_report(tmp_path / "run", "-c", str(config), "--datasets", "phantom", "--set", "phantom.resolution=128",
                    "--limit", "3")


def test_clip_random_weights_on_rsna_fixture(tmp_path: Path) -> None:
    path = ROOT / "plugins" / "xbench-plugin-rsna-pneumonia" / "tests" / "test_rsna_pneumonia.py"
    if not path.exists():
        pytest.skip("the rsna-pneumonia plugin's tests are not in this checkout")
    pytest.importorskip("xbench_plugin_rsna_pneumonia")
    spec = importlib.util.spec_from_file_location("rsna_fixture", path)
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    root = fixture.write_kaggle(tmp_path / "rsna")
    config = tmp_path / "faith.yaml"
    config.write_text("faithfulness: {steps: 3, sanity_steps: 2}\ngrounding: {eval_size: 256}\n")
    results = _run_and_report(tmp_path / "run", "-c", str(config), "--datasets", "rsna-pneumonia",
                              "--set", f"rsna-pneumonia.root={root}")
    rows = [r for r in results["rows"] if r["finding"] == "pneumonia"]
    assert rows and rows[0]["n_faithfulness"] == 2  # the fixture's two positive images
