"""The library's face: the names plugins import, each resolving to its module's object."""

from __future__ import annotations

import importlib

import xbench_blocks


def test_every_exported_name_resolves() -> None:
    assert sorted(xbench_blocks.__all__) == sorted(xbench_blocks._LAZY)
    for name in xbench_blocks.__all__:
        module = importlib.import_module(f"xbench_blocks.{xbench_blocks._LAZY[name]}")
        assert getattr(xbench_blocks, name) is getattr(module, name)
