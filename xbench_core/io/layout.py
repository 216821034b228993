"""How dataset downloads are laid out: user-given paths, image folders, split lists, label tables,
and labels drawn on a grid that the decoded image may not have.

The dataset plugins read very different files, but around the parsing they do the same few things,
which live here so that a fix lands once:

- `fit_regions_to_image`: a sample whose image is not the size its labels are drawn on (a
  downsampled PNG/JPEG copy of a release) gets its regions resized to the image
  (rsna-pneumonia, siim-pneumothorax, chestx-det10, chestx-ray14-bbox, chexlocalize);
- `require_choice`: an option's value checked when a dataset is built directly, without its spec
  (chestx-det10, chestx-ray14-bbox, chexlocalize);
- `clip_box`: a box clipped to the image, and whether anything is left of it (rsna-pneumonia,
  chestx-det10, chestx-ray14-bbox);
- `under_root`, `image_index`: a path the user gives relative to the dataset root, and the index
  of a dataset's images below a given folder or the root (chestx-det10, chestx-ray14-bbox,
  chexlocalize);
- `read_json`: a JSON annotation file, invalid JSON reported with line and column (chestx-det10,
  chexlocalize);
- `select_listed`: the ids a split file keeps, its problems reported (chestx-det10,
  chestx-ray14-bbox, chexlocalize, covid-rural, vindr-cxr, siim-pneumothorax);
- `group_label_rows` and `LabelTableDataset`: a label table with rows per annotation grouped per
  image, and the outline of a dataset read from one such table whose images are looked up by id
  when opened (rsna-pneumonia, siim-pneumothorax).

Messages that name a plugin's files or options are passed in by the plugin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset, Problem
from ..errors import ConfigError, DataError, ImageReadError
from ..types import Sample
from .files import IMAGE_SUFFIXES, ImageIndex, dicom_header, find_file, open_text, read_id_list
from .images import read_image

Size = tuple[int, int]


def require_choice(option: str, value: object, choices: Sequence[object]) -> None:
    """Raise a ConfigError `<option> must be a, b or c, got <value>` unless `value` is a choice.

    The spec checks its options' choices; this is for a dataset class built directly.
    """
    if value not in choices:
        names = [str(c) for c in choices]
        listed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ConfigError(f"{option} must be {listed}, got {value!r}")


# -- regions and the decoded image ------------------------------------------------------------
def fit_regions_to_image(sample: Sample) -> Sample:
    """Make a decoded sample's regions fit its image, and return the sample.

    When the image is not the size the labels are drawn on (`meta["size"]`), e.g. a resized PNG
    or JPEG copy of the release, every region is resized to the image (`Region.resized`: boxes
    and polygons scaled, masks resampled when rasterized), `meta["label_size"]` keeps the labels'
    size and `meta["size"]` becomes the image's. A sample without `meta["size"]` is left as it is.
    """
    shape = tuple(sample.image.shape)  # type: ignore[union-attr]
    label_size = sample.meta.get("size")
    if label_size is not None and shape != tuple(label_size):
        if unfit := image_fit_problem(sample, min_side=1):  # before the regions are stretched to fit
            raise DataError(f"{sample.meta.get('path', sample.id)}: {unfit}")
        sample.regions = {f: r.resized(shape) for f, r in sample.regions.items()}
        sample.meta["label_size"] = label_size
        sample.meta["size"] = shape
    return sample


MIN_IMAGE_SIDE = 16  # pixels: no chest radiograph is smaller
MAX_DOWNSCALE = 32  # an image may be a copy down to 1/32 of the frame its labels are drawn on
MAX_SQUASH = 4  # and its two axes scaled differently, up to 4 times (squashed to a square)


def image_fit_problem(sample: Sample, min_side: int = MIN_IMAGE_SIDE) -> str | None:
    """Why a decoded image cannot carry its sample's regions, or None when it can.

    The regions are drawn on a frame (`Region.size`) that is scaled onto the image, axis by axis:
    a resized copy is fine, squashed to a square too. But an image too small to hold the regions (a
    1x1 file whose box was drawn on 1024x1024 would lie wholly inside it and score perfectly for
    any map), more than MAX_DOWNSCALE times smaller than the frame on an axis, or scaled so
    differently on its two axes that it cannot be a copy of the same image (more than
    MAX_SQUASH), is a problem: the sample becomes an error record, never a score.
    """
    h, w = (int(s) for s in sample.image.shape[:2])  # type: ignore[union-attr]
    if min(h, w) < min_side:
        return (f"image is {h}x{w} pixels, smaller than the minimum side of {min_side}; "
                "is the file a thumbnail or a placeholder? Replace it with the release's image")
    for finding, region in sample.regions.items():
        H, W = (int(s) for s in region.size)
        sy, sx = h / H, w / W
        if min(sy, sx) < 1 / MAX_DOWNSCALE:
            return (f"image is {h}x{w} pixels but the {finding} region is drawn on {H}x{W}, more than "
                    f"{MAX_DOWNSCALE} times larger; is the file a thumbnail? Use the release's image")
        if max(sy, sx) > MAX_SQUASH * min(sy, sx):
            return (f"image is {h}x{w} pixels but the {finding} region is drawn on {H}x{W}: not a copy "
                    "of the same image; check that the file belongs to this label file")
    return None


def clip_box(box: Sequence[float], size: Size) -> tuple[list[float], str]:
    """A box [x1, y1, x2, y2] clipped to an image of `size` (H, W), and what clipping did to it.

    The second value is `inside` (nothing was outside: the box is returned as it is), `clipped`
    (the part outside was cut off) or `outside` (no area is left: the caller drops the box).
    """
    h, w = size
    x1, y1, x2, y2 = box
    clipped = [
        min(max(x1, 0.0), w),
        min(max(y1, 0.0), h),
        min(max(x2, 0.0), w),
        min(max(y2, 0.0), h),
    ]
    if clipped == [x1, y1, x2, y2]:
        return clipped, "inside"
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return clipped, "outside"
    return clipped, "clipped"


# -- paths and image folders ------------------------------------------------------------------
def label_name_problem(value: str) -> str | None:
    """Why a name read from a label file (an image id, a file name, a relative path) would open a
    file outside the dataset's folders, or None when it is a plain name below them.

    Absolute paths, `..` components, `~` and NUL bytes are refused: a label file must never make a
    dataset read a file the user did not point it at. The caller records a Problem with the label
    file and line (or entry) and drops the sample.
    """
    if value and "/" not in value and "\\" not in value and value not in (".", "..") and value[0] != "~" \
            and "\0" not in value and ":" not in value:
        return None  # the common case, kept fast: a plain file name or id
    if not value:
        return "empty name"
    parts = value.replace("\\", "/").split("/")
    if value[0] in "/\\~" or (len(value) > 1 and value[1] == ":") or "\0" in value:
        return f"{value!r} is an absolute path; labels may only name files below the dataset root"
    if ".." in parts:
        return f"{value!r} climbs out of the dataset root ('..'); labels may only name files below it"
    return None


def under_root(root: Path, value: str | os.PathLike) -> Path:
    """A path the user gives: `~` expanded, a relative one taken below the dataset `root`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def image_index(
    root: Path,
    image_dir: str | None,
    preferred: Sequence[Path],
    *,
    option: str,
    layout: str,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> tuple[ImageIndex, Path]:
    """The index of a dataset's images, and the folder where an image not found is expected.

    With `image_dir` (see `under_root`): the images below it, which must be a folder (else a
    DataError naming the `option` and showing the `layout`). Without: every image below `root`,
    the `preferred` folders (where the release keeps its images) first; the expected folder is
    the first of them that exists, else the first.
    """
    if image_dir:
        folder = under_root(root, image_dir)
        if not folder.is_dir():
            raise DataError(f"{option} not found: {folder}\nExpected layout:\n{layout}")
        return ImageIndex(folder, suffixes=suffixes), folder
    index = ImageIndex(root, suffixes=suffixes, preferred=preferred)
    return index, next((p for p in preferred if p.is_dir()), preferred[0])


def read_json(path: Path, advice: str) -> Any:
    """The content of a JSON file (plain, .gz or zipped: `open_text`).

    Invalid JSON raises a DataError with the file, line and column, and `advice` (e.g. where to
    download the file again).
    """
    try:
        with open_text(path) as (stream, _):
            return json.load(stream)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {advice}"
        ) from exc


