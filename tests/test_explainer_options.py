"""Explainer options: set in the config (`explainers: [native, {name: X, key: value}]`) or with
`--set X.key=value`, validated like model options, given to the factory, written to the manifest
and the run identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xbench_core import ExplainerSpec, Option, hookimpl
from xbench_core.builtin.baselines import NativeExplainer
from xbench_core.cli import main
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.errors import ConfigError
from xbench_core.testing import temporary_plugin

BUILT: list[dict[str, Any]] = []


class _Scaled(NativeExplainer):
    def __init__(self, gain: float = 1.0, mode: str = "plain") -> None:
        self.gain = gain
        BUILT.append({"gain": gain, "mode": mode})

    def explain(self, model: Any, pixels: Any, queries: Any, output: Any) -> Any:
        return super().explain(model, pixels, queries, output) * self.gain


class _Plugin:
    @hookimpl
    def xbench_register_explainers(self, register: Any) -> None:
        register(ExplainerSpec(name="scaled", summary="the native map times `gain`", factory=_Scaled,
                               options=(Option("gain", float, 1.0, "factor"),
                                        Option("mode", str, "plain", "a choice", choices=("plain", "other")))))


@pytest.fixture()
def registry() -> Any:
    with temporary_plugin(_Plugin(), "explainer-options-test") as reg:
        yield reg


def test_options_in_the_config_and_with_set(registry: Any) -> None:
    cfg = build_config({"explainers": ["native", {"name": "scaled", "gain": 2}]}, registry)
    assert cfg.explainers == ["native", "scaled"]
    assert cfg.explainer_options == {"native": {}, "scaled": {"gain": 2.0, "mode": "plain"}}
    assert cfg.as_dict()["explainers"] == ["native", {"name": "scaled", "gain": 2.0, "mode": "plain"}]
    assert cfg.evaluation_identity()["explainers"] == {"scaled": {"gain": 2.0, "mode": "plain"}}
    # the manifest's config is a valid config again
    assert build_config({"explainers": cfg.as_dict()["explainers"]}, registry).explainer_options == cfg.explainer_options
    cfg = build_config({"explainers": "native,scaled"}, registry, sets=["scaled.gain=0.5"])
    assert cfg.explainer_options["scaled"]["gain"] == 0.5
    # explainers without options leave the identity as it was before explainer options existed
    assert "explainers" not in build_config({}, registry).evaluation_identity()


@pytest.mark.parametrize(("data", "sets", "pattern"), [
    ({"explainers": [{"name": "scaled", "gian": 2}]}, [], r"scaled: unknown option 'gian'; did you mean 'gain'\?"),
    ({"explainers": ["scaled"]}, ["scaled.gain=abc"], r"scaled\.gain must be a float, got 'abc'"),
    ({"explainers": ["scaled"]}, ["scaled.mode=odd"], r"scaled\.mode must be one of plain, other"),
    ({"explainers": ["native"]}, ["scaled.gain=2"], r"'scaled', which is not a dataset, model or explainer of this run"),
    ({"explainers": [{"name": "scaled", "gain": 2}, {"name": "scaled", "gain": 3}]}, [], "listed twice with different options"),
    ({"explainers": [{"gain": 2}]}, [], "each entry of explainers needs a 'name'"),
])
def test_bad_explainer_options(registry: Any, data: dict, sets: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_config(data, registry, sets=sets)


def test_the_factory_gets_the_options_and_the_identity_guards_the_records(registry: Any, tmp_path: Path) -> None:
    base = {"datasets": [{"name": "phantom", "size": 3, "resolution": 64}], "models": ["center"],
            "out": str(tmp_path / "run"), "batch_size": 4}
    BUILT.clear()
    store, _ = execute(build_config({**base, "explainers": ["native", {"name": "scaled", "gain": 2}]}, registry),
                       registry, quiet=True)
    assert BUILT == [{"gain": 2.0, "mode": "plain"}]
    native = store.load_map("phantom", "test", "center", "native", "phantom-00000", "cardiomegaly")
    scaled = store.load_map("phantom", "test", "center", "scaled", "phantom-00000", "cardiomegaly")
    assert native is not None and float((scaled - 2 * native).abs().max()) == 0.0
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["config"]["explainers"][1] == {"name": "scaled", "gain": 2.0, "mode": "plain"}
    assert manifest["identity"]["explainers"] == {"scaled": {"gain": 2.0, "mode": "plain"}}
    # other options for the same explainer: a new directory; the same: resumed
    with pytest.raises(ConfigError, match="different configuration"):
        execute(build_config({**base, "explainers": [{"name": "scaled", "gain": 3}]}, registry), registry, quiet=True)
    execute(build_config({**base, "explainers": [{"name": "scaled", "gain": 2}]}, registry), registry, quiet=True)


def test_command_line(registry: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    config = tmp_path / "c.yaml"
    config.write_text("explainers: [native, {name: scaled, gain: 2}]\n")
    args = ["run", "-c", str(config), "--set", "phantom.size=2", "--set", "phantom.resolution=64", "--models", "center",
            "--quiet", "--no-report", "--out", str(out)]
    BUILT.clear()
    # --explainers keeps the config's options of the explainers it names; --set overrides them
    assert main([*args, "--explainers", "scaled", "--set", "scaled.mode=other"]) == 0
    assert BUILT == [{"gain": 2.0, "mode": "other"}]
    assert main([*args, "--set", "scaled.gian=1"]) == 2
    assert "did you mean 'gain'?" in capsys.readouterr().err
