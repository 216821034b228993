"""Parsing the SIIM-ACR label files: stage-1 `train-rle.csv` and stage-2 `stage_2_train.csv`.

Both have one row per annotation (`ImageId, EncodedPixels`; the stage-1 header has a space before
`EncodedPixels`); `-1` marks a negative image; a positive image may have several rows, which are
OR-ed (reference/datasets.md section 2). Parsed with the csv module into flat arrays: the RLE
texts are kept as strings (the region's source form) and decoded only when a mask is needed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xbench_core import DataError, Problem
from xbench_core.io import open_text, split_image_name
from xbench_core.io.layout import group_label_rows, label_name_problem

from .rle import (
    absolute_to_relative,
    choose_encoding,
    fits_absolute,
    fits_relative,
    parse_values,
    relative_end,
    relative_text,
)

SIZE = (1024, 1024)  # (H, W) of every SIIM-ACR DICOM; the RLEs index this frame


@dataclass
class Labels:
    """One entry per image, sorted by ImageId; the relative RLE texts of image k are
    `rles[offsets[k]:offsets[k + 1]]`, in file order."""

    ids: np.ndarray  # str, sorted, unique
    targets: np.ndarray  # int8
    offsets: np.ndarray  # int64, len(ids) + 1
    rles: list[str]
    encoding: str = "relative"
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)


def parse_labels(path: Path, encoding: str = "auto") -> Labels:
    """Parse `train-rle.csv` / `stage_2_train.csv` (plain, .gz or zipped).

    `encoding` is `relative`, `absolute` (1-based starts) or `auto` (decided from the rows).
    Malformed rows, and RLEs that do not fit the 1024x1024 image, are problems and are skipped.
    """
    if encoding not in ("auto", "relative", "absolute"):
        raise DataError(f"rle_encoding must be auto, relative or absolute; got {encoding!r}")
    height, width = SIZE
    pixels = height * width
    problems: list[Problem] = []
    row_ids: list[str] = []
    row_positive: list[int] = []
    rle_rows: list[int] = []  # index into row_ids of each RLE
    rle_values: list[np.ndarray] = []
    rle_texts: list[str] = []
    rle_lines: list[int] = []
    rows = 0
    with open_text(path) as (stream, where):
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{where} is empty: expected the header ImageId,EncodedPixels")
        cols = {h.strip().lower(): i for i, h in enumerate(header)}
        if "imageid" not in cols or "encodedpixels" not in cols:
            raise DataError(
                f"{where}: the header {header} lacks ImageId and EncodedPixels; expected SIIM-ACR's "
                "train-rle.csv ('ImageId, EncodedPixels') or stage_2_train.csv"
            )
        ii, ie = cols["imageid"], cols["encodedpixels"]
        need = max(ii, ie) + 1
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            rows += 1
            line = reader.line_num
            if len(row) < need:
                problems.append(
                    Problem(
                        where, f"expected {need} fields, found {len(row)}; row skipped", line=line
                    )
                )
                continue
            image_id = split_image_name(row[ii].strip())[0]
            if not image_id:
                problems.append(Problem(where, "empty ImageId; row skipped", line=line))
                continue
            if why := label_name_problem(row[ii].strip()):
                problems.append(Problem(where, f"ImageId {why}; row skipped", line=line))
                continue
            text = row[ie].strip()
            if text == "-1":
                row_ids.append(image_id)
                row_positive.append(0)
                continue
            if not text:
                problems.append(
                    Problem(
                        where,
                        "empty EncodedPixels (a negative is -1); row skipped",
                        line=line,
                        sample=image_id,
                    )
                )
                continue
            values = parse_values(text)
            if isinstance(values, str):
                problems.append(
                    Problem(where, f"{values}; row skipped", line=line, sample=image_id)
                )
                continue
            if values.size == 0:
                problems.append(Problem(where, "no runs; row skipped", line=line, sample=image_id))
                continue
            row_ids.append(image_id)
            row_positive.append(1)
            rle_rows.append(len(row_ids) - 1)
            rle_values.append(values)
            rle_texts.append(text)
            rle_lines.append(line)

        chosen = choose_encoding(rle_values, pixels) if encoding == "auto" else encoding
        keep = np.ones(len(row_ids), dtype=bool)
        kept_rows: list[int] = []
        kept_texts: list[str] = []
        for r, values, text, line in zip(rle_rows, rle_values, rle_texts, rle_lines):
            if chosen == "relative":
                ok = fits_relative(values, pixels)
                why = (
                    f"relative RLE ends at pixel {relative_end(values)}, beyond the "
                    f"{height}x{width} image (or has a zero-length run)"
                )
            else:
                ok = fits_absolute(values, pixels)
                why = (
                    f"not a valid absolute RLE for a {height}x{width} image (starts must be "
                    "1-based, increasing and inside the image)"
                )
            if not ok:
                keep[r] = False
                problems.append(Problem(where, f"{why}; row skipped", line=line, sample=row_ids[r]))
                continue
            kept_rows.append(r)
            kept_texts.append(
                relative_text(text) if chosen == "relative" else absolute_to_relative(values)
            )

    if not keep.any():
        shown = "; ".join(str(p) for p in problems[:3])
        raise DataError(f"no parseable row in {where} ({rows} rows read). {shown}")
    grouped = group_label_rows(row_ids, row_positive, kept_rows, keep)
    for k in grouped.mixed:
        problems.append(
            Problem(where, "both -1 and RLE rows; treated as positive", sample=str(grouped.ids[k]))
        )
    rles = [kept_texts[k] for k in grouped.order.tolist()]
    return Labels(grouped.ids, grouped.targets, grouped.offsets, rles, chosen, rows, problems)