# -- split files ------------------------------------------------------------------------------
def select_listed(
    split_file: str | os.PathLike,
    known: Collection[str],
    problems: list[Problem],
    missing: Callable[[str], str],
    rows_per_id: Collection[str] = (),
    **options: Any,
) -> list[str]:
    """The ids of `known` that a split file lists, sorted.

    The file is read by `read_id_list` (`options` go to it); its problems (ids not in `known`,
    worded by `missing(id)`, ids listed again unless it has a `rows_per_id` column, rows without
    an id) are appended to `problems`.
    """
    keep, found = read_id_list(split_file, **options).select(known, missing, rows_per_id=rows_per_id)
    problems += found
    return sorted(keep)


# -- label tables -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelRows:
    """The rows of a label table grouped per image (see `group_label_rows`).

    `ids`: the images, sorted and unique; `targets`: int8 0 or 1 per image; the parts (boxes,
    masks) of image k are parts `order[offsets[k]:offsets[k + 1]]`, in file order; `mixed`: the
    positions in `ids` of images with both a negative and a positive row (counted positive).
    """

    ids: np.ndarray
    targets: np.ndarray
    offsets: np.ndarray
    order: np.ndarray
    mixed: np.ndarray


def group_label_rows(
    row_ids: Sequence[str],
    row_targets: Sequence[int],
    part_rows: Sequence[int],
    keep: np.ndarray | None = None,
) -> LabelRows:
    """Group a label table with one row per annotation (Kaggle style) by image.

    Row r is about image `row_ids[r]` with target `row_targets[r]` (0 or 1); part p (a box, an RLE)
    belongs to row `part_rows[p]`. An image is positive when any of its rows is. With `keep` (a
    boolean per row) only those rows count; the parts must belong to kept rows.
    """
    targets_in = np.asarray(row_targets, dtype=np.int8)
    kept = np.arange(len(targets_in)) if keep is None else np.flatnonzero(keep)
    ids, inverse_kept = np.unique(np.asarray(row_ids)[kept], return_inverse=True)
    inverse = np.full(len(targets_in), -1, dtype=np.int64)
    inverse[kept] = inverse_kept
    targets = np.zeros(len(ids), dtype=np.int8)
    np.maximum.at(targets, inverse_kept, targets_in[kept])
    has_negative = np.zeros(len(ids), dtype=bool)
    has_negative[inverse[kept[targets_in[kept] == 0]]] = True
    mixed = np.flatnonzero(has_negative & (targets == 1))
    owner = (
        inverse[np.asarray(part_rows, dtype=np.int64)] if len(part_rows) else np.zeros(0, np.int64)
    )
    order = np.argsort(owner, kind="stable")
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(ids)), out=offsets[1:])
    return LabelRows(ids, targets, offsets, order, mixed)


