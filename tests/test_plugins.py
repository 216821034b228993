"""The plugin manager: built-ins, entry-point plugins in throwaway distributions (broken imports,
raising hooks, name clashes, allow and deny lists), in-process plugins, wrong spec types."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import textwrap
import types
import uuid
from pathlib import Path

import pytest

from xbench_core import plugins
from xbench_core.cli import main
from xbench_core.errors import ConfigError, PluginError
from xbench_core.hookspecs import hookimpl
from xbench_core.plugins import get_registry
from xbench_core.testing import temporary_plugin
from xbench_core.types import DatasetSpec, ModelSpec

BUILTIN_METRICS = {"pointing_game", "ebpg", "dice", "iou", "auroc", "auprc", "f1", "accuracy",
                   "cnr", "miou_raw", "pixel_prs", "protocol"}
NONE = "xbench-no-such-distribution"  # an allow-list that admits no installed plugin


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Every test starts and ends with an empty registry cache, and no plugin selection set."""
    monkeypatch.delenv("XBENCH_PLUGINS", raising=False)
    monkeypatch.delenv("XBENCH_DISABLE_PLUGINS", raising=False)
    plugins._cache.clear()
    yield
    plugins._cache.clear()


class FakeDistributions:
    """Writes installed-looking distributions (`*.dist-info` with `entry_points.txt`) and their
    plugin modules into a folder on `sys.path`."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.modules = root, []
        self.tag = uuid.uuid4().hex[:8]  # module names unique to this test
        monkeypatch.syspath_prepend(str(root))

    def add(self, dist: str, source: str, entry_point: str | None = None, version: str = "0.1") -> str:
        module = f"xbench_fake_{dist.replace('-', '_')}_{self.tag}"
        (self.root / f"{module}.py").write_text(
            "from xbench_core import DatasetSpec, ModelSpec, ExplainerSpec, MetricSpec, hookimpl\n"
            + textwrap.dedent(source)
        )
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[xbench]\n{entry_point or dist} = {module}\n")
        self.modules.append(module)
        return module

    def cleanup(self) -> None:
        for m in self.modules:
            sys.modules.pop(m, None)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "site").mkdir()
    f = FakeDistributions(tmp_path / "site", monkeypatch)
    importlib.invalidate_caches()
    yield f
    f.cleanup()
    importlib.invalidate_caches()


GOOD = """
@hookimpl
def xbench_register_datasets(register):
    register(DatasetSpec(name="{name}-data", summary="s", factory="x:y", findings=("pneumonia",)))

@hookimpl
def xbench_register_models(register):
    register(ModelSpec(name="{name}-model", summary="s", factory="x:y"))
