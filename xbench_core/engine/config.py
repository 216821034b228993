"""Run configuration: the YAML file, command-line overrides, and validation against the plugins'
declared options (an unknown or mistyped key is an error naming it and the closest valid one)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..plugins import Registry
from ..protocols import Protocol, parse_protocol, parse_tie_rule
from ..types import Option
from .faithfulness import FaithfulnessSettings
from .image_cache import CacheSettings

TOP_LEVEL = {
    "out": "run directory (default runs/<datasets>__<models>)",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "precision": "fp32 | bf16 | fp16 (autocast on accelerators)",
    "batch_size": "images per batch, or auto (accelerators: up to 64, halved per model on out-of-memory)",
    "workers": "data-loading worker processes (on the CPU only where decoding is >= 10% of the loop)",
    "limit": "evaluate only the first N images of each dataset (by sorted id)",
    "seed": "seed recorded in the manifest and given to seeded components",
    "datasets": "list of {name, root, split, ...options}",
    "models": "list of {name, checkpoint, text_encoder, ...options}",
    "explainers": "list of explainer names or {name, ...options} (default [native])",
    "metrics": "list of metric names (default: all installed)",
    "grounding": "{fixed_threshold, eval_size, strata, protocol, pointing}",
    "save_maps": "keep input-frame maps in the run directory (default true)",
    "image_cache": "keep decoded images on disk for later runs: true | DIR | {dir, max_gb, max_side}",
    "fail_fast": "stop at the first per-sample error",
    "faithfulness": "causal faithfulness pass: true | {steps, baseline, blur_sigma, noise, measures, random_order, sanity_steps}",
}
GROUNDING_KEYS = {"fixed_threshold": float, "eval_size": int, "strata": list, "protocol": str, "pointing": str}
PRECISIONS = ("fp32", "bf16", "fp16")
AUTO_BATCH = 64  # `batch_size: auto` on an accelerator: the first try, halved on out-of-memory
DEFAULT_STRATA = (0.01, 0.1)  # small < 1% of the image, medium 1-10%, large >= 10%


@dataclass
class Component:
    """A dataset or model as configured: its name and validated options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Everything a run needs, validated."""

    datasets: list[Component]
    models: list[Component]
    explainers: list[str] = field(default_factory=lambda: ["native"])
    explainer_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # validated, per explainer
    metrics: list[str] | None = None
    out: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    auto_batch: bool = False  # batch_size: auto
    workers: int = 0
    limit: int | None = None
    seed: int = 0
    fixed_threshold: float = 0.5
    eval_size: int | None = None
    strata: tuple[float, ...] = DEFAULT_STRATA  # lesion-size bounds (region area fraction); analysis only
    save_maps: bool = True
    fail_fast: bool = False
    image_cache: CacheSettings | None = None
    faithfulness: FaithfulnessSettings | None = None  # off by default
    protocol: Protocol = field(default_factory=Protocol)  # grounding.protocol (xbench_core.protocols)
    pointing: str = "share"  # the pointing game's tie rule: share | any | first

    def evaluation_identity(self) -> dict[str, Any]:
        """What decides the records' values: two runs with the same identity may share a directory."""
        return {
            "datasets": [{"name": d.name, **d.options} for d in self.datasets],
            "models": [{"name": m.name, **m.options} for m in self.models],
            "fixed_threshold": self.fixed_threshold,
            "eval_size": self.eval_size,
            # explainers with options (those without keep the identities of runs made before options)
            **({"explainers": explainers} if (explainers := self._explainer_options()) else {}),
            # images downscaled by the cache are what the models see
            **({"image_max_side": self.image_cache.max_side}
               if self.image_cache is not None and self.image_cache.max_side is not None else {}),
            **({"faithfulness": self.faithfulness.as_dict()} if self.faithfulness is not None else {}),
            # a protocol adds values to the records (the default adds none: old runs resume)
            **({"protocol": {"name": self.protocol.name, **self.protocol.options}}
               if self.protocol.name != "xbench" else {}),
        }

    def _explainer_options(self) -> dict[str, dict[str, Any]]:
        return {e: self.explainer_options[e] for e in self.explainers if self.explainer_options.get(e)}

    def as_dict(self) -> dict[str, Any]:
        grounding: dict[str, Any] = {"fixed_threshold": self.fixed_threshold, "eval_size": self.eval_size,
                                     "protocol": {"name": self.protocol.name, **self.protocol.options},
                                     "pointing": self.pointing}
        if self.strata != DEFAULT_STRATA:  # the default is stated in results.json's `analysis`
            grounding["strata"] = list(self.strata)
        return {
            "out": self.out,
            "device": self.device,
            "precision": self.precision,
            "batch_size": "auto" if self.auto_batch else self.batch_size,
            "workers": self.workers,
            "limit": self.limit,
            "seed": self.seed,
            "datasets": [{"name": d.name, **d.options} for d in self.datasets],
            "models": [{"name": m.name, **m.options} for m in self.models],
            "explainers": [{"name": e, **self.explainer_options[e]} if self.explainer_options.get(e) else e
                           for e in self.explainers],
            "metrics": self.metrics,
            "grounding": grounding,
            "save_maps": self.save_maps,
            "fail_fast": self.fail_fast,
            "image_cache": None if self.image_cache is None else self.image_cache.as_dict(),
            "faithfulness": None if self.faithfulness is None else self.faithfulness.as_dict(),
        }


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys ({', '.join(TOP_LEVEL)})")
    return data


def _components(raw: Any, kind: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    out = []
    for item in raw:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"each entry of {kind} needs a 'name' (got {item!r})")
        out.append(dict(item))
    return out