class LabelTableDataset(Dataset):
    """The outline of a dataset read from one label table, its images looked up by id when opened
    (rsna-pneumonia, siim-pneumothorax).

    A subclass calls `__init__` (checks the root folder and the split), finds its files with
    `_given`, `_find_label_file` and `_find_images_root`, sets `_ids` (every id of the label table,
    a sorted numpy array) and `_rows` (the positions in `_ids` of the selected images), and
    implements `annotation`, `_resolve(id)` (the image's path, or ImageReadError) and
    `_expected_path(id)` (where the image should be, for problems). `__getitem__` decodes the
    image found by `_resolve` (the regions fitted to it, as every dataset's) and adds the meta of
    a DICOM's header (view, age, sex, ...) when the sample has no view yet.
    """

    _ids: np.ndarray
    _rows: np.ndarray

    def __init__(
        self, root: str | os.PathLike, split: str, splits: Sequence[str], layout: str
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(
                f"{self.name}: root {self.root} is not a folder. Expected layout:\n{layout}"
            )
        if split not in splits:
            raise ConfigError(
                f"{self.name}: split must be one of {', '.join(splits)}; got {split!r}"
            )
        self.split = split
        self.problems: list[Problem] = []

    # -- files ------------------------------------------------------------------------------------
    def _given(self, value: str | os.PathLike | None) -> Path | None:
        """A user-given path: as given when it exists, else relative to the dataset root."""
        if value is None or str(value) == "":
            return None
        path = Path(value).expanduser()
        if not path.exists() and not path.is_absolute() and (self.root / path).exists():
            return self.root / path
        return path

    def _find_label_file(
        self, label_file: str | os.PathLike | None, names: Sequence[str], layout: str
    ) -> Path:
        """`label_file` (see `_given`), else the first of `names` in root or a subfolder of it."""
        path = self._given(label_file) or find_file(self.root, names)
        if path is None or not path.is_file():
            what = f"label_file {path}" if label_file else f"a label file ({', '.join(names)})"
            raise DataError(
                f"{self.name}: {what} not found in {self.root}. Expected layout:\n{layout}"
            )
        return path

    def _find_images_root(self, images_dir: str | os.PathLike | None) -> Path:
        """`images_dir` (see `_given`), which must be a folder, else the root."""
        folder = self._given(images_dir) or self.root
        if images_dir is not None and not folder.is_dir():
            raise DataError(f"{self.name}: images_dir {folder} is not a folder")
        return folder

    # -- samples ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        return self._ids[self._rows].tolist()

    def __getitem__(self, index: int) -> Sample:
        sample = super().__getitem__(index)
        if "view" not in sample.meta and str(sample.meta["path"]).lower().endswith(".dcm"):
            try:
                header = dicom_header(sample.meta["path"]).meta()
            except ImageReadError:  # the pixels were read: header meta is a bonus
                header = {}
            for key, value in header.items():
                sample.meta.setdefault(key, value)
        return sample

    def load_image(self, sample: Sample) -> np.ndarray:
        """Find the sample's image file (`_resolve`), record its path and decode it."""
        path = self._resolve(sample.id)
        sample.meta["path"] = path
        return read_image(path, dataset=self.name)

    def _resolve(self, image_id: str) -> str:
        raise NotImplementedError

    def _expected_path(self, image_id: str) -> str:
        raise NotImplementedError

    def _check_images(self) -> None:
        """Report every selected image whose file is missing (the `check_images` option)."""
        for image_id in self.ids():
            try:
                self._resolve(image_id)
            except ImageReadError:
                self.problems.append(
                    Problem(self._expected_path(image_id), "image file missing", sample=image_id)
                )
