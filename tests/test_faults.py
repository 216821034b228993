"""Issue 16's fault cases (benchmarks/faults.py), one test each: every fault must be noticed (a
typed one-line error, an error record or a listed problem), never silent and never a traceback."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py"
_spec = importlib.util.spec_from_file_location("xbench_faults", _PATH)
assert _spec is not None and _spec.loader is not None
faults = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = faults  # dataclasses look their module up
_spec.loader.exec_module(faults)


@pytest.mark.parametrize("name", list(faults.CASES))
def test_fault_is_noticed(name: str) -> None:
    verdict, detail = faults.run_case(name)
    if verdict == "skipped":
        pytest.skip(detail)
    assert verdict == "ok", f"{verdict}: {detail}"
