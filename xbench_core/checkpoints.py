"""Reading official checkpoints safely: tensors load, nothing pickled is executed or imported.

(Implementation in progress: see the signatures.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_pickle_safely(path: str | Path) -> Any:
    """Unpickle a file (a torch checkpoint or a plain pickle) without executing code: tensors and
    plain containers load; every other object becomes an inert placeholder."""
    raise NotImplementedError


def load_checkpoint(
    path: str | Path,
    *,
    container: str | Sequence[str] | None = None,
    strip_prefixes: Sequence[str] = (),
    drop: Sequence[str] = (),
    drop_contains: Sequence[str] = (),
) -> dict[str, Any]:
    """Read a checkpoint's state_dict: navigate `container` (a key or a path of keys), strip key
    prefixes, drop named keys (and keys containing any of `drop_contains`)."""
    raise NotImplementedError


def load_state_dict_strict(module: Any, state_dict: dict[str, Any], *, source: str) -> None:
    """Load strictly; on mismatch raise CheckpointError listing missing, unexpected and mis-shaped keys."""
    raise NotImplementedError
