"""The plugin manager: finds plugins through the `xbench` entry points, isolates broken ones, and
collects the components they register into one `Registry`.

Each entry point is loaded on its own: one that fails to import (or whose hook raises) is recorded
as a failure and skipped, unless `strict`. A plugin that registers a wrong type or a name already
taken (by the core or an earlier plugin) is isolated like one that fails to import: listed as
failed with the clash, none of its components registered, the rest works; with `strict` it is an
error naming both distributions. `XBENCH_PLUGINS` (comma-separated distribution names) allows only
those; `XBENCH_DISABLE_PLUGINS` leaves those out. The core's own components are registered through
the same hooks, from `xbench_core.builtin`.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError
from .types import DatasetSpec, ExplainerSpec, MetricSpec, ModelSpec

KINDS = {
    "datasets": ("xbench_register_datasets", DatasetSpec),
    "models": ("xbench_register_models", ModelSpec),
    "explainers": ("xbench_register_explainers", ExplainerSpec),
    "metrics": ("xbench_register_metrics", MetricSpec),
}
CORE_DISTRIBUTION = "xbench-cxr"  # the core's distribution name on the package index
BUILTIN = CORE_DISTRIBUTION
ENTRY_POINT_GROUP = "xbench"


@dataclass
class Distribution:
    """An installed distribution that provides XBench plugins."""

    name: str
    version: str
    plugin: str  # the entry point's name (or "builtin")
    components: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Failure:
    """A plugin that could not be loaded or whose registration hook raised."""

    plugin: str
    distribution: str
    error: str
    detail: str = ""


@dataclass
class Registry:
    """Every component registered by the loaded plugins, by kind and name."""

    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    explainers: dict[str, ExplainerSpec] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    owners: dict[tuple[str, str], Distribution] = field(default_factory=dict)
    distributions: list[Distribution] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    observers: dict[str, list[Any]] = field(default_factory=dict)  # run hooks, by hook name

    def get(self, kind: str, name: str) -> Any:
        """A spec by kind and name; an unknown name suggests the closest and lists the rest."""
        table: dict[str, Any] = getattr(self, kind)
        if name in table:
            return table[name]
        import difflib

        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        avail = ", ".join(sorted(table)) or "none"
        fail = ""
        if self.failures:
            fail = " Some plugins failed to load: see `xbench plugins`."
        from .published import published_distribution, short_name

        dist = published_distribution(name)  # only ever a name this project publishes
        install = f" It is in {dist}: `xbench install {short_name(dist)}`." if dist else ""
        raise ConfigError(f"no {kind[:-1]} named {name!r}.{hint} Installed: {avail}.{install}{fail}")

    def owner(self, kind: str, name: str) -> Distribution:
        return self.owners[(kind, name)]


_extra: list[tuple[Any, str]] = []  # plugins registered at run time (tests, notebooks)
_cache: dict[bool, Registry] = {}


def register_plugin(plugin: Any, name: str) -> None:
    """Register an in-process plugin object (a module or class with hookimpls); for tests."""
    _extra.append((plugin, name))
    _cache.clear()


def unregister_plugin(name: str) -> None:
    _extra[:] = [(p, n) for p, n in _extra if n != name]
    _cache.clear()


def _names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {_norm(n) for n in raw.split(",") if n.strip()}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_registry(strict: bool = False, refresh: bool = False) -> Registry:
    """Load (once) every allowed plugin and return what they register."""
    if refresh:
        _cache.clear()
    if strict not in _cache:
        _cache[strict] = _load(strict)
    return _cache[strict]


def _load(strict: bool) -> Registry:
    from . import builtin

    pm = pluggy.PluginManager("xbench")
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    core = Distribution(BUILTIN, _version(CORE_DISTRIBUTION), "builtin")
    dists: dict[str, Distribution] = {"builtin": core}
    pm.register(builtin, name="builtin")

    allow, deny = _names("XBENCH_PLUGINS"), _names("XBENCH_DISABLE_PLUGINS")
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist_name = ep.dist.name if ep.dist is not None else ep.name
        version = ep.dist.version if ep.dist is not None else "unknown"
        if allow is not None and _norm(dist_name) not in allow and _norm(ep.name) not in allow:
            continue
        if deny is not None and (_norm(dist_name) in deny or _norm(ep.name) in deny):
            continue
        if pm.has_plugin(ep.name):
            continue
        module = None
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            # a hookimpl matching no hook (a misspelled name) is this plugin's error: check now,
            # while it is the only unchecked plugin, rather than failing everyone at the end
            pm.check_pending()
        except Exception as exc:
            if module is not None and pm.is_registered(module):
                pm.unregister(module)
            _fail(registry, strict, ep.name, dist_name, exc)
            continue
        dists[ep.name] = Distribution(dist_name, version, ep.name)
    for plugin, name in _extra:
        if not pm.has_plugin(name):
            pm.register(plugin, name=name)
            dists[name] = Distribution(name, "0+local", name)

    failed: set[str] = set()
    for kind, (hook_name, spec_type) in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        # get_hookimpls() is in registration order (pluggy calls them in reverse): the core's
        # built-ins register first, so that a clash names the plugin as the one to disable
        for impl in hook.get_hookimpls():
            if impl.plugin_name in failed:
                continue
            dist = dists[impl.plugin_name]

            def register(
                spec: Any, _kind: str = kind, _dist: Distribution = dist, _type: type = spec_type
            ) -> None:
                _add(registry, _kind, spec, _dist, _type)

            try:
                impl.function(register=register)
            except Exception as exc:
                if impl.plugin_name == "builtin" or (strict and isinstance(exc, PluginError)):
                    raise
                _fail(registry, strict, impl.plugin_name, dist.name, exc)
                if isinstance(exc, PluginError):  # a clash or a wrong type: the plugin as a whole is out
                    _isolate(registry, dist)
                    failed.add(impl.plugin_name)
    for hook_name in ("xbench_run_started", "xbench_run_finished"):
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin_name not in failed]
        registry.observers[hook_name] = [i.function for i in reversed(impls)]
    registry.distributions = [d for p, d in dists.items() if p not in failed]
    pm.check_pending()
    return registry


def _add(registry: Registry, kind: str, spec: Any, dist: Distribution, spec_type: type[Any]) -> None:
    if not isinstance(spec, spec_type):
        raise PluginError(
            f"plugin {dist.name!r} registered {type(spec).__name__} through the {kind} hook; "
            f"expected {spec_type.__name__}"
        )
    table = getattr(registry, kind)
    if spec.name in table:
        other = registry.owners[(kind, spec.name)]
        raise PluginError(
            f"two {kind} are named {spec.name!r}: one from {other.name} {other.version}, one from "
            f"{dist.name} {dist.version}. Uninstall one, or disable it with "
            f"XBENCH_DISABLE_PLUGINS={dist.name}"
        )
    table[spec.name] = spec
    registry.owners[(kind, spec.name)] = dist
    dist.components.setdefault(kind, []).append(spec.name)


def _isolate(registry: Registry, dist: Distribution) -> None:
    """Take back every component a failed plugin registered before it failed."""
    for kind, names in dist.components.items():
        for name in names:
            del getattr(registry, kind)[name]
            del registry.owners[(kind, name)]
    dist.components.clear()


def _fail(registry: Registry, strict: bool, plugin: str, dist: str, exc: BaseException) -> None:
    message = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
    if strict:
        raise PluginError(
            f"plugin {plugin!r} from {dist} failed to load: {message} "
            "(run without --strict-plugins to skip it)"
        ) from exc
    registry.failures.append(Failure(plugin, dist, message, traceback.format_exc()))


def libraries(registry: Registry) -> dict[str, str]:
    """Installed libraries that plugin distributions require and that themselves require the core
    (shared model code such as xbench-cxr-blocks), name -> version: they change what plugins
    compute, so the manifest records them beside the plugins."""
    core, found = _norm(CORE_DISTRIBUTION), {}
    for plugin in registry.distributions:
        for requirement in _requires(plugin.name):
            name = _requirement_name(requirement)
            if name != core and core in {_requirement_name(r) for r in _requires(name)}:
                found[name] = _version(name)
    return dict(sorted(found.items()))


def _requires(dist: str) -> list[str]:
    try:
        return metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []


def _requirement_name(requirement: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0])


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0+unknown"
