"""Reading what users download: label CSVs (plain, .gz or inside a .zip), split files, and an index
of image files by file stem for nested folder trees.

The SIIM-ACR plugin carries a module of the same shape: plugins may not import each other.
# CORE-REQUEST: a shared `open_label_file`, `read_split_file` and `StemIndex` in xbench_core would
# let every dataset plugin drop its own copy.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zipfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from xbench_core import DataError, Problem

# Preference when one stem exists with several suffixes: the DICOM first (full bit depth).
IMAGE_SUFFIXES: dict[str, int] = {".dcm": 0, ".dicom": 0, ".png": 1, ".jpg": 2, ".jpeg": 2}


def split_image_name(name: str) -> tuple[str, str | None]:
    """(stem, suffix) of an image file name; suffix None when it is not an image name.

    Only known image suffixes are removed: DICOM UIDs contain dots (`1.2.276...850819`), so
    `Path.stem` would cut a UID's last component.
    """
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, None


def id_from_value(value: str) -> str:
    """An image id from a split-file value that may be a bare id, a file name or a path."""
    value = value.strip().strip('"').strip()
    if "/" in value or "\\" in value:
        value = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return split_image_name(value)[0]


@contextmanager
def open_text(path: Path) -> Iterator[tuple[TextIO, str]]:
    """Open a text/CSV file that may be plain, gzip-compressed or the single CSV inside a zip.

    Yields the stream and the name to use in problems (`archive.zip!member.csv` for a zip).
    """
    name = path.name.lower()
    archive = None
    try:
        if name.endswith(".gz"):
            stream: TextIO = gzip.open(path, "rt", encoding="utf-8-sig", newline="")
            where = str(path)
        elif name.endswith(".zip"):
            archive = zipfile.ZipFile(path)
            members = [
                m
                for m in archive.namelist()
                if m.lower().endswith((".csv", ".txt")) and not m.startswith("__MACOSX")
            ]
            if not members:
                raise DataError(
                    f"{path}: the zip archive holds no .csv file; unzip it and give the CSV"
                )
            stream = io.TextIOWrapper(archive.open(members[0]), encoding="utf-8-sig", newline="")
            where = f"{path}!{members[0]}"
        else:
            stream = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
            where = str(path)
    except (OSError, zipfile.BadZipFile) as exc:
        if archive is not None:
            archive.close()
        raise DataError(f"cannot open {path}: {exc}. Re-download the file.") from exc
    try:
        yield stream, where
    except (UnicodeDecodeError, EOFError, OSError, zipfile.BadZipFile, csv.Error) as exc:
        raise DataError(
            f"cannot read {where}: {type(exc).__name__}: {exc}. Is it the CSV as downloaded?"
        ) from exc
    finally:
        stream.close()
        if archive is not None:
            archive.close()


def find_file(root: Path, names: tuple[str, ...], max_subdirs: int = 50) -> Path | None:
    """The first of `names` in `root`, else in one of root's immediate subfolders (sorted).

    Subfolders are searched only when there are few of them: a folder with thousands of
    subfolders is an image tree, not a download folder.
    """
    for name in names:
        if (root / name).is_file():
            return root / name
    if max_subdirs <= 0:
        return None
    try:
        subdirs = sorted(
            e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
        )
    except OSError:
        return None
    if len(subdirs) > max_subdirs:
        return None
    for sub in subdirs:
        for name in names:
            if (Path(sub) / name).is_file():
                return Path(sub) / name
    return None


@dataclass
class SplitList:
    """The ids of a split file, in file order, with what was wrong in it."""

    ids: list[str]
    path_stems: dict[str, str] = field(default_factory=dict)  # id -> stem of its path column
    problems: list[Problem] = field(default_factory=list)


def read_split_file(
    path: Path,
    known: Collection[str],
    *,
    id_columns: tuple[str, ...],
    path_columns: tuple[str, ...] = (),
) -> SplitList:
    """Read the ids of a published split: a CSV with an id column, or a text list (one per line).

    The id column is the first whose header (case-insensitive) is in `id_columns`, else the first
    column. A CSV without a header is recognized by its first value being a known id, or by a first
    value with digits in it (header names have none). Values may be paths: the file name without
    its image suffix is the id. Ids not in `known`, and repeated ids, are problems and are skipped.
    `path_columns` (e.g. MedKLIP's `img_path`) give each id the stem of its image file.
    """
    if not path.is_file():
        raise DataError(
            f"split_file not found: {path}. Give a CSV with an id column ({', '.join(id_columns)}) "
            "or a text file with one image id per line."
        )
    with open_text(path) as (stream, where):
        lines = stream.read().splitlines()
    numbered = [
        (n, line)
        for n, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise DataError(f"split_file {where} is empty: it should list image ids")
    first = numbered[0][1]
    delimiter = "," if "," in first else ("\t" if "\t" in first else None)
    problems: list[Problem] = []
    records: list[tuple[int, list[str]]]
    if delimiter is None:
        records = [(n, [line]) for n, line in numbered]
    else:
        records = [(n, next(csv.reader([line], delimiter=delimiter))) for n, line in numbered]
    header = [h.strip().strip('"').lower() for h in records[0][1]]
    id_col = next((i for i, h in enumerate(header) if h in id_columns), None)
    has_header = id_col is not None
    if not has_header:
        value = records[0][1][0] if records[0][1] else ""
        has_header = id_from_value(value) not in known and not any(c.isdigit() for c in value)
        id_col = 0
    path_col = None
    if has_header:
        path_col = next((i for i, h in enumerate(header) if h in path_columns), None)
        records = records[1:]
    ids: list[str] = []
    seen: set[str] = set()
    stems: dict[str, str] = {}
    for line, fields in records:
        if len(fields) <= id_col or not fields[id_col].strip():
            problems.append(Problem(where, "no image id in this row; row skipped", line=line))
            continue
        image_id = id_from_value(fields[id_col])
        if image_id in seen:
            problems.append(
                Problem(where, "id listed twice; kept once", line=line, sample=image_id)
            )
            continue
        if image_id not in known:
            problems.append(
                Problem(where, "id not in the label file; skipped", line=line, sample=image_id)
            )
            continue
        seen.add(image_id)
        ids.append(image_id)
        if path_col is not None and len(fields) > path_col and fields[path_col].strip():
            stems[image_id] = id_from_value(fields[path_col])
    return SplitList(ids, stems, problems)


class StemIndex:
    """Every image file below a folder, by file name without its image suffix; built on first use.

    Walks with `os.scandir` once. Symbolic links to folders are followed (users link their image
    folders into place), each real folder once. Hidden entries are skipped. When one stem exists
    several times, a DICOM wins over PNG over JPEG, then the lexicographically first path.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._paths: dict[str, str] | None = None
        self.duplicates = 0

    @property
    def built(self) -> bool:
        return self._paths is not None

    def paths(self) -> Mapping[str, str]:
        if self._paths is None:
            self._paths = self._build()
        return self._paths

    def get(self, stem: str) -> str | None:
        return self.paths().get(stem)

    def _build(self) -> dict[str, str]:
        best: dict[str, tuple[int, str]] = {}
        stack = [str(self.root)]
        seen: set[tuple[int, int]] = set()
        try:
            st = os.stat(self.root)
            seen.add((st.st_dev, st.st_ino))
        except OSError:
            return {}
        while stack:
            folder = stack.pop()
            try:
                entries = os.scandir(folder)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir():
                            st = entry.stat()
                            key = (st.st_dev, st.st_ino)
                            if key not in seen:
                                seen.add(key)
                                stack.append(entry.path)
                            continue
                        if not entry.is_file():
                            continue
                    except OSError:
                        continue
                    stem, suffix = split_image_name(entry.name)
                    if suffix is None:
                        continue
                    rank = (IMAGE_SUFFIXES[suffix], entry.path)
                    old = best.get(stem)
                    if old is not None:
                        self.duplicates += 1
                    if old is None or rank < old:
                        best[stem] = rank
        return {stem: path for stem, (_, path) in best.items()}


def dicom_header_meta(path: str) -> dict[str, object]:
    """View, age, sex and UIDs from a DICOM header (pixel data not read); {} when unreadable."""
    import pydicom

    tags = ["ViewPosition", "PatientAge", "PatientSex", "PatientID", "PixelSpacing"]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except Exception:  # the pixel read reports a broken file; header meta is a bonus
        return {}
    meta: dict[str, object] = {}
    view = str(ds.get("ViewPosition", "") or "").strip()
    if view:
        meta["view"] = view
    age = str(ds.get("PatientAge", "") or "").strip().rstrip("Yy")
    if age.isdigit():
        meta["age"] = int(age)
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        meta["patient_id"] = patient
    sex = str(ds.get("PatientSex", "") or "").strip()
    if sex:
        meta["sex"] = sex
    spacing = ds.get("PixelSpacing")
    if spacing:
        try:
            meta["pixel_spacing"] = float(spacing[0])
        except (TypeError, ValueError, IndexError):
            pass
    return meta
