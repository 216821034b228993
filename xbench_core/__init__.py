"""XBench core: plugin contracts, engine, grounding statistics, run store and reports.

The public face that plugins import is `__all__` below (the contracts), one import path per name:
`from xbench_core import ModelSpec, Sample, Region`. Test support lives in `xbench_core.testing`;
the general toolkit in its sub-packages: `xbench_core.io` (images, files, regions),
`xbench_core.io.layout` (annotation-table helpers), `xbench_core.geometry` (resize/crop helpers),
`xbench_core.dataset` (`require_file`), `xbench_core.checkpoints`, `xbench_core.assets`,
`xbench_core.inspect`. Model-family code lives in the `xbench-cxr-blocks` library (`xbench_blocks`).

Names are loaded on first use (PEP 562), so that `import xbench_core` (and `xbench list`) imports
neither torch nor numpy: only the errors, the hook markers and the specs are loaded eagerly. Type
checkers see the real imports below (`TYPE_CHECKING`); the package ships `py.typed`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AssetError,
    CheckpointError,
    ConfigError,
    DataError,
    ImageReadError,
    MapError,
    PluginError,
    UnsupportedFinding,
    XBenchError,
)
from .hookspecs import hookimpl
from .types import (
    DatasetSpec,
    ExplainerSpec,
    MetricSpec,
    ModelOutput,
    ModelSpec,
    Option,
    Phrase,
    Sample,
)

if TYPE_CHECKING:
    from .dataset import Dataset, Problem
    from .findings import FINDINGS, canonical, display_name
    from .geometry import Geometry
    from .io.regions import Region
    from .metrics.data import FindingData, Undefined
    from .model import Explainer, FeatureLayer, Model
    from .plugins import get_registry

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first use)
_LAZY = {
    "Dataset": "dataset", "Problem": "dataset",
    "FINDINGS": "findings", "canonical": "findings", "display_name": "findings",
    "Geometry": "geometry",
    "Region": "io.regions",
    "FindingData": "metrics.data", "Undefined": "metrics.data",
    "Explainer": "model", "FeatureLayer": "model", "Model": "model",
    "get_registry": "plugins",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xbench_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # errors
    "XBenchError", "ConfigError", "DataError", "ImageReadError", "MapError", "PluginError",
    "UnsupportedFinding", "AssetError", "CheckpointError",
    # hooks and the specs plugins register
    "hookimpl", "DatasetSpec", "ModelSpec", "ExplainerSpec", "MetricSpec", "Option",
    # what datasets, models and explainers exchange (Phrase: a sample's text query, Sample.phrases,
    # read by Model.encode_phrases)
    "Sample", "Phrase", "Region", "ModelOutput", "Geometry",
    # the base classes plugins implement
    "Dataset", "Problem", "Model", "FeatureLayer", "Explainer",
    # findings
    "FINDINGS", "canonical", "display_name",
    # metric authors: one finding's data, a value that does not exist
    "FindingData", "Undefined",
    # registry access
    "get_registry",
]  # fmt: skip
