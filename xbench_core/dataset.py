"""The base class of dataset plugins' objects.

A dataset parses its annotations once, in `__init__`, into a list of entries; `annotation(i)` returns
the i-th sample without its image (cheap, used by `xbench inspect` and by the engine to plan).
`dataset[i]` (`__getitem__`) is the one entry point to a sample with its image: the engine's loader
workers call it, and an image cache replaces only its decoding step (`load_image`). Problems found
while parsing (malformed rows, boxes clipped to the image, unknown labels) are collected in
`problems`, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .types import Sample


@dataclass(frozen=True)
class Problem:
    """Something wrong in a dataset's files: where, and what to do about it."""

    file: str
    message: str
    line: int | None = None
    sample: str | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        who = f" [{self.sample}]" if self.sample else ""
        return f"{where}{who}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "sample": self.sample, "message": self.message}


class Dataset:
    """A dataset split: indexable samples with labels and regions in canonical finding ids.

    Subclasses set `name`, `split`, `findings` and `problems`, and implement `__len__` and
    `annotation`. `__getitem__` decodes the image with `load_image` (default: `meta["path"]` with
    the core's image reader; decoding only, since an image cache may skip it), then calls
    `fit_regions` (default: regions drawn on another grid than the image are scaled to it). A
    subclass that adds more once the image is known overrides `__getitem__` and calls super().
    """

    name: str = "dataset"
    split: str = "test"
    findings: tuple[str, ...] = ()
    problems: list[Problem]
    # how `__getitem__` decodes an image; None: `load_image`. The engine sets it to its image
    # cache's reader (which calls `load_image` on a miss).
    image_reader: Callable[[Sample], Any] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def annotation(self, index: int) -> Sample:
        """The index-th sample with `image=None`; `meta` holds at least `path` (and `size` if known)."""
        raise NotImplementedError

    def load_image(self, sample: Sample) -> Any:
        from .io.images import read_image

        return read_image(sample.meta["path"], dataset=self.name)

    def __getitem__(self, index: int) -> Sample:
        """The index-th sample with its decoded image and its regions fitted to the image."""
        sample = self.annotation(index)
        sample.image = (self.image_reader or self.load_image)(sample)
        return self.fit_regions(sample)

    def fit_regions(self, sample: Sample) -> Sample:
        """Make a decoded sample's regions fit its image (a resized copy of a release): by default
        `fit_regions_to_image` scales regions drawn on `meta["size"]` to the image's size."""
        from .io.layout import fit_regions_to_image

        return fit_regions_to_image(sample)

    def ids(self) -> list[str]:
        """The sample ids, in index order; the engine calls it to plan every run. The default builds
        each annotation: a subclass whose `annotation` touches files (image lookups, headers)
        overrides it with its parsed ids (the conformance suite checks that ids() opens no file)."""
        return [self.annotation(i).id for i in range(len(self))]


def require_file(path: Path, what: str, layout: str, *, folder: bool = False) -> Path:
    """Return `path` if it is a file (a folder with `folder=True`), else raise a DataError that
    shows the expected layout (a folder where a file belongs, e.g. an archive unpacked under the
    file's name, is not taken for it)."""
    if path.is_dir() if folder else path.is_file():
        return path
    state = f"is not a {'folder' if folder else 'file'}" if path.exists() else "not found"
    raise DataError(f"{what} {state}: {path}\nExpected layout:\n{layout}")
