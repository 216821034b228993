"""Parsing the RSNA label files: `stage_2_train_labels.csv` and its optional companions.

`stage_2_train_labels.csv` has one row per box (`patientId,x,y,width,height,Target`); a negative
image has one `Target` 0 row with empty box fields. Boxes are top-left plus size in the pixels of
the 1024x1024 DICOMs (reference/datasets.md section 1). Everything is parsed with the csv module
into flat numpy arrays: no object per row survives the parse.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xbench_core import DataError, Problem
from xbench_core.io import open_text, split_image_name
from xbench_core.io.layout import clip_box, group_label_rows, label_name_problem

SIZE = (1024, 1024)  # (H, W) of every RSNA DICOM; the boxes are in this frame
_TARGETS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_EMPTY = {"", "nan", "NaN", "NAN", "None"}
_COLUMNS = ("patientid", "x", "y", "width", "height", "target")


@dataclass
class Labels:
    """One entry per image, sorted by patientId; boxes as [x1, y1, x2, y2] (half-open) in CSR form:
    the boxes of image k are `boxes[offsets[k]:offsets[k + 1]]`."""

    ids: np.ndarray  # str, sorted, unique
    targets: np.ndarray  # int8, 0 or 1
    offsets: np.ndarray  # int64, len(ids) + 1
    boxes: np.ndarray  # float64, N x 4
    rows: int = 0  # rows read (parsed or not)
    problems: list[Problem] = field(default_factory=list)


def _box(fields: list[str]) -> tuple[float, float, float, float] | None | str:
    """The box of a row: a tuple, None when all fields are empty, or an error message."""
    values = [f.strip() for f in fields]
    if all(v in _EMPTY for v in values):
        return None
    try:
        x, y, w, h = (float(v) for v in values)
    except ValueError:
        return f"box fields {values} are not numbers"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"box fields {values} are not all finite"
    if w <= 0 or h <= 0:
        return f"box has width {w:g} and height {h:g}; both must be positive"
    return (x, y, w, h)


def parse_labels(path: Path) -> Labels:
    """Parse a `stage_{1,2}_train_labels.csv` (plain, .gz or zipped); malformed rows are problems."""
    problems: list[Problem] = []
    row_ids: list[str] = []
    row_targets: list[int] = []
    box_rows: list[int] = []  # index into row_ids of each kept box
    box_values: list[list[float]] = []  # clip_box's [x1, y1, x2, y2]
    height, width = SIZE
    rows = 0
    with open_text(path) as (stream, where):
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{where} is empty: expected the header patientId,x,y,width,height,Target"
            )
        cols = {h.strip().lower(): i for i, h in enumerate(header)}
        missing = [c for c in _COLUMNS if c not in cols]
        if missing:
            raise DataError(
                f"{where}: the header {header} lacks {missing}; expected "
                "patientId,x,y,width,height,Target (Kaggle's stage_2_train_labels.csv)"
            )
        ip, ix, iy, iw, ih, it = (cols[c] for c in _COLUMNS)
        need = max(ip, ix, iy, iw, ih, it) + 1
        for row in reader:
            rows += 1
            if len(row) >= need:
                # fast path for the 20,000-odd negative rows: `pid,,,,,0`
                pid = row[ip].strip()
                if (
                    pid
                    and row[it] == "0"
                    and not (row[ix] or row[iy] or row[iw] or row[ih])
                    and label_name_problem(pid) is None
                ):
                    row_ids.append(pid)
                    row_targets.append(0)
                    continue
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                rows -= 1
                continue
            if len(row) < need:
                problems.append(
                    Problem(
                        where, f"expected {need} fields, found {len(row)}; row skipped", line=line
                    )
                )
                continue
            pid = row[ip].strip()
            if not pid:
                problems.append(Problem(where, "empty patientId; row skipped", line=line))
                continue
            if why := label_name_problem(pid):
                problems.append(Problem(where, f"patientId {why}; row skipped", line=line))
                continue
            target = _TARGETS.get(row[it].strip())
            if target is None:
                problems.append(
                    Problem(
                        where,
                        f"Target {row[it]!r} is not 0 or 1; row skipped",
                        line=line,
                        sample=pid,
                    )
                )
                continue
            box = _box([row[ix], row[iy], row[iw], row[ih]])
            if isinstance(box, str):
                problems.append(Problem(where, f"{box}; row skipped", line=line, sample=pid))
                continue
            if target == 0:
                if box is not None:
                    problems.append(
                        Problem(
                            where, "Target 0 row has box values; box ignored", line=line, sample=pid
                        )
                    )
                row_ids.append(pid)
                row_targets.append(0)
                continue
            if box is None:
                problems.append(
                    Problem(where, "Target 1 row without a box; row skipped", line=line, sample=pid)
                )
                continue
            x, y, w, h = box
            clipped, fate = clip_box((x, y, x + w, y + h), SIZE)
            row_ids.append(pid)
            row_targets.append(1)
            if fate == "outside":
                problems.append(
                    Problem(
                        where,
                        f"box x={x:g} y={y:g} w={w:g} h={h:g} lies outside the "
                        f"{width}x{height} image; box dropped (the image stays positive)",
                        line=line,
                        sample=pid,
                    )
                )
                continue
            if fate == "clipped":
                problems.append(
                    Problem(
                        where,
                        f"box x={x:g} y={y:g} w={w:g} h={h:g} extends outside the {width}x{height} "
                        f"image; clipped to [{clipped[0]:g}, {clipped[1]:g}, {clipped[2]:g}, {clipped[3]:g}]",
                        line=line,
                        sample=pid,
                    )
                )
            box_rows.append(len(row_ids) - 1)
            box_values.append(clipped)
    if not row_ids:
        shown = "; ".join(str(p) for p in problems[:3])
        raise DataError(f"no parseable row in {where} ({rows} rows read). {shown}")
    grouped = group_label_rows(row_ids, row_targets, box_rows)
    for k in grouped.mixed:
        problems.append(
            Problem(
                where,
                "both Target 0 and Target 1 rows; treated as positive",
                sample=str(grouped.ids[k]),
            )
        )
    boxes = np.asarray(box_values, dtype=np.float64).reshape(-1, 4)[grouped.order]
    return Labels(grouped.ids, grouped.targets, grouped.offsets, boxes, rows, problems)


@dataclass
class Headers:
    """DICOM header fields per image (torchxrayvision's `stage_2_train_images_dicom_headers.csv`),
    aligned with a sorted id array; empty string or -1 where unknown."""

    view: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    spacing: np.ndarray
    found: int = 0


def parse_headers(path: Path, ids: np.ndarray, problems: list[Problem]) -> Headers:
    """Read the DICOM-headers CSV (columns PatientID or Filename, ViewPosition, PatientAge,
    PatientSex, PixelSpacing) for the given sorted ids."""
    n = len(ids)
    positions = {pid: k for k, pid in enumerate(ids.tolist())}
    view = [""] * n
    age = [-1] * n
    sex = [""] * n
    spacing = [float("nan")] * n
    found = 0
    with open_text(path) as (stream, where):
        reader = csv.reader(stream)
        header = next(reader, None) or []
        cols = {h.strip().lower(): i for i, h in enumerate(header)}
        key = cols.get("patientid", cols.get("filename"))
        if key is None or "viewposition" not in cols:
            raise DataError(
                f"{where}: not a DICOM-headers CSV (needs PatientID or Filename and ViewPosition "
                f"columns; found {header})"
            )
        iv = cols["viewposition"]
        ia, isx, isp = (cols.get(c) for c in ("patientage", "patientsex", "pixelspacing"))
        need = max(i for i in (key, iv, ia, isx, isp) if i is not None) + 1
        for row in reader:
            if len(row) < need:
                if row:
                    problems.append(Problem(where, "short row; skipped", line=reader.line_num))
                continue
            k = positions.get(split_image_name(row[key].strip())[0])
            if k is None:
                continue
            found += 1
            view[k] = row[iv].strip()
            if ia is not None and row[ia].strip().isdigit():
                age[k] = int(row[ia].strip())
            if isx is not None:
                sex[k] = row[isx].strip()[:1]
            if isp is not None:
                try:
                    spacing[k] = float(row[isp].strip())
                except ValueError:
                    pass
    return Headers(
        np.asarray(view, dtype="<U4"),
        np.asarray(age, dtype=np.int16),
        np.asarray(sex, dtype="<U1"),
        np.asarray(spacing, dtype=np.float64),
        found,
    )


def parse_class_info(path: Path, ids: np.ndarray, problems: list[Problem]) -> np.ndarray:
    """The `class` of `stage_2_detailed_class_info.csv` per sorted id ('' where absent): Normal,
    No Lung Opacity / Not Normal, or Lung Opacity."""
    out = np.full(len(ids), "", dtype="<U32")
    positions = {pid: k for k, pid in enumerate(ids.tolist())}
    with open_text(path) as (stream, where):
        reader = csv.reader(stream)
        header = [h.strip().lower() for h in next(reader, None) or []]
        if "patientid" not in header or "class" not in header:
            problems.append(
                Problem(where, f"not a detailed class info file (header {header}); ignored")
            )
            return out
        ip, ic = header.index("patientid"), header.index("class")
        for row in reader:
            if len(row) <= max(ip, ic):
                continue
            k = positions.get(row[ip].strip())
            if k is not None:
                out[k] = row[ic].strip()
    return out
