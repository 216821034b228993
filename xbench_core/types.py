"""Data that crosses the boundary between the core and the plugins.

Specs describe components (what `xbench list` shows without importing anything heavy); `Sample` is
what a dataset yields; `ModelOutput` is what a model's forward pass returns.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError, DataError, PluginError, XBenchError

if TYPE_CHECKING:  # numpy and the region/geometry modules stay out of `xbench list`'s imports
    import numpy as np

    from .io.regions import Region

__all__ = [
    "Option",
    "DatasetSpec",
    "ModelSpec",
    "ExplainerSpec",
    "MetricSpec",
    "Sample",
    "Phrase",
    "ModelOutput",
    "resolve_factory",
]

Factory = Callable[..., Any] | str


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
BOOL_WORDS = _TRUE | _FALSE


@dataclass(frozen=True)
class Option:
    """One option a component accepts, with its type and default, validated before use.

    `type` is one of str, int, float, bool, list, dict, or "path" (a str that names a file or folder).
    A required option has no default. `min`/`max` bound a number (inclusive); a float must be
    finite unless `finite=False`. The core's own config keys are checked by the same `coerce`.
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    required: bool = False
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    finite: bool = True

    def coerce(self, value: Any, owner: str = "") -> Any:
        """Check and convert a value (from YAML or from `--set NAME.KEY=VALUE` text).

        Quoted booleans (`'no'`, `"false"`) mean what they say: text is never truthy by itself.
        """
        if value is None:
            return None
        label = f"{owner}.{self.name}" if owner else self.name
        kind = str if self.type == "path" else self.type
        given = value
        try:
            if kind is bool and isinstance(value, str):
                low = value.strip().lower()
                if low not in BOOL_WORDS:
                    raise ValueError(value)
                value = low in _TRUE
            elif kind is bool and not isinstance(value, bool):
                raise ValueError(value)
            elif kind in (int, float) and isinstance(value, bool):
                raise ValueError(value)
            elif kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            elif kind is list and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif kind is dict and not isinstance(value, Mapping):
                raise ValueError(value)
            elif kind in (str, int, float):
                value = kind(value.strip() if kind is not str and isinstance(value, str) else value)
            elif kind is list and not isinstance(value, (list, tuple)):
                raise ValueError(value)
        except (TypeError, ValueError):
            tname = "path" if self.type == "path" else getattr(self.type, "__name__", str(self.type))
            raise ConfigError(
                f"{label} must be a {tname}, got {given!r}" + (f" ({self.help})" if self.help else "")
            ) from None
        if kind in (int, float):
            self._check_range(value, label)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{label} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        return value

    def _check_range(self, value: float, label: str) -> None:
        import math

        if self.finite and not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number, got {value!r}")
        low = "" if self.min is None else f">= {self.min:g}"
        high = "" if self.max is None else f"<= {self.max:g}"
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            allowed = " and ".join(b for b in (low, high) if b)
            raise ConfigError(
                f"{label} must be {allowed}, got {value!r}" + (f" ({self.help})" if self.help else "")
            )


def resolve_factory(factory: Factory, owner: str) -> Callable[..., Any]:
    """Import a lazy `"module:attr"` factory (or return a callable as it is)."""
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:  # a broken plugin must not take the run down without saying which
        raise PluginError(f"{owner}: cannot import factory {factory!r}: {exc}") from exc
    return obj


