"""Reading what users download: label files (plain, .gz or zipped), split lists, image trees and
DICOM headers.

Every dataset plugin needs the same few things before it can read a single label: open a CSV that
may come compressed, read the list of ids that reproduces a published split, find an image by its
name somewhere below a folder the user points at, and read a DICOM's size and view without its
pixels. They live here so that each plugin reads these files the same way and reports the same
problems. Nothing here imports pydicom until a DICOM header is read.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import DataError, ImageReadError

if TYPE_CHECKING:  # the dataset module imports the region types of this package
    from ..dataset import Problem

# Image file suffixes, most preferred first: when one name exists with several suffixes the DICOM
# wins (full bit depth), then PNG (lossless), then JPEG.
IMAGE_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")

# Header names (compared lowercased, spaces and dashes as `_`) of columns that hold an image id
# in split files found in the wild, most specific first: Kaggle `image_id`/`ImageId`, NIH `Image
# Index`, SIIM `SOPInstanceUID`, and columns holding a file name or path (the id is its stem).
ID_COLUMNS: tuple[str, ...] = (
    "image_id",
    "imageid",
    "id",
    "image_index",
    "image",
    "sopinstanceuid",
    "file_name",
    "filename",
    "file",
    "filepath",  # MAVL's covid_rural test.csv: a one-column list under this header
    "image_path",
    "img_path",
    "path",
)

# Archive members that can hold a label file or a split list.
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".json")


def _column_key(name: str) -> str:
    return name.strip().strip('"').strip().lower().replace(" ", "_").replace("-", "_")


# -- names ------------------------------------------------------------------------------------
def split_image_name(name: str) -> tuple[str, str | None]:
    """(stem, suffix) of an image file name; the suffix (lowercased) is None for other names.

    Only the known image suffixes are removed: DICOM UIDs contain dots (`1.2.276.0.7230010...`),
    so `Path.stem` would cut off a UID's last component.
    """
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, None


def id_from_value(value: str) -> str:
    """An image id from a listed value that may be a bare id, a file name or a path.

    Surrounding white space and quotes go, then any folder part (`/` or `\\`), then a known image
    suffix: `"/data/train/1.2.840.10008.5.dcm"` -> `1.2.840.10008.5`.
    """
    value = value.strip().strip('"').strip()
    if "/" in value or "\\" in value:
        value = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return split_image_name(value)[0]


# -- text files -------------------------------------------------------------------------------
def _zip_member(archive, path: Path) -> str:  # noqa: ANN001 - a zipfile.ZipFile
    """The member of a zip to read: the only text file, or the one named like the archive."""
    members = [
        m
        for m in archive.namelist()
        if not m.endswith("/")
        and not m.startswith("__MACOSX")
        and not m.rsplit("/", 1)[-1].startswith(".")
    ]
    own = path.name[: -len(".zip")] if path.name.lower().endswith(".zip") else path.name
    named = [m for m in members if m.rsplit("/", 1)[-1] == own]
    if len(named) == 1:
        return named[0]
    texts = [m for m in members if m.lower().endswith(_TEXT_SUFFIXES)]
    if len(texts) == 1:
        return texts[0]
    if not texts:
        raise DataError(
            f"{path}: the zip archive holds no .csv/.txt/.json file "
            f"(members: {', '.join(members[:5]) or 'none'}); unzip it and give the file itself"
        )
    raise DataError(
        f"{path}: the zip archive holds several text files ({', '.join(texts[:5])}); unzip it "
        "and give the one to read"
    )


@contextmanager
def open_text(path: str | os.PathLike) -> Iterator[tuple[TextIO, str]]:
    """Open a text file (CSV, list, JSON) that may be plain, gzip-compressed or inside a zip.

    Yields the text stream (UTF-8, a byte-order mark dropped, newlines untranslated as the csv
    module wants) and the name to use in problems: the path, or `archive.zip!member.csv`. A zip
    must hold one text file, or one named like the archive (`labels.csv.zip` -> `labels.csv`).
    Errors opening the file, and decoding or decompression errors while it is read inside the
    `with` block, become a DataError naming the file.
    """
    import gzip
    import zipfile

    path = Path(path)
    name = path.name.lower()
    archive = None
    try:
        if name.endswith(".gz"):
            stream: TextIO = gzip.open(path, "rt", encoding="utf-8-sig", newline="")
            where = str(path)
        elif name.endswith(".zip"):
            archive = zipfile.ZipFile(path)
            member = _zip_member(archive, path)
            stream = io.TextIOWrapper(archive.open(member), encoding="utf-8-sig", newline="")
            where = f"{path}!{member}"
        else:
            stream = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
            where = str(path)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        if archive is not None:
            archive.close()
        raise DataError(
            f"cannot open {path}: {exc}. Check the path, or download it again."
        ) from exc
    except DataError:
        if archive is not None:
            archive.close()
        raise
    try:
        yield stream, where
    except (UnicodeDecodeError, EOFError, OSError, zipfile.BadZipFile, csv.Error) as exc:
        raise DataError(
            f"cannot read {where}: {type(exc).__name__}: {exc}. Is it the file as downloaded "
            "(UTF-8 text, not truncated)?"
        ) from exc
    finally:
        stream.close()
        if archive is not None:
            archive.close()


def find_file(
    root: str | os.PathLike, names: Sequence[str], *, max_subdirs: int = 50
) -> Path | None:
    """The first of `names` found in `root`, else in one of root's immediate subfolders (sorted).

    Subfolders are searched only when there are at most `max_subdirs` of them (0: never): a folder
    with thousands of subfolders is an image tree, not a download folder.
    """
    root = Path(root)
    for name in names:
        if (root / name).is_file():
            return root / name
    if max_subdirs <= 0:
        return None
    try:
        with os.scandir(root) as entries:
            subdirs = sorted(e.path for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return None
    if len(subdirs) > max_subdirs:
        return None
    for sub in subdirs:
        for name in names:
            if (Path(sub) / name).is_file():
                return Path(sub) / name
    return None


# -- split files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdList:
    """The ids a split file lists, in file order, each with the line it is on.

    Iterating yields `(id, line)` pairs of first occurrences. `repeats` are later lines that list
    an id again, `empty_lines` rows whose id cell is empty, and `paths` the value of a path column
    per id (when one was asked for and present). `source` names the file in problems; `header`
    holds the table's column names (normalized; empty for a list or a table without a header).
    """

    source: str
    entries: tuple[tuple[str, int], ...]
    repeats: tuple[tuple[str, int], ...] = ()
    empty_lines: tuple[int, ...] = ()
    paths: Mapping[str, str] = field(default_factory=dict)
    header: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [image_id for image_id, _ in self.entries]

    def select(
        self,
        known: Collection[str],
        missing: Callable[[str], str] | None = None,
        *,
        rows_per_id: Collection[str] = (),
    ) -> tuple[list[str], list[Problem]]:
        """The listed ids that are in `known` (file order) and the problems of the list.

        Problems, in line order: an id not in `known` (message `missing(id)`; skipped), an id
        listed again (kept once; not a problem when the header has one of the `rows_per_id`
        columns: a split in a label format, e.g. SIIM's one row per RLE), a row without an id.
        """
        from ..dataset import Problem

        missing = missing or (lambda image_id: f"id {image_id!r} is not in the dataset; skipped")
        keep: list[str] = []
        found: list[tuple[int, Problem]] = []
        for image_id, line in self.entries:
            if image_id in known:
                keep.append(image_id)
            else:
                found.append(
                    (line, Problem(self.source, missing(image_id), line=line, sample=image_id))
                )
        first = dict(self.entries)
        label_format = any(_column_key(c) in self.header for c in rows_per_id)
        for image_id, line in () if label_format else self.repeats:
            message = (
                f"id {image_id!r} is listed again (first on line {first[image_id]}); kept once"
            )
            found.append((line, Problem(self.source, message, line=line, sample=image_id)))
        for line in self.empty_lines:
            found.append(
                (line, Problem(self.source, "no image id in this row; skipped", line=line))
            )
        found.sort(key=lambda item: item[0])
        return keep, [problem for _, problem in found]


def read_id_list(
    path: str | os.PathLike,
    normalize: Callable[[str], str] = id_from_value,
    *,
    id_columns: Sequence[str] = ID_COLUMNS,
    path_columns: Sequence[str] = (),
) -> IdList:
    """Read the ids of a published split: a CSV/TSV with an id column, or a list of one per line.

    The file may be plain, .gz or zipped. Blank lines and lines starting with `#` are skipped. The
    first line decides the form: with a comma (or a tab) it is a table, else a list. The first row
    is a header when one of its cells names an id or path column, or, in a table, when none of its
    cells holds a digit (ids do, header names do not). The id column is the first of `id_columns`
    (compared lowercased, spaces as `_`) in the header, else the first column. Each value is
    passed through `normalize` (default: folder and image suffix removed, see `id_from_value`).
    With `path_columns` (e.g. MedKLIP's `img_path`) the value of the first such column is kept per
    id in `paths`. Line numbers are physical lines (1-based). Raises DataError naming the file
    when it is missing or lists no id.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"split_file not found: {path}. Give a CSV with an image id column (e.g. image_id) "
            "or a text file with one image id (or file name) per line."
        )
    with open_text(path) as (stream, where):
        lines = stream.read().splitlines()
    numbered = [
        (number, line)
        for number, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise DataError(
            f"split_file {where} lists no image id (it is empty or only has comments); give one "
            "id per line, or a CSV with an id column"
        )
    first = numbered[0][1]
    delimiter = "," if "," in first else ("\t" if "\t" in first else None)
    if delimiter is None:
        rows = [(number, [line]) for number, line in numbered]
    else:
        rows = [
            (number, next(csv.reader([line], delimiter=delimiter), [])) for number, line in numbered
        ]
    header = [_column_key(cell) for cell in rows[0][1]]
    wanted_ids = [_column_key(c) for c in id_columns]
    wanted_paths = [_column_key(c) for c in path_columns]
    id_col = next((header.index(c) for c in wanted_ids if c in header), None)
    path_col = next((header.index(c) for c in wanted_paths if c in header), None)
    # An unnamed header is only guessed in a table (ids hold digits, header names do not): a list
    # of ids without digits must not lose its first id.
    has_header = (
        id_col is not None
        or path_col is not None
        or (delimiter is not None and not any(ch.isdigit() for cell in rows[0][1] for ch in cell))
    )
    if has_header:
        rows = rows[1:]
    if id_col is None:
        id_col = 0
    entries: dict[str, int] = {}
    repeats: list[tuple[str, int]] = []
    empty: list[int] = []
    paths: dict[str, str] = {}
    for number, cells in rows:
        value = cells[id_col].strip().strip('"').strip() if id_col < len(cells) else ""
        image_id = normalize(value) if value else ""
        if not image_id:
            empty.append(number)
            continue
        if image_id in entries:
            repeats.append((image_id, number))
            continue
        entries[image_id] = number
        if path_col is not None and path_col < len(cells) and cells[path_col].strip():
            paths[image_id] = cells[path_col].strip().strip('"').strip()
    if not entries:
        why = "only a header" if not rows else "every id cell is empty"
        raise DataError(
            f"split_file {where} lists no image id ({why}); give one id per line, or a CSV "
            "with an id column"
        )
    return IdList(
        where, tuple(entries.items()), tuple(repeats), tuple(empty), paths,
        tuple(header) if has_header else (),
    )


# -- image trees ------------------------------------------------------------------------------
class ImageIndex:
    """Every image file below a folder, by file name without its image suffix; built on first use.

    One recursive `os.scandir` pass, in sorted order, the first time a path is asked for (a
    dataset parsed only for its labels never walks its image folders). Symbolic links to folders
    are followed (users link their image folders into place), each real folder once; hidden
    entries (`.git`, macOS `._*` files) are skipped. Only files with one of `suffixes` count.

    When a name exists several times the one kept is, in order: in the earliest of `preferred`
    (folders below `root` where the layout keeps its images; walked first), with the earliest
    suffix of `suffixes` (DICOM > PNG > JPEG by default), the smallest path. Every name found more
    than once is in `duplicates` (name -> all its paths, the kept one first).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
        preferred: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.root = Path(root)
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.preferred = tuple(Path(p) for p in preferred)
        self.duplicates: dict[str, tuple[str, ...]] = {}
        self._paths: dict[str, str] | None = None

    @property
    def built(self) -> bool:
        """Whether the folders have been walked (for tests and for cheap `expected path` guesses)."""
        return self._paths is not None

    def paths(self) -> Mapping[str, str]:
        """Name (without suffix) -> path of every image found, walking the folders if needed."""
        if self._paths is None:
            self._paths = self._build()
        return self._paths

    def get(self, name: str) -> str | None:
        """The path of the image called `name` (without suffix), or None."""
        return self.paths().get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.paths()

    def _stem(self, name: str) -> tuple[str, int] | None:
        low = name.lower()
        for rank, suffix in enumerate(self.suffixes):
            if low.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)], rank
        return None

    def _build(self) -> dict[str, str]:
        found: dict[str, list[tuple[int, int, str]]] = {}
        seen: set[tuple[int, int]] = set()
        tops = [*((p, k) for k, p in enumerate(self.preferred)), (self.root, len(self.preferred))]
        for top, folder_rank in tops:
            try:
                st = os.stat(top)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            stack = [str(top)]
            while stack:
                folder = stack.pop()
                try:
                    with os.scandir(folder) as it:
                        entries = sorted(it, key=lambda e: e.name)
                except OSError:
                    continue
                subfolders = []
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir():
                            st = entry.stat()
                            key = (st.st_dev, st.st_ino)
                            if key not in seen:
                                seen.add(key)
                                subfolders.append(entry.path)
                            continue
                        if not entry.is_file():
                            continue
                    except OSError:
                        continue
                    named = self._stem(entry.name)
                    if named is not None:
                        found.setdefault(named[0], []).append((folder_rank, named[1], entry.path))
                stack.extend(reversed(subfolders))  # depth first, in sorted order
        index: dict[str, str] = {}
        duplicates: dict[str, tuple[str, ...]] = {}
        for name, candidates in found.items():
            if len(candidates) > 1:
                candidates.sort()
                duplicates[name] = tuple(path for _, _, path in candidates)
            index[name] = candidates[0][2]
        self.duplicates = duplicates
        return index


# -- DICOM headers ----------------------------------------------------------------------------
_HEADER_TAGS = [
    "Rows",
    "Columns",
    "ViewPosition",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "PixelSpacing",
    "Modality",
    "PhotometricInterpretation",
]


@dataclass(frozen=True)
class DicomHeader:
    """The header fields of a DICOM that datasets use, read without the pixel data.

    Fields the file does not have are None. `age` is in years (`PatientAge` "058Y"; other units
    are left out), `pixel_spacing` the row spacing in mm.
    """

    path: str
    rows: int | None = None
    columns: int | None = None
    view: str | None = None
    patient_id: str | None = None
    sex: str | None = None
    age: int | None = None
    pixel_spacing: float | None = None
    modality: str | None = None
    photometric: str | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) from Rows and Columns, or None when either is missing."""
        if self.rows is None or self.columns is None:
            return None
        return (self.rows, self.columns)

    def meta(self) -> dict[str, object]:
        """The fields a Sample's `meta` carries (`view`, `age`, `sex`, `patient_id`,
        `pixel_spacing`), those present only."""
        fields = {
            "view": self.view,
            "age": self.age,
            "sex": self.sex,
            "patient_id": self.patient_id,
            "pixel_spacing": self.pixel_spacing,
        }
        return {k: v for k, v in fields.items() if v is not None}


def _text(ds, keyword: str) -> str | None:  # noqa: ANN001 - a pydicom Dataset
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


def dicom_header(path: str | os.PathLike) -> DicomHeader:
    """Read the size (Rows, Columns) and a few common tags of a DICOM, stopping before the pixels.

    Files without the DICM preamble are read too (`force`). Raises ImageReadError naming the file
    when it cannot be read as DICOM.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(
            os.fspath(path), stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS
        )
    except Exception as exc:  # pydicom raises many kinds on a broken file; all mean "unreadable"
        raise ImageReadError(
            f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc}); is it a DICOM "
            "file, downloaded completely?"
        ) from exc

    def number(keyword: str) -> int | None:
        try:
            value = ds.get(keyword)
            return int(value) if value is not None and value != "" else None
        except (TypeError, ValueError):
            return None

    age_text = (_text(ds, "PatientAge") or "").rstrip("Yy")
    spacing = ds.get("PixelSpacing")
    try:
        row_spacing = float(spacing[0]) if spacing else None
    except (TypeError, ValueError, IndexError):
        row_spacing = None
    return DicomHeader(
        path=os.fspath(path),
        rows=number("Rows"),
        columns=number("Columns"),
        view=_text(ds, "ViewPosition"),
        patient_id=_text(ds, "PatientID"),
        sex=_text(ds, "PatientSex"),
        age=int(age_text) if age_text.isdigit() else None,
        pixel_spacing=row_spacing,
        modality=_text(ds, "Modality"),
        photometric=_text(ds, "PhotometricInterpretation"),
    )
