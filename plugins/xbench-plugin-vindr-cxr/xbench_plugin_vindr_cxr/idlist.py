"""Reading a list of image ids (`split_file`) to reproduce a published split.

A `.csv` file: the column named `image_id` (or `id`, `image`, `ImageID`), else the first column; a
header row is recognized by such a name. Any other file: one id per line; blank lines and lines
starting with `#` are skipped. File names are accepted for ids: a folder part and an image
extension (.dicom, .dcm, .png, .jpg, .jpeg) are removed.
"""

from __future__ import annotations

import csv
from pathlib import Path

from xbench_core import DataError

_ID_COLUMNS = ("image_id", "imageid", "id", "image", "image_index", "file_name", "filename")
_EXTENSIONS = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")


def _clean(text: str) -> str:
    name = text.strip().replace("\\", "/").rsplit("/", 1)[-1]
    low = name.lower()
    for ext in _EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def read_id_list(path: str | Path) -> list[tuple[str, int]]:
    """The ids of a split file with their 1-based line numbers, in file order, without repeats."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split_file not found: {path}. Give a CSV with an `image_id` column or a text file "
            "with one image id per line."
        )
    out: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(fh)
            column = 0
            for line, row in enumerate(reader, start=1):
                if not row or not any(cell.strip() for cell in row):
                    continue
                if line == 1:
                    names = [c.strip().lower().replace(" ", "_") for c in row]
                    found = next((names.index(n) for n in _ID_COLUMNS if n in names), None)
                    if found is not None:
                        column = found
                        continue
                if column < len(row) and row[column].strip():
                    out.setdefault(_clean(row[column]), line)
        else:
            for line, text in enumerate(fh, start=1):
                text = text.strip()
                if text and not text.startswith("#"):
                    out.setdefault(_clean(text), line)
    return list(out.items())
