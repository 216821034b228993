"""Presets: run configurations shipped inside a package (`xbench run --preset NAME`).

A preset is a YAML run config (the keys of `xbench run -c`) plus an optional `preset:` block of
facts about it (summary, citation, the paper's case count and which images it counts). The core
ships `xbench-paper`; a plugin ships its own through the entry-point group `xbench.presets`
(`NAME = "package:relative/path.yaml"`).

A dataset or model option written as `{url: ..., sha256: ...}` names a pinned file (a published
split): it is resolved like a checkpoint (`resolve_asset`): the path given with `--set
NAME.KEY=PATH`, the environment variable `XBENCH_<NAME>_<KEY>`, the cache, a download checked
against the SHA-256 (served by `XBENCH_MIRROR` when set).
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Set
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

ENTRY_POINT_GROUP = "xbench.presets"
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Preset:
    """A named run config: its YAML text and where it comes from."""

    name: str
    text: str
    source: str  # "xbench" or the distribution that ships it

    @property
    def data(self) -> dict[str, Any]:
        import yaml

        try:
            data = yaml.safe_load(self.text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"preset {self.name!r} ({self.source}) is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"preset {self.name!r} ({self.source}): the top level must be a mapping")
        return data

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.data.get("preset") or {})

    @property
    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k != "preset"}


def available() -> dict[str, Preset]:
    """Every preset: the core's, then those of installed plugins (a clash keeps the core's)."""
    found = {p.stem: Preset(p.stem, p.read_text(), "xbench") for p in sorted(_HERE.glob("*.yaml"))}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        package, _, rel = ep.value.partition(":")
        try:
            text = resources.files(package).joinpath(rel).read_text()
        except Exception as exc:  # noqa: BLE001 - a broken plugin preset is reported, not fatal
            text = f"# could not be read: {type(exc).__name__}: {exc}\n"
        dist = ep.dist.name if ep.dist is not None else package
        found[ep.name] = Preset(ep.name, text, dist)
    return found


def get(name: str) -> Preset:
    presets = available()
    if name in presets:
        return presets[name]
    close = difflib.get_close_matches(name, list(presets), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"no preset named {name!r}.{hint} Presets: {', '.join(sorted(presets))} (`xbench preset list`)")


def _entries(raw: Any) -> list[dict[str, Any]]:
    items = [raw] if isinstance(raw, (str, dict)) else list(raw or [])
    return [{"name": i} if isinstance(i, str) else dict(i) for i in items]


def compose(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` (a user's config) on top of `base` (a preset): top-level keys replace, `grounding`
    merges, and a dataset or model listed in both keeps the preset's options under the user's."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key in ("datasets", "models") and key in out:
            known = {e["name"]: e for e in _entries(out[key]) if "name" in e}
            out[key] = [{**known.get(e.get("name"), {}), **e} for e in _entries(value)]
        elif key == "grounding" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_config(config: str | None, preset: str | None) -> dict[str, Any]:
    """The run config of `-c FILE` on top of `--preset NAME` (either may be absent)."""
    from ..engine.config import load_yaml

    data = get(preset).config if preset else {}
    return compose(data, load_yaml(config)) if config else data


def is_pinned(value: Any) -> bool:
    return isinstance(value, dict) and "url" in value


def env_name(component: str, key: str) -> str:
    """`XBENCH_<COMPONENT>_<KEY>`: rsna-pneumonia, split_file -> XBENCH_RSNA_PNEUMONIA_SPLIT_FILE."""
    return "XBENCH_" + re.sub(r"[^A-Z0-9]+", "_", f"{component}_{key}".upper()).strip("_")


def pin(component: str, key: str, value: dict[str, Any]) -> str:
    """The local path of a pinned file option (see the module docstring); AssetError if none."""
    from ..assets import resolve_asset

    unknown = set(value) - {"url", "sha256"}
    if unknown or not value.get("sha256"):
        raise ConfigError(
            f"{component}.{key}: a pinned file is {{url: ..., sha256: ...}}; got {value!r}"
        )
    return str(
        resolve_asset(
            f"{component} {key}",
            env=env_name(component, key),
            url=str(value["url"]),
            sha256=str(value["sha256"]),
            option=f"{component}.{key}",
        )
    )


def resolve_pinned(entry: dict[str, Any], overridden: Set[str] = frozenset()) -> dict[str, Any]:
    """A component entry with its pinned options resolved to local paths; the keys in
    `overridden` (given with --set) are left for the user's value."""
    name = entry.get("name", "?")
    return {
        k: pin(name, k, v) if is_pinned(v) and k not in overridden else v
        for k, v in entry.items()
    }


def resolve_all(data: dict[str, Any], sets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every dataset and model entry of a config with its pinned options resolved."""
    out = dict(data)
    for kind in ("datasets", "models"):
        if kind in out:
            out[kind] = [resolve_pinned(e, set(sets.get(e.get("name", ""), {}))) for e in _entries(out[kind])]
    return out
