"""Every installed model plugin, with random weights, through native, gradcam, gradcampp and rise on
the phantom (`xbench run`, two images). Slow: RISE alone makes 1,000 forward passes per model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xbench_core import get_registry

MODELS = ("clip", "biomedclip", "medklip", "mavl", "kad", "carzero", "devide")
EXPLAINERS = ("native", "gradcam", "gradcampp", "rise")


def _records(run: Path, model: str, explainer: str) -> list[dict]:
    folder = run / "records" / "phantom" / model / explainer
    return [json.loads(line) for f in folder.glob("*.jsonl") for line in f.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_model_plugin_through_every_explainer(model: str, tmp_path: Path) -> None:
    if model not in get_registry().models:
        pytest.skip(f"model plugin {model!r} is not installed")
    exe = Path(sys.executable).with_name("xbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xbench_core"]
    run = tmp_path / "run"
    proc = subprocess.run(
        [*cmd, "run", "--models", model, "--set", f"{model}.checkpoint=random",
         "--explainers", ",".join(EXPLAINERS), "--set", "phantom.size=4",
         "--set", "phantom.resolution=64", "--limit", "2", "--device", "cpu", "--out", str(run)],
        capture_output=True, text=True, env=dict(os.environ), timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert not results["skipped_explainers"], results["skipped_explainers"]
    assert not results["errors"], results["errors"][:3]
    ran = {r["explainer"] for r in results["rows"]}
    assert ran == set(EXPLAINERS)
    for explainer in EXPLAINERS:
        records = _records(run, model, explainer)
        scored = [r for r in records if r["stats"] is not None]
        assert scored, f"{model}/{explainer}: no grounding statistics"
        constant = [r for r in scored if r["stats"]["constant_map"]]
        # A constant map (e.g. all zeros) means the explainer saw no gradient at the feature
        # layer: the model plugin's feature_layer() is not on the path from the image to its logits.
        assert not constant, (
            f"{model}/{explainer}: {len(constant)} of {len(scored)} maps are constant; "
            "check the model's feature_layer() and logits()"
        )