@dataclass(frozen=True)
class _Spec:
    name: str
    summary: str
    factory: Factory
    options: tuple[Option, ...] = ()

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Validate options against the declaration: unknown keys suggest the closest one."""
        import difflib

        known = {o.name: o for o in self.options}
        for key in given:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                valid = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    f"{self.name}: unknown option {key!r}{hint} (valid options: {valid})"
                )
        out: dict[str, Any] = {}
        for opt in self.options:
            if opt.name in given and given[opt.name] is not None:
                out[opt.name] = opt.coerce(given[opt.name], self.name)
            elif opt.required:
                raise ConfigError(
                    f"{self.name}: option {opt.name!r} is required ({opt.help or 'no help'}); "
                    f"set it in the config or with --set {self.name}.{opt.name}=VALUE"
                )
            else:
                out[opt.name] = opt.default
        return out

    def build(self, **options: Any) -> Any:
        """Import the factory and build the component with validated options. A factory that
        rejects a value (ValueError) or misses a file is a user error: a ConfigError naming this
        component (typed errors of the plugin pass as they are)."""
        factory = resolve_factory(self.factory, self.name)
        resolved = self.resolve_options(options)
        try:
            return factory(**resolved)
        except XBenchError:
            raise
        except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
            raise ConfigError(
                f"{self.name}: {type(exc).__name__}: {exc} (check its options; `xbench list` names the plugin)"
            ) from exc


@dataclass(frozen=True)
class DatasetSpec(_Spec):
    """A dataset: its findings (canonical ids) and splits; the factory takes `root`, `split`, options."""

    findings: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("test",)
    default_split: str | None = None


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """A model: the kind of its native map and what it offers to explainers."""

    map_kind: Literal["similarity", "cross_attention", "prior", "random", "contrast"] = "similarity"
    capabilities: frozenset[str] = frozenset()  # e.g. {"logits", "feature_layers"}
    note: str = ""  # a caveat shown by `xbench list` and recorded in the manifest


@dataclass(frozen=True)
class ExplainerSpec(_Spec):
    """An explainer: what it requires of a model (`ModelSpec.capabilities`) and whether it needs gradients."""

    requires: frozenset[str] = frozenset()
    needs_grad: bool = False


@dataclass(frozen=True)
class MetricSpec(_Spec):
    """A metric over one finding's records: its kind, the row fields it fills, its direction."""

    kind: Literal["grounding", "classification"] = "grounding"
    fields: tuple[str, ...] = ()
    higher_is_better: bool = True


@dataclass(frozen=True)
class Phrase:
    """A text query of one sample (phrase grounding): a report sentence about one finding, with
    that sentence's own region (None when the sentence has no annotated region)."""

    text: str
    finding: str
    region: Region | None = None


@dataclass
class Sample:
    """One image of a dataset with its labels and ground-truth regions (picklable).

    `image` is H x W float32 in [0, 1] at original resolution (modality LUT, windowing and
    MONOCHROME1 inversion applied). `labels` maps finding ids to 0 or 1; a finding absent from it
    is unknown. `regions` maps finding ids to the region of an annotated positive.

    `phrases` (phrase grounding, e.g. MS-CXR) are the sample's own text queries, at most one per
    finding: each makes its finding a positive with the phrase's region, and models that encode
    phrases are queried with the text instead of the finding (findings-only datasets leave it empty).
    """

    dataset: str
    id: str
    image: np.ndarray | None
    labels: dict[str, int] = field(default_factory=dict)
    regions: dict[str, Region] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    phrases: tuple[Phrase, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for phrase in self.phrases:
            if phrase.finding in seen:
                raise DataError(
                    f"sample {self.id}: two phrases for {phrase.finding}; a sample carries at most "
                    "one phrase per finding (make one sample per image-phrase pair)"
                )
            seen.add(phrase.finding)
            self.labels[phrase.finding] = 1
            if phrase.region is not None:
                self.regions[phrase.finding] = phrase.region

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image."""
        if self.image is not None:
            return (int(self.image.shape[0]), int(self.image.shape[1]))
        return tuple(self.meta["size"])  # type: ignore[return-value]


@dataclass
class ModelOutput:
    """What a model's forward pass returns, on the device.

    `scores` [B, C] are probabilities in [0, 1] for the C queried findings; `maps` holds
    {kind: [B, C, gh, gw]} in the model-input frame (the frame its Geometry describes).
    `extras` may carry anything an explainer of the same plugin wants (features, attention).
    """

    scores: Any
    maps: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
