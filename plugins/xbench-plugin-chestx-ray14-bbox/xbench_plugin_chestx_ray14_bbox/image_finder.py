"""Finding image files by name under a dataset root, indexed once and lazily."""

from __future__ import annotations

import os
from pathlib import Path


class ImageFinder:
    """Maps a file name to its path: the preferred folders first, then anywhere under `root`.

    The index is a directory walk (no image file is opened), built on the first lookup, so that a
    dataset parsed only for its labels never touches the image folders. Symlinked folders are
    followed (datasets on clusters are often linked in), each real folder once.
    """

    def __init__(self, root: Path, preferred: list[Path], suffixes: tuple[str, ...]) -> None:
        self.root = root
        self.preferred = [p for p in preferred if p.is_dir()]
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.default_folder = self.preferred[0] if self.preferred else (preferred or [root])[0]
        self._index: dict[str, Path] | None = None

    def find(self, name: str) -> Path:
        """The path of `name`; where it is nowhere, the path it would have in the default folder."""
        if self._index is None:
            self._index = self._build()
        return self._index.get(name, self.default_folder / name)

    def _build(self) -> dict[str, Path]:
        index: dict[str, Path] = {}
        visited: set[str] = set()
        for top in [*self.preferred, self.root]:
            if not top.is_dir():
                continue
            for folder, dirs, files in os.walk(top, followlinks=True):
                real = os.path.realpath(folder)
                if real in visited:
                    dirs[:] = []
                    continue
                visited.add(real)
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(self.suffixes) and name not in index:
                        index[name] = Path(folder) / name
        return index
