"""Resolving the files a plugin needs: given path, environment variable, cache, download, or a clear error.

(Implementation in progress: see the signature.)
"""

from __future__ import annotations

from pathlib import Path


def resolve_asset(
    name: str,
    given: str | Path | None = None,
    *,
    env: str | None = None,
    hub_repo: str | None = None,
    filename: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    option: str | None = None,
) -> Path:
    """Find asset `name` (for messages, e.g. "MedKLIP checkpoint")."""
    raise NotImplementedError
