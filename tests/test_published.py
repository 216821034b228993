"""`xbench install NAME` and the install hint of an unknown component name only ever name a plugin
distribution this project publishes (issue 16): the list is checked against plugins/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from xbench_core.cli import main
from xbench_core.errors import ConfigError
from xbench_core.plugins import get_registry
from xbench_core.published import PUBLISHED, install_name, published_distribution

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def test_every_published_name_is_a_plugin_of_this_repository() -> None:
    names = {re.search(r'^name = "([^"]+)"', p.read_text(), re.M).group(1) for p in PLUGINS.glob("*/pyproject.toml")}
    assert set(PUBLISHED) <= names, f"not in plugins/: {set(PUBLISHED) - names}"


def test_components_match_the_installed_plugins() -> None:
    registry = get_registry(refresh=True)
    for dist in registry.distributions:
        if dist.name in PUBLISHED:
            installed = sorted(n for names in dist.components.values() for n in names)
            assert sorted(PUBLISHED[dist.name]) == installed, dist.name


@pytest.mark.parametrize("name, dist", [
    ("rsna", "xbench-plugin-rsna-pneumonia"), ("rsna-pneumonia", "xbench-plugin-rsna-pneumonia"),
    ("xbench-plugin-kad", "xbench-plugin-kad"), ("rise", "xbench-plugin-explainers"),
    ("chestx_det10", "xbench-plugin-chestx-det10"), ("./plugins/mine", "./plugins/mine"),
    # a component name wins over another distribution's short name
    ("gradcam", "xbench-plugin-explainers"), ("hirescam", "xbench-plugin-gradcam"),
    ("xbench-plugin-gradcam", "xbench-plugin-gradcam"), ("ms-cxr", "xbench-plugin-ms-cxr"),
])
def test_install_names_resolve_to_published_distributions(name: str, dist: str) -> None:
    assert install_name(name) == dist


@pytest.mark.parametrize("name", ["numpy", "rsna-pneumonia-extra", "che", "xbench-plugin-foo"])
def test_other_names_are_never_installed(name: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    with pytest.raises(ConfigError, match="not an XBench plugin this project publishes"):
        install_name(name)
    assert main(["install", name]) == 2 and calls == []
    assert "not an XBench plugin this project publishes" in capsys.readouterr().err
    assert published_distribution(name) is None


def test_install_runs_pip_with_the_published_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["install", "rsna", "devide"]) == 0
    assert calls[0][-2:] == ["xbench-plugin-rsna-pneumonia", "xbench-plugin-devide"]


def test_unknown_component_hints_only_published_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-no-such-distribution")
    registry = get_registry(refresh=True)
    try:
        with pytest.raises(ConfigError, match=r"It is in xbench-plugin-devide: `xbench install devide`"):
            registry.get("models", "devide")
        # the name the hint gives resolves back to the distribution it names
        with pytest.raises(ConfigError, match=r"It is in xbench-plugin-gradcam: `xbench install xbench-plugin-gradcam`"):
            registry.get("explainers", "hirescam")
        with pytest.raises(ConfigError, match=r"It is in xbench-plugin-explainers: `xbench install explainers`"):
            registry.get("explainers", "gradcam")
        with pytest.raises(ConfigError) as info:
            registry.get("models", "my-own-model")
        assert "install" not in str(info.value)
    finally:
        get_registry(refresh=True)