"""


# ---- built-ins ---------------------------------------------------------------------------------
def test_builtins_are_registered(monkeypatch):
    monkeypatch.setenv("XBENCH_PLUGINS", NONE)
    reg = get_registry(refresh=True)
    assert set(reg.datasets) == {"phantom"}
    assert set(reg.models) == {"random", "center", "contrast"}
    assert set(reg.explainers) == {"native"}
    assert set(reg.metrics) == BUILTIN_METRICS
    assert not reg.failures
    for kind, name in [("datasets", "phantom"), ("models", "random"), ("explainers", "native"),
                       ("metrics", "dice")]:
        assert reg.owner(kind, name).name == "xbench-cxr"
    (core,) = reg.distributions
    assert core.name == "xbench-cxr" and core.plugin == "builtin"
    assert set(core.components["metrics"]) == BUILTIN_METRICS
    assert reg.metrics["auroc"].kind == "classification" and reg.metrics["dice"].kind == "grounding"
    assert reg.metrics["dice"].fields == ("dice_fixed", "dice_best", "best_threshold")


def test_registry_is_cached_until_refresh(monkeypatch):
    monkeypatch.setenv("XBENCH_PLUGINS", NONE)
    a = get_registry()
    assert get_registry() is a
    assert get_registry(refresh=True) is not a


def test_unknown_name_suggests_the_closest(monkeypatch):
    monkeypatch.setenv("XBENCH_PLUGINS", NONE)
    reg = get_registry(refresh=True)
    with pytest.raises(ConfigError, match=r"no dataset named 'phantm'\. Did you mean 'phantom'\?"):
        reg.get("datasets", "phantm")
    with pytest.raises(ConfigError, match="Installed: center, contrast, random"):
        reg.get("models", "zzz")


# ---- entry-point plugins -----------------------------------------------------------------------
def test_entry_point_plugin_is_loaded_with_its_distribution(fake, monkeypatch):
    fake.add("xbench-test-good", GOOD.format(name="good"), version="1.2.3")
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-good")
    reg = get_registry(refresh=True)
    assert "good-data" in reg.datasets and "good-model" in reg.models and "phantom" in reg.datasets
    owner = reg.owner("datasets", "good-data")
    assert (owner.name, owner.version, owner.plugin) == ("xbench-test-good", "1.2.3", "xbench-test-good")
    assert owner.components == {"datasets": ["good-data"], "models": ["good-model"]}
    assert not reg.failures


def test_broken_import_is_reported_and_skipped(fake, monkeypatch):
    fake.add("xbench-test-broken", "raise ImportError('needs the frobnicator package')\n")
    fake.add("xbench-test-good", GOOD.format(name="good"))
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-broken,xbench-test-good")
    reg = get_registry(refresh=True)
    (failure,) = reg.failures
    assert failure.plugin == "xbench-test-broken" and failure.distribution == "xbench-test-broken"
    assert "ImportError" in failure.error and "frobnicator" in failure.error
    assert "Traceback" in failure.detail
    # the others load
    assert "good-data" in reg.datasets and "phantom" in reg.datasets
    assert all(d.name != "xbench-test-broken" for d in reg.distributions)
    # a lookup failing afterwards mentions the failed plugins
    with pytest.raises(ConfigError, match="failed to load"):
        reg.get("datasets", "broken-data")


def test_broken_import_is_fatal_when_strict(fake, monkeypatch):
    fake.add("xbench-test-broken", "raise ImportError('needs the frobnicator package')\n")
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-broken")
    with pytest.raises(PluginError, match=r"'xbench-test-broken' from xbench-test-broken failed to load.*frobnicator"):
        get_registry(strict=True, refresh=True)
    # the non-strict registry is unaffected
    assert get_registry().failures


def test_syntax_error_in_a_plugin_is_isolated(fake, monkeypatch):
    fake.add("xbench-test-syntax", "def broken(:\n")
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-syntax")
    reg = get_registry(refresh=True)
    assert [f.plugin for f in reg.failures] == ["xbench-test-syntax"]
    assert "SyntaxError" in reg.failures[0].error


def test_raising_register_hook_is_isolated(fake, monkeypatch):
    fake.add(
        "xbench-test-raising",
        """
        @hookimpl
        def xbench_register_datasets(register):
            raise RuntimeError("annotation index missing")

        @hookimpl
        def xbench_register_models(register):
            register(ModelSpec(name="raising-model", summary="s", factory="x:y"))
        """,
    )
    fake.add("xbench-test-good", GOOD.format(name="good"))
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-raising,xbench-test-good")
    reg = get_registry(refresh=True)
    (failure,) = reg.failures
    assert failure.plugin == "xbench-test-raising" and "annotation index missing" in failure.error
    # its other hook and the other plugins still register
    assert "raising-model" in reg.models and "good-data" in reg.datasets
    assert "phantom" in reg.datasets and set(reg.metrics) == BUILTIN_METRICS
    with pytest.raises(PluginError, match="xbench-test-raising.*annotation index missing"):
        get_registry(strict=True, refresh=True)


def test_misspelled_hook_is_isolated(fake, monkeypatch):
    # a hookimpl that matches no hook specification is this plugin's error, not everyone's
    fake.add(
        "xbench-test-typo",
        """
        @hookimpl
        def xbench_register_dataset(register):
            pass
        """,
    )
    fake.add("xbench-test-good", GOOD.format(name="good"))
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-typo,xbench-test-good")
    reg = get_registry(refresh=True)
    assert [f.plugin for f in reg.failures] == ["xbench-test-typo"]
    assert "xbench_register_dataset" in reg.failures[0].error
    assert "good-data" in reg.datasets and "phantom" in reg.datasets
    with pytest.raises(PluginError, match="xbench-test-typo"):
        get_registry(strict=True, refresh=True)


def test_wrong_hook_signature_is_isolated(fake, monkeypatch):
    fake.add(
        "xbench-test-signature",
        """
        @hookimpl
        def xbench_register_datasets(register, extra):
            pass
        """,
    )
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-signature")
    reg = get_registry(refresh=True)
    assert [f.plugin for f in reg.failures] == ["xbench-test-signature"]
    assert "phantom" in reg.datasets


def test_same_name_as_a_builtin_names_both_distributions(fake, monkeypatch):
    fake.add(
        "xbench-test-clash",
        """
        @hookimpl
        def xbench_register_datasets(register):
            register(DatasetSpec(name="phantom", summary="s", factory="x:y"))
        """,
        version="2.0",
    )
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-clash")
    with pytest.raises(PluginError) as info:
        get_registry(strict=True, refresh=True)
    msg = str(info.value)
    assert "'phantom'" in msg and "xbench-cxr 0.1.0" in msg and "xbench-test-clash 2.0" in msg
    assert "XBENCH_DISABLE_PLUGINS=xbench-test-clash" in msg


def test_two_plugins_with_the_same_component_name(fake, monkeypatch):
    source = """
    @hookimpl
    def xbench_register_models(register):
        register(ModelSpec(name="twin", summary="s", factory="x:y"))
    """
    fake.add("xbench-test-one", source)
    fake.add("xbench-test-two", source)
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-one,xbench-test-two")
    with pytest.raises(PluginError, match=r"two models are named 'twin'") as info:
        get_registry(strict=True, refresh=True)
    assert "xbench-test-one" in str(info.value) and "xbench-test-two" in str(info.value)
    # without --strict-plugins the later one is isolated, listed as failed with the clash
    reg = get_registry(refresh=True)
    assert reg.owner("models", "twin").name == "xbench-test-one"
    (failure,) = reg.failures
    assert failure.distribution == "xbench-test-two" and "two models are named 'twin'" in failure.error
    assert "xbench-test-two" not in [d.name for d in reg.distributions]
    # disabling one of them resolves it
    monkeypatch.setenv("XBENCH_DISABLE_PLUGINS", "xbench-test-two")
    reg = get_registry(refresh=True)
    assert reg.owner("models", "twin").name == "xbench-test-one"


def test_same_name_in_different_kinds_is_fine(fake, monkeypatch):
    fake.add(
        "xbench-test-kinds",
        """
        @hookimpl
        def xbench_register_models(register):
            register(ModelSpec(name="phantom", summary="a model called phantom", factory="x:y"))
        """,
    )
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-kinds")
    reg = get_registry(refresh=True)
    assert reg.owner("models", "phantom").name == "xbench-test-kinds"
    assert reg.owner("datasets", "phantom").name == "xbench-cxr"


def test_allow_list_and_deny_list(fake, monkeypatch):
    fake.add("xbench-test-a", GOOD.format(name="a"), entry_point="alpha")
    fake.add("xbench-test-b", GOOD.format(name="b"), entry_point="beta")

    def loaded() -> set[str]:
        reg = get_registry(refresh=True)
        assert "phantom" in reg.datasets  # built-ins always load
        return {n for n in reg.datasets if n != "phantom"}

    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-a")
    assert loaded() == {"a-data"}
    # by entry-point name too, case and underscores folded, spaces ignored
    monkeypatch.setenv("XBENCH_PLUGINS", " beta , XBENCH_TEST_A")
    assert loaded() == {"a-data", "b-data"}
    monkeypatch.setenv("XBENCH_DISABLE_PLUGINS", "xbench-test-b")
    assert loaded() == {"a-data"}
    monkeypatch.setenv("XBENCH_DISABLE_PLUGINS", "alpha,beta")
    assert loaded() == set()
    # an empty allow-list admits nothing but the built-ins
    monkeypatch.delenv("XBENCH_DISABLE_PLUGINS")
    monkeypatch.setenv("XBENCH_PLUGINS", "")
    assert loaded() == set()


def test_deny_list_alone_keeps_other_plugins(fake, monkeypatch):
    fake.add("xbench-test-a", GOOD.format(name="a"))
    fake.add("xbench-test-b", GOOD.format(name="b"))
    # every other installed plugin is disabled through its distribution name
    from importlib import metadata

    others = {
        ep.dist.name for ep in metadata.entry_points(group="xbench")
        if ep.dist is not None and not ep.dist.name.startswith("xbench-test-")
    }
    monkeypatch.setenv("XBENCH_DISABLE_PLUGINS", ",".join(sorted(others | {"xbench-test-b"})))
    reg = get_registry(refresh=True)
    assert {n for n in reg.datasets if n != "phantom"} == {"a-data"}


def test_observer_hooks_are_collected(fake, monkeypatch):
    fake.add(
        "xbench-test-observer",
        """
        SEEN = []

        @hookimpl
        def xbench_run_started(run):
            SEEN.append(("started", run))

        @hookimpl
        def xbench_run_finished(run, results):
            SEEN.append(("finished", run, results))
        """,
    )
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-observer")
    reg = get_registry(refresh=True)
    (start,) = reg.observers["xbench_run_started"]
    (finish,) = reg.observers["xbench_run_finished"]
    start(run="r")
    finish(run="r", results={})
    assert sys.modules[fake.modules[0]].SEEN == [("started", "r"), ("finished", "r", {})]


# ---- wrong spec types --------------------------------------------------------------------------
def test_wrong_spec_type_is_an_error(fake, monkeypatch):
    fake.add(
        "xbench-test-wrongtype",
        """
        @hookimpl
        def xbench_register_datasets(register):
            register(ModelSpec(name="oops", summary="s", factory="x:y"))
        """,
    )
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-wrongtype")
    with pytest.raises(PluginError, match="xbench-test-wrongtype.*registered ModelSpec.*expected DatasetSpec"):
        get_registry(strict=True, refresh=True)
    reg = get_registry(refresh=True)
    assert "oops" not in reg.datasets and "registered ModelSpec" in reg.failures[0].error


def test_wrong_spec_type_in_process(monkeypatch):
    monkeypatch.setenv("XBENCH_PLUGINS", NONE)

    @hookimpl
    def xbench_register_models(register):
        register({"name": "dict-model"})

    plugin = types.SimpleNamespace(xbench_register_models=xbench_register_models)
    with temporary_plugin(plugin, "dict-plugin") as reg:
        assert "registered dict" in reg.failures[0].error and "expected ModelSpec" in reg.failures[0].error
    plugins.unregister_plugin("dict-plugin")


# ---- in-process plugins ------------------------------------------------------------------------
def test_temporary_plugin(monkeypatch):
    monkeypatch.setenv("XBENCH_PLUGINS", NONE)

    @hookimpl
    def xbench_register_datasets(register):
        register(DatasetSpec(name="tmp-data", summary="s", factory=dict, findings=("pneumonia",)))

    plugin = types.SimpleNamespace(xbench_register_datasets=xbench_register_datasets)
    before = get_registry()
    assert "tmp-data" not in before.datasets
    with temporary_plugin(plugin, "tmp-plugin") as reg:
        assert "tmp-data" in reg.datasets and reg is get_registry()
        owner = reg.owner("datasets", "tmp-data")
        assert (owner.name, owner.version) == ("tmp-plugin", "0+local")
        # a callable factory builds with validated options
        assert reg.datasets["tmp-data"].build() == {}
    assert "tmp-data" not in get_registry().datasets


def test_temporary_plugin_clash_with_builtin(monkeypatch):
    monkeypatch.setenv("XBENCH_PLUGINS", NONE)

    @hookimpl
    def xbench_register_datasets(register):
        register(DatasetSpec(name="clash-data", summary="s", factory="x:y"))

    @hookimpl
    def xbench_register_models(register):
        register(ModelSpec(name="random", summary="s", factory="x:y"))

    plugin = types.SimpleNamespace(xbench_register_models=xbench_register_models,
                                   xbench_register_datasets=xbench_register_datasets)
    # issue 16 item 10: the clash is isolated like a failed import; every command still works
    with temporary_plugin(plugin, "tmp-clash") as reg:
        assert reg.owner("models", "random").name == "xbench-cxr" and "clash-data" not in reg.datasets
        (failure,) = reg.failures
        assert re.search(r"'random'.*xbench-cxr .*tmp-clash", failure.error), failure.error
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["plugins"]) == 0
        assert "FAILED tmp-clash" in out.getvalue() and "two models are named 'random'" in out.getvalue()
        with pytest.raises(PluginError, match=r"'random'.*xbench-cxr .*tmp-clash"):
            get_registry(strict=True)
    assert get_registry(refresh=True).owner("models", "random").name == "xbench-cxr"


# ---- libraries that plugins depend on ------------------------------------------------------------
def test_libraries_of_plugins_are_recorded(fake, monkeypatch):
    """A plugin's dependency that itself requires the core (shared model code) is a library whose
    version the manifest records; other dependencies (numpy) and unrelated distributions are not."""
    fake.add("xbench-test-lib-user", GOOD.format(name="libuser"))
    info = fake.root / "xbench_test_lib_user-0.1.dist-info" / "METADATA"
    info.write_text(info.read_text() + "Requires-Dist: xbench-test-shared (<0.3,>=0.2)\nRequires-Dist: numpy\n")
    for name, requires in (("xbench-test-shared", plugins.CORE_DISTRIBUTION), ("xbench-test-other", "numpy")):
        lib = fake.root / f"{name.replace('-', '_')}-0.2.5.dist-info"
        lib.mkdir()
        (lib / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.2.5\nRequires-Dist: {requires}>=0.1\n"
        )
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-test-lib-user")
    reg = get_registry(refresh=True)
    assert plugins.libraries(reg) == {"xbench-test-shared": "0.2.5"}
    from xbench_core.engine.session import versions

    assert versions(reg)["libraries"] == {"xbench-test-shared": "0.2.5"}
