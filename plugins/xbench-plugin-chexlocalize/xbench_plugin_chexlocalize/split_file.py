"""Reading a list of image ids that reproduces a published split (CSV with a header, or plain text)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from xbench_core import DataError

# Column names that hold an image id in split CSVs found in the wild (case-insensitive).
ID_COLUMNS = (
    "id",
    "image_id",
    "image id",
    "image index",
    "file_name",
    "filename",
    "image",
    "image_path",
    "path",
)


def read_id_list(path: Path, normalize: Callable[[str], str]) -> list[tuple[str, int]]:
    """The ids listed in a split file, each with its line number, in file order, without repeats.

    A `.csv` file has a header: the first column named like an id (`id`, `image_id`, `Image Index`,
    `file_name`, `path`, ...) is used, else the first column. Any other file lists one id per line
    (the first token; blank lines and `#` comments are skipped). `normalize` turns a listed value
    (a file name, a path) into the dataset's id.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"split_file not found: {path}. Give a CSV (with a header) or a text file listing one "
            "image id per line."
        )
    rows: list[tuple[str, int]] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(fh)
            header = next(reader, [])
            names = [h.strip().lower() for h in header]
            column = next((names.index(c) for c in ID_COLUMNS if c in names), 0)
            for row in reader:
                if column < len(row) and row[column].strip():
                    rows.append((row[column].strip(), reader.line_num))
        else:
            for number, line in enumerate(fh, start=1):
                text = line.strip()
                if text and not text.startswith("#"):
                    rows.append((text.replace(",", " ").split()[0], number))
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    for value, line in rows:
        key = normalize(value)
        if key not in seen:
            seen.add(key)
            out.append((key, line))
    return out
