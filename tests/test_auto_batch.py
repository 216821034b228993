"""`batch_size: auto`: batches that do not fit on the device are halved per model and retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from xbench_core import ModelSpec, hookimpl
from xbench_core.builtin.baselines import CenterBaseline
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.testing import temporary_plugin


class _Small(CenterBaseline):
    """The center prior on a device that holds at most `fits` images at once."""

    fits = 3
    seen: list[int] = []

    def forward(self, pixels: Any, queries: list[str]) -> Any:
        type(self).seen.append(len(pixels))
        if len(pixels) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(pixels)} GiB")
        return super().forward(pixels, queries)


class _Plugin:
    @hookimpl
    def xbench_register_models(self, register: Any) -> None:
        register(ModelSpec(name="small-device", summary="center prior, 3 images fit", factory=_Small))


def _run(registry: Any, out: Path, model: str, batch: Any) -> dict:
    cfg = build_config({"datasets": [{"name": "phantom", "size": 11, "resolution": 64}], "models": [model],
                        "batch_size": batch, "out": str(out)}, registry)
    _, results = execute(cfg, registry, quiet=True)
    return results


def test_auto_halves_until_the_batch_fits_and_results_do_not_change(tmp_path: Path) -> None:
    with temporary_plugin(_Plugin(), "small-device") as registry:
        _Small.seen = []
        auto = _run(registry, tmp_path / "auto", "small-device", "auto")
        reference = _run(registry, tmp_path / "ref", "center", 2)
    assert _Small.seen[:3] == [8, 4, 2]  # CPU: auto starts at 8, then halves once per failure
    assert max(s for s in _Small.seen[3:]) == 2  # and stays at the size that fitted
    assert not auto["errors"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "model"} for r in rows]  # noqa: E731
    assert json.dumps(strip(auto["rows"])) == json.dumps(strip(reference["rows"]))
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["models"]["small-device"]["batch_size"] == 2
    assert manifest["config"]["batch_size"] == "auto"


def test_a_fixed_batch_that_does_not_fit_is_an_error_record_with_a_hint(tmp_path: Path) -> None:
    with temporary_plugin(_Plugin(), "small-device") as registry:
        results = _run(registry, tmp_path / "fixed", "small-device", 4)
    assert results["errors"]
    assert all("out of memory" in e["error"] and "batch_size: auto" in e["error"] for e in results["errors"])


def test_auto_is_accepted_on_the_command_line(tmp_path: Path) -> None:
    from xbench_core.cli import main

    code = main(["run", "--set", "phantom.size=3", "--batch-size", "auto", "--out", str(tmp_path / "r"),
                 "--quiet", "--no-report"])
    assert code == 0
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]["batch_size"] == "auto"


def test_batch_size_text_other_than_auto_is_a_clear_error() -> None:
    from xbench_core import ConfigError
    from xbench_core.plugins import get_registry

    with pytest.raises(ConfigError, match="batch_size"):
        build_config({"batch_size": "big"}, get_registry())
