"""The VinDr-CXR dataset (PhysioNet v1.0.0 release or Kaggle VinBigData `train.csv`).

Annotations are parsed once with the csv module (the gzipped 67,914-row Kaggle file in about 0.5 s
of CPU); a sample's labels and regions are assembled on demand from the per-image rows. Readers are merged by
the `readers` option (see `readers.py` and the README): a finding is positive when at least one
reader (`union`) or a majority of the image's readers (`majority`: 2 of 3) marked it, by a box or, in
the PhysioNet release, in `image_labels_*.csv`; every other finding of the label vocabulary is a
negative; `no_finding` is positive exactly when no other finding is.

Image sizes are not in the label files. They come from a size table when one is present (the
`<split>_meta.csv` with `image_id, dim0, dim1` that resized Kaggle copies ship, or `size_file`),
otherwise from the DICOM header (Rows, Columns; `stop_before_pixels`, no pixel data) read lazily in
`annotation(i)` for images that have boxes, when the file exists and `read_headers` is on. Without
a size the regions' `size` is (0, 0) and `meta["size"]` is None; `fit_regions` then rebuilds the
regions at the decoded image's size, so the engine always rasterizes at the real size. Counts
(`xbench inspect --skip-images`) need no size.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import DataError, Dataset, ImageReadError, Problem, Region, Sample
from xbench_core.io import dicom_header, open_text
from xbench_core.io.layout import label_name_problem, select_listed

from .labels import (
    ALL_FINDINGS,
    GLOBAL_FINDINGS,
    KAGGLE_CLASSES,
    KAGGLE_FINDINGS,
    LOCAL_FINDINGS,
    NO_FINDING,
    finding_of,
    is_local,
)
from .readers import majority_threshold, vote_boxes

LAYOUT = """\
  PhysioNet (vindr-cxr/1.0.0, credentialed access):
    <root>/train/<image_id>.dicom                    15,000 images
    <root>/test/<image_id>.dicom                      3,000 images
    <root>/annotations/annotations_{train,test}.csv   image_id, rad_id, class_name, x_min, y_min, x_max, y_max
    <root>/annotations/image_labels_{train,test}.csv  image_id, rad_id, 28 label columns (optional)
  Kaggle (vinbigdata-chest-xray-abnormalities-detection; labels for train only):
    <root>/train.csv        image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max
    <root>/train/<image_id>.dicom
  A label file elsewhere (a .csv or .csv.gz in either format) can be given with annotation_file."""

# CORE-REQUEST: Region.size cannot say "unknown"; (0, 0) stands for it until fit_regions rebuilds
# the regions at the decoded size. An Optional size (rasterize raising a clear error) would be cleaner.
_UNKNOWN_SIZE = (0, 0)
CONSENSUS = ""  # the reader of a file without rad_id (PhysioNet test: 5-reader consensus)


class _Image:
    """The rows of one image: who read it, what each reader marked, and the boxes."""

    __slots__ = ("readers", "marks", "boxes")

    def __init__(self) -> None:
        self.readers: set[str] = set()
        self.marks: dict[str, set[str]] = {}
        # finding -> (reader, x1, y1, x2, y2, line in the label file)
        self.boxes: dict[str, list[tuple[str, float, float, float, float, int]]] = {}


def _column(header: list[str], *names: str) -> int | None:
    low = [h.strip().lower() for h in header]
    for name in names:
        if name in low:
            return low.index(name)
    return None


class VinDrCXR(Dataset):
    """VinDr-CXR chest radiographs with radiologists' boxes for 22 local findings (14 on Kaggle)."""

    def __init__(
        self,
        root: str,
        split: str = "test",
        split_file: str | None = None,
        readers: str = "union",
        annotation_file: str | None = None,
        image_label_file: str | None = None,
        image_dir: str | None = None,
        size_file: str | None = None,
        read_headers: bool = True,
    ) -> None:
        if readers not in ("union", "majority"):
            raise DataError(f"vindr-cxr.readers must be 'union' or 'majority', got {readers!r}")
        if split not in ("train", "test"):
            raise DataError(f"vindr-cxr.split must be 'train' or 'test', got {split!r}")
        self.name = "vindr-cxr"
        self.split = split
        self.readers = readers
        self.read_headers = bool(read_headers)
        self.problems: list[Problem] = []
        self.root = Path(root).expanduser()
        base = self._base(self.root)
        ann, self.layout = self._annotation_file(base, annotation_file)
        labels_path = self._image_label_file(base, ann, image_label_file)
        self.image_dir = Path(image_dir).expanduser() if image_dir else base / split
        self.annotation_path = ann
        self.image_label_path = labels_path

        images: dict[str, _Image] = {}
        seen = self._read_annotations(ann, images)
        if labels_path is not None:
            seen |= self._read_image_labels(labels_path, images)
        vocabulary = list(KAGGLE_FINDINGS if self.layout == "kaggle" else LOCAL_FINDINGS)
        if labels_path is not None:
            vocabulary += GLOBAL_FINDINGS
        vocabulary += [
            f for f in ALL_FINDINGS if f in seen and f not in vocabulary and f != NO_FINDING
        ]
        self.findings = (*vocabulary, NO_FINDING)
        self._vocabulary = tuple(vocabulary)

        ids = sorted(images)
        if split_file:
            ids = select_listed(
                split_file,
                images,
                self.problems,
                lambda image_id: (
                    f"image id {image_id!r} is not in {self.annotation_path.name} "
                    f"(split {self.split!r}); left out"
                ),
            )
        self._ids = ids
        self._images = [images[i] for i in ids]
        self._position = {image_id: k for k, image_id in enumerate(ids)}
        self._sizes = self._read_size_table(base, size_file)
        self._header_sizes: dict[str, tuple[int, int] | None] = {}
        self._bounds_checked: set[str] = set()
        for image_id, entry in zip(self._ids, self._images):
            size = self._sizes.get(image_id)
            if size is not None and entry.boxes:
                self._check_bounds(image_id, entry, size)

    # ------------------------------------------------------------------ layout
    def _base(self, root: Path) -> Path:
        if not root.is_dir():
            raise DataError(
                f"vindr-cxr root not found or not a folder: {root}\nExpected layout:\n{LAYOUT}"
            )
        nested = root / "1.0.0"
        return nested if nested.is_dir() and not (root / "annotations").is_dir() else root

    def _annotation_file(self, base: Path, given: str | None) -> tuple[Path, str]:
        if given:
            path = Path(given).expanduser()
            if not path.is_absolute() and (base / path).exists():
                path = base / path
            if not path.is_file():
                raise DataError(
                    f"vindr-cxr.annotation_file not found: {path}\nExpected layout:\n{LAYOUT}"
                )
            return path, self._format_of(path)
        physionet = base / "annotations" / f"annotations_{self.split}.csv"
        if physionet.is_file():
            return physionet, self._format_of(physionet)
        for name in ("train.csv", "train.csv.gz"):
            kaggle = base / name
            if kaggle.is_file():
                if self.split != "train":
                    raise DataError(
                        f"{kaggle} is the Kaggle VinBigData layout, whose test images have no "
                        "public labels: use split=train, or the PhysioNet release for the "
                        "labelled 3,000-image test set."
                    )
                return kaggle, self._format_of(kaggle)
        raise DataError(
            f"no VinDr-CXR label file for split {self.split!r} under {base} (looked for "
            f"annotations/annotations_{self.split}.csv and train.csv); pass annotation_file to "
            f"point at it.\nExpected layout:\n{LAYOUT}"
        )

    def _format_of(self, path: Path) -> str:
        with open_text(path) as (fh, _):
            header = next(csv.reader(fh), [])
        names = {h.strip().lower() for h in header}
        missing = {"image_id", "class_name", "x_min", "y_min", "x_max", "y_max"} - names
        if missing:
            raise DataError(
                f"{path}: not a VinDr-CXR annotation file: header {header!r} lacks "
                f"{', '.join(sorted(missing))}.\nExpected layout:\n{LAYOUT}"
            )
        return "kaggle" if "class_id" in names else "physionet"

    def _image_label_file(self, base: Path, ann: Path, given: str | None) -> Path | None:
        if given:
            path = Path(given).expanduser()
            if not path.is_absolute() and (base / path).exists():
                path = base / path
            if not path.is_file():
                raise DataError(f"vindr-cxr.image_label_file not found: {path}")
            return path
        if self.layout != "physionet":
            return None
        candidate = ann.parent / f"image_labels_{self.split}.csv"
        return candidate if candidate.is_file() else None

    # ------------------------------------------------------------------ parsing
    def _problem(
        self, path: Path, message: str, line: int | None = None, sample: str | None = None
    ) -> None:
        self.problems.append(Problem(str(path), message, line=line, sample=sample))

    def _read_annotations(self, path: Path, images: dict[str, _Image]) -> set[str]:
        """One row per box per reader; `No finding` (and global) rows have empty coordinates.

        The loop is kept tight (a label-name cache, no per-row objects but the box tuple): the
        67,914-row Kaggle file must parse in a fraction of a second.
        """
        seen: set[str] = set()
        unknown: dict[str, list[int]] = {}
        with open_text(path) as (fh, _):
            reader = csv.reader(fh)
            header = next(reader, [])
            rows = list(reader)
        low = [h.strip().lower() for h in header]  # _format_of has checked these six are there
        i_id, i_cls, ix1, iy1, ix2, iy2 = (
            low.index(c) for c in ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
        )
        i_cid = _column(header, "class_id")
        i_rad = _column(header, "rad_id")
        width = max(i for i in (i_id, i_cls, i_cid, i_rad, ix1, iy1, ix2, iy2) if i is not None) + 1
        kaggle_ids = {name: str(k) for k, name in enumerate(KAGGLE_CLASSES)}
        valid_ids = {(n, k) for n, k in kaggle_ids.items()} | {
            (n, k + ".0") for n, k in kaggle_ids.items()
        }
        names: dict[str, str | None] = {}
        problem = self._problem
        isfinite = math.isfinite
        for line, row in enumerate(rows, start=2):
            if len(row) < width:
                if any(cell.strip() for cell in row):
                    problem(
                        path,
                        f"malformed row: {len(row)} fields, expected {len(header)}; skipped",
                        line,
                    )
                continue
            image_id = row[i_id].strip()
            name = row[i_cls]
            if name in names:
                finding = names[name]
            else:
                finding = names[name] = finding_of(name)
            if not image_id:
                problem(path, "row without image_id; skipped", line)
                continue
            if why := label_name_problem(image_id):
                problem(path, f"image_id {why}; skipped", line)
                continue
            entry = images.get(image_id)
            if entry is None:
                entry = images[image_id] = _Image()
            rad = row[i_rad].strip() if i_rad is not None else CONSENSUS
            if finding is None:
                unknown.setdefault(name.strip(), []).append(line)
                entry.readers.add(rad)
                continue
            if i_cid is not None and (name, row[i_cid]) not in valid_ids and name in kaggle_ids:
                problem(
                    path,
                    f"class_id {row[i_cid].strip()!r} does not match class_name {name!r} "
                    f"(expected {kaggle_ids[name]}); the class_name is used",
                    line,
                    image_id,
                )
            a, b, c, d = row[ix1], row[iy1], row[ix2], row[iy2]
            box: tuple[float, float, float, float] | None = None
            if a or b or c or d:
                try:
                    x1, y1, x2, y2 = float(a), float(b), float(c), float(d)
                except ValueError:
                    problem(path, f"malformed box {[a, b, c, d]!r}; row skipped", line, image_id)
                    continue
                # NaN fails both comparisons; an infinite value makes the sum non-finite
                if not (x1 <= x2 and y1 <= y2 and isfinite(x1 + y1 + x2 + y2)):
                    problem(
                        path,
                        f"malformed box x_min={a} y_min={b} x_max={c} y_max={d} (needs finite "
                        "x_min <= x_max and y_min <= y_max); row skipped",
                        line,
                        image_id,
                    )
                    continue
                if x1 < 0 or y1 < 0:
                    problem(
                        path,
                        f"box ({a}, {b}, {c}, {d}) starts outside the image; clipped at 0",
                        line,
                        image_id,
                    )
                    x1, y1 = max(x1, 0.0), max(y1, 0.0)
                    x2, y2 = max(x2, x1), max(y2, y1)
                box = (x1, y1, x2, y2)
            entry.readers.add(rad)
            seen.add(finding)
            if finding == NO_FINDING:
                if box is not None:
                    problem(path, "a 'No finding' row with a box; box ignored", line, image_id)
                continue
            marks = entry.marks.get(finding)
            if marks is None:
                marks = entry.marks[finding] = set()
            marks.add(rad)
            if box is None:
                if is_local(finding):
                    problem(
                        path,
                        f"{name!r} row without a box: counted as a label, no region",
                        line,
                        image_id,
                    )
                continue
            if not is_local(finding):
                problem(
                    path,
                    f"global label {name!r} has a box; box ignored (image-level only)",
                    line,
                    image_id,
                )
                continue
            boxes = entry.boxes.get(finding)
            if boxes is None:
                boxes = entry.boxes[finding] = []
            boxes.append((rad, *box, line))
        for name, lines in unknown.items():
            problem(
                path,
                f"unknown label {name!r} on {len(lines)} row(s) (first on line {lines[0]}); "
                "not a VinDr-CXR class, rows not used",
                lines[0],
            )
        return seen

    def _read_image_labels(self, path: Path, images: dict[str, _Image]) -> set[str]:
        """PhysioNet image_labels: one row per reader (train) or per image (test), 0/1 columns."""
        seen: set[str] = set()
        with open_text(path) as (fh, _):
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            i_id = _column(header, "image_id")
            if i_id is None:
                raise DataError(
                    f"{path}: image label file without an image_id column (header {header!r})"
                )
            i_rad = _column(header, "rad_id")
            columns: list[tuple[int, str]] = []
            for k, name in enumerate(header):
                if k in (i_id, i_rad):
                    continue
                finding = finding_of(name)
                if finding is None:
                    self._problem(path, f"unknown label column {name!r}; ignored", 1)
                else:
                    columns.append((k, finding))
            for line, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    if any(cell.strip() for cell in row):
                        self._problem(
                            path,
                            f"malformed row: {len(row)} fields, expected {len(header)}; skipped",
                            line,
                        )
                    continue
                image_id = row[i_id].strip()
                marked: list[str] = []
                bad = None
                for k, finding in columns:
                    value = row[k].strip()
                    if value in ("1", "1.0"):
                        marked.append(finding)
                    elif value not in ("0", "0.0", ""):
                        bad = (header[k], value)
                        break
                if bad is not None or not image_id:
                    what = f"value {bad[1]!r} in column {bad[0]!r}" if bad else "no image_id"
                    self._problem(path, f"malformed row ({what}); skipped", line, image_id or None)
                    continue
                if why := label_name_problem(image_id):
                    self._problem(path, f"image_id {why}; skipped", line)
                    continue
                entry = images.get(image_id)
                if entry is None:
                    entry = images[image_id] = _Image()
                rad = row[i_rad].strip() if i_rad is not None else CONSENSUS
                entry.readers.add(rad)
                for finding in marked:
                    seen.add(finding)
                    if finding != NO_FINDING:
                        entry.marks.setdefault(finding, set()).add(rad)
        return seen

    def _read_size_table(self, base: Path, given: str | None) -> dict[str, tuple[int, int]]:
        """(H, W) per image from `size_file` or `<split>_meta.csv`: columns height/width,
        rows/columns, or dim0/dim1 (numpy shape order: dim0 = rows = H)."""
        path = Path(given).expanduser() if given else base / f"{self.split}_meta.csv"
        if not path.is_file():
            if given:
                raise DataError(f"vindr-cxr.size_file not found: {path}")
            return {}
        sizes: dict[str, tuple[int, int]] = {}
        with open_text(path) as (fh, _):
            reader = csv.reader(fh)
            header = next(reader, [])
            i_id = _column(header, "image_id")
            pairs = (("height", "width"), ("rows", "columns"), ("dim0", "dim1"))
            found = next(
                (
                    (_column(header, h), _column(header, w))
                    for h, w in pairs
                    if _column(header, h) is not None and _column(header, w) is not None
                ),
                None,
            )
            if i_id is None or found is None:
                raise DataError(
                    f"{path}: a size table needs image_id and height,width (or rows,columns or "
                    f"dim0,dim1) columns; header is {header!r}"
                )
            i_h, i_w = found
            for line, row in enumerate(reader, start=2):
                try:
                    h, w = int(float(row[i_h])), int(float(row[i_w]))  # type: ignore[index]
                    if h <= 0 or w <= 0:
                        raise ValueError
                except (ValueError, IndexError):
                    self._problem(path, "malformed size row; skipped", line)
                    continue
                sizes[row[i_id].strip()] = (h, w)
        return sizes

    # ------------------------------------------------------------------ sizes and bounds
    def _path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.dicom"

    def _size(self, image_id: str, entry: _Image) -> tuple[int, int] | None:
        # CORE-REQUEST: inspect_dataset copies `problems` before calling annotation(i), so boxes found
        # beyond the image here (size from the header, lazily) are not in its report; reading
        # `problems` after the loop would include them. It also cannot tell annotation(i) that no
        # size is needed (skip_images); `read_headers=False` is the way to open no file at all.
        size = self._sizes.get(image_id)
        if size is not None or not entry.boxes or not self.read_headers:
            return size
        if image_id not in self._header_sizes:
            self._header_sizes[image_id] = self._header_size(image_id)
        size = self._header_sizes[image_id]
        if size is not None and image_id not in self._bounds_checked:
            self._check_bounds(image_id, entry, size)
        return size

    def _header_size(self, image_id: str) -> tuple[int, int] | None:
        path = self._path(image_id)
        if not path.is_file():
            return None
        try:
            size = dicom_header(path).size
        except ImageReadError as exc:  # reported; the image decode will say more
            self._problem(path, f"cannot read Rows/Columns: {exc}", sample=image_id)
            return None
        if size is None:
            self._problem(path, "the DICOM header has no Rows/Columns", sample=image_id)
        return size

    def _check_bounds(self, image_id: str, entry: _Image, size: tuple[int, int]) -> None:
        self._bounds_checked.add(image_id)
        h, w = size
        for finding, rows in entry.boxes.items():
            for rad, x1, y1, x2, y2, line in rows:
                if x2 > w or y2 > h:
                    inside = x1 < w and y1 < h
                    self._problem(
                        self.annotation_path,
                        f"{finding} box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) of reader {rad or 'consensus'} "
                        f"extends beyond the {w}x{h} image; "
                        + ("clipped to the image" if inside else "entirely outside, dropped"),
                        line,
                        image_id,
                    )

    # ------------------------------------------------------------------ samples
    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """The sample ids without building samples (annotation() may read DICOM headers for the sizes)."""
        return list(self._ids)

    def _labels(self, entry: _Image) -> tuple[dict[str, int], int]:
        k = 1 if self.readers == "union" else majority_threshold(max(len(entry.readers), 1))
        labels = {f: int(len(entry.marks.get(f, ())) >= k) for f in self._vocabulary}
        labels[NO_FINDING] = int(not any(labels.values()))
        return labels, k

    def _regions(
        self, entry: _Image, labels: dict[str, int], k: int, size: tuple[int, int] | None
    ) -> tuple[dict[str, Region], list[str]]:
        regions: dict[str, Region] = {}
        without: list[str] = []
        for finding, rows in entry.boxes.items():
            if not labels.get(finding):
                continue
            if k <= 1:
                boxes = [r[1:5] for r in rows]
            else:
                per_reader: dict[str, list[tuple[float, float, float, float]]] = {}
                for r in rows:
                    per_reader.setdefault(r[0], []).append(r[1:5])
                boxes = vote_boxes(list(per_reader.values()), k)
            arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if size is not None and len(arr):
                h, w = size
                arr = arr[(arr[:, 0] < w) & (arr[:, 1] < h)]
                arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0, w)
                arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0, h)
            if len(arr):
                regions[finding] = Region(size or _UNKNOWN_SIZE, boxes=arr)
            else:
                without.append(finding)
        return regions, without

    def _sample(self, index: int, size: tuple[int, int] | None) -> Sample:
        image_id = self._ids[index]
        entry = self._images[index]
        labels, k = self._labels(entry)
        regions, without = self._regions(entry, labels, k, size)
        readers = sorted(r or "consensus" for r in entry.readers)
        meta: dict[str, Any] = {
            "path": str(self._path(image_id)),
            "size": size,
            "split": self.split,
            "layout": self.layout,
            "readers": readers,
            "reader_rule": "consensus" if entry.readers == {CONSENSUS} else self.readers,
        }
        if without:
            # majority: readers agreed on the finding but their boxes share no pixel
            meta["positive_without_region"] = without
        return Sample(self.name, image_id, None, labels=labels, regions=regions, meta=meta)

    def annotation(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"vindr-cxr has {len(self)} samples, index {index} is out of range")
        index %= len(self)
        return self._sample(index, self._size(self._ids[index], self._images[index]))

    def fit_regions(self, sample: Sample) -> Sample:
        """If the regions were built without the image's real size, rebuild them at it."""
        assert sample.image is not None  # called on a decoded sample (Dataset.__getitem__)
        size = (int(sample.image.shape[0]), int(sample.image.shape[1]))
        if sample.meta.get("size") != size:
            index = self._position[sample.id]
            if sample.meta.get("size") is not None:
                self._problem(
                    Path(sample.meta["path"]),
                    f"decoded size {size} differs from the expected "
                    f"{sample.meta['size']}; regions rebuilt at the decoded size",
                    sample=sample.id,
                )
            elif sample.id not in self._bounds_checked:
                self._check_bounds(sample.id, self._images[index], size)
            fresh = self._sample(index, size)
            sample.regions, sample.meta["size"] = fresh.regions, size
            if "positive_without_region" in fresh.meta:
                sample.meta["positive_without_region"] = fresh.meta["positive_without_region"]
        return sample
