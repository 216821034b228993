"""The core's public face: the pinned list of names, one import path each, typed, import stays light."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import xbench_core

PUBLIC = [
    "AssetError", "CheckpointError", "ConfigError", "DataError", "Dataset", "DatasetSpec",
    "Explainer", "ExplainerSpec", "FINDINGS", "FeatureLayer", "FindingData", "Geometry",
    "ImageReadError", "MapError", "MetricSpec", "Model", "ModelOutput", "ModelSpec", "Option",
    "Phrase", "PluginError", "Problem", "Region", "Sample", "Undefined", "UnsupportedFinding",
    "XBenchError",
    "canonical", "display_name", "get_registry", "hookimpl",
]  # fmt: skip

# the toolkit sub-packages that plugins import from; none repeats a name of the face
TOOLKIT = ["xbench_core.io", "xbench_core.testing", "xbench_core.metrics"]


def test_the_public_face_is_pinned() -> None:
    assert sorted(xbench_core.__all__) == sorted(PUBLIC)
    assert len(set(xbench_core.__all__)) == len(xbench_core.__all__) == 31


def test_every_name_resolves_to_its_defining_object() -> None:
    for name in PUBLIC:
        value = getattr(xbench_core, name)
        module = getattr(value, "__module__", None)
        if module is not None and isinstance(value, type):
            assert getattr(importlib.import_module(module), name) is value


def test_type_checkers_see_every_name() -> None:
    """Each name of the face is a real import, eager or under TYPE_CHECKING (mypy reads those)."""
    tree = ast.parse(Path(xbench_core.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            imported |= {a.asname or a.name for a in node.names}
    assert set(PUBLIC) <= imported
    assert (Path(xbench_core.__file__).parent / "py.typed").is_file()


def test_one_import_path_per_name() -> None:
    for module in TOOLKIT:
        exported = set(getattr(importlib.import_module(module), "__all__", []))
        assert not exported & set(PUBLIC), module


def test_unknown_names_fail_like_attributes() -> None:
    assert not hasattr(xbench_core, "write_tiny_text_encoder")  # model-family code: xbench_blocks
    assert "read_image" not in dir(xbench_core)  # toolkit: xbench_core.io


def test_import_stays_light() -> None:
    code = (
        "import sys, xbench_core; xbench_core.__all__; "
        "assert not {'torch', 'numpy', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