def split_names(raw: Any) -> Any:
    """A comma-separated string of names as a list (other values as they are)."""
    return [n.strip() for n in raw.split(",") if n.strip()] if isinstance(raw, str) else raw


def parse_set(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """`NAME.KEY=VALUE` strings -> {NAME: {KEY: VALUE}} (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for a in assignments or []:
        if "=" not in a or "." not in a.split("=", 1)[0]:
            raise ConfigError(f"--set expects NAME.KEY=VALUE (for example medklip.checkpoint=/w/ckpt.pth), got {a!r}")
        lhs, value = a.split("=", 1)
        name, key = lhs.split(".", 1)
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, (dict, list)) or parsed is None:
            parsed = value if parsed is None else parsed
        out.setdefault(name, {})[key] = parsed
    return out


def build_config(
    data: dict[str, Any],
    registry: Registry,
    *,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Validate a config mapping (from YAML, possibly empty) plus command-line overrides."""
    data = dict(data)
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, list(TOP_LEVEL))} (valid: {', '.join(TOP_LEVEL)})")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    datasets = _components(data.get("datasets"), "datasets") or [{"name": "phantom"}]
    models = _components(data.get("models"), "models") or [{"name": "random"}, {"name": "center"}]
    explainers = _components(split_names(data.get("explainers")) or ["native"], "explainers")
    set_options = parse_set(sets or [])
    names = {d["name"] for d in datasets} | {m["name"] for m in models} | {e["name"] for e in explainers}
    for name in set_options:
        if name not in names:
            raise ConfigError(
                f"--set names {name!r}, which is not a dataset, model or explainer of this run"
                f"{_suggest(name, sorted(names))} (this run has: {', '.join(sorted(names))})"
            )

    def resolve(kind: str, items: list[dict[str, Any]]) -> list[Component]:
        out = []
        for item in items:
            spec = registry.get(kind, item["name"])
            opts = {k: v for k, v in item.items() if k != "name"}
            opts.update(set_options.get(item["name"], {}))
            out.append(Component(item["name"], spec.resolve_options(opts)))
        return out

    cfg = RunConfig(datasets=resolve("datasets", datasets), models=resolve("models", models))
    for e in resolve("explainers", explainers):
        if cfg.explainer_options.get(e.name, e.options) != e.options:
            raise ConfigError(f"explainer {e.name!r} is listed twice with different options; a run has each explainer once")
        cfg.explainer_options[e.name] = e.options
    cfg.explainers = list(cfg.explainer_options)
    metrics = data.get("metrics")
    if metrics is not None:
        if isinstance(metrics, str):
            metrics = [m.strip() for m in metrics.split(",")]
        for m in metrics:
            registry.get("metrics", m)
        cfg.metrics = list(metrics)
    grounding = data.get("grounding") or {}
    if not isinstance(grounding, dict):
        raise ConfigError("grounding must be a mapping with fixed_threshold and/or eval_size")
    for key in grounding:
        if key not in GROUNDING_KEYS:
            raise ConfigError(f"unknown grounding key {key!r}{_suggest(key, list(GROUNDING_KEYS))}")
    cfg.fixed_threshold = _typed(grounding.get("fixed_threshold", 0.5), float, "grounding.fixed_threshold")
    if abs(round(cfg.fixed_threshold * 100) - cfg.fixed_threshold * 100) > 1e-6 or not 0 <= cfg.fixed_threshold <= 1:
        raise ConfigError("grounding.fixed_threshold must be on the 0.01 grid in [0, 1] (for example 0.5)")
    ev = grounding.get("eval_size")
    cfg.eval_size = None if ev is None else _typed(ev, int, "grounding.eval_size", 1)
    cfg.strata = _strata(grounding.get("strata", list(DEFAULT_STRATA)))
    cfg.protocol = parse_protocol(grounding.get("protocol"))
    cfg.pointing = parse_tie_rule(grounding.get("pointing"))
    cfg.out = data.get("out")
    cfg.device = str(data.get("device", "auto"))
    cfg.precision = str(data.get("precision", "fp32"))
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    batch = data.get("batch_size", 8)
    cfg.auto_batch = isinstance(batch, str) and batch.strip().lower() == "auto"
    cfg.batch_size = AUTO_BATCH if cfg.auto_batch else _typed(batch, int, "batch_size", 1)
    cfg.workers = _typed(data.get("workers", 0), int, "workers", 0)
    lim = data.get("limit")
    cfg.limit = None if lim is None else _typed(lim, int, "limit", 1)
    cfg.seed = _typed(data.get("seed", 0), int, "seed")
    cfg.save_maps = _typed(data.get("save_maps", True), bool, "save_maps")
    cfg.fail_fast = _typed(data.get("fail_fast", False), bool, "fail_fast")
    cfg.image_cache = CacheSettings.parse(data.get("image_cache"))
    cfg.faithfulness = FaithfulnessSettings.parse(data.get("faithfulness"))
    return cfg


def _strata(value: Any) -> tuple[float, ...]:
    """Lesion-size bounds: increasing area fractions strictly between 0 and 1."""
    hint = "grounding.strata must be increasing area fractions in (0, 1), for example [0.01, 0.1]"
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{hint}; got {value!r}")
    bounds = tuple(_typed(v, float, "grounding.strata") for v in value)
    if any(not 0 < b < 1 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ConfigError(f"{hint}; got {list(bounds)}")
    return bounds


def _typed(value: Any, kind: type, name: str, low: float | None = None, high: float | None = None) -> Any:
    """A core config value, coerced exactly like a plugin option (quoted booleans included)."""
    return Option(name, kind, min=low, max=high).coerce(value)


def default_out(cfg: RunConfig) -> str:
    return str(Path("runs") / ("-".join(d.name for d in cfg.datasets) + "__" + "-".join(m.name for m in cfg.models)))
