"""NIH ChestX-ray14 boxes (`BBox_List_2017.csv`) with image labels from `Data_Entry_2017*.csv`.

`BBox_List_2017.csv` has the literal header `Image Index,Finding Label,Bbox [x,y,w,h],,,` (three
trailing empty columns; data rows have 6 fields) and one row per (image, finding): `x, y` the top-left
corner and `w, h` the size, floats on the 1024 x 1024 PNG grid. The box label says `Infiltrate` where
Data_Entry says `Infiltration`. Boxes are read as half-open `[x, y, x + w, y + h]` (the core's
convention; torchxrayvision's `NIH_Dataset` truncates each of x, y, w, h with `astype(int)` instead).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xbench_core import ConfigError, DataError, Dataset, Problem, Region, Sample, canonical
from xbench_core.dataset import require_file
from xbench_core.io import find_file, id_from_value, open_text
from xbench_core.io.layout import (
    clip_box,
    image_index,
    label_name_problem,
    require_choice,
    select_listed,
    under_root,
)

from . import FINDINGS

IMAGE_SIZE = (1024, 1024)  # (H, W) of the released PNGs, the grid the boxes are drawn on

LAYOUT = """\
  <root>/
    BBox_List_2017.csv               (or .csv.gz) the boxes
    Data_Entry_2017_v2020.csv        (or Data_Entry_2017.csv, plain or .gz) image labels; optional
    images/00000001_000.png ...      from images_001.tar.gz ... images_012.tar.gz
      (or images_001/images/..., the Kaggle layout; any PNG under root is found by name)"""


def _first(root: Path, names: list[str]) -> Path | None:
    """The first of `names` (or its .gz) directly in `root`."""
    return find_file(root, [n for name in names for n in (name, f"{name}.gz")], max_subdirs=0)


@dataclass
class _Image:
    index: str  # the Image Index, e.g. 00013118_008.png
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)
    labels: dict[str, int] | None = None  # from Data_Entry; None when not there
    meta: dict[str, Any] = field(default_factory=dict)


class ChestXray14BBox(Dataset):
    """The 880 boxed NIH images: one box per (image, finding), image labels for all eight findings."""

    def __init__(
        self,
        root: str,
        split: str = "test",
        split_file: str | None = None,
        bbox_file: str | None = None,
        data_entry: str | None = None,
        image_labels: str = "auto",
        image_dir: str | None = None,
    ) -> None:
        if split != "test":
            raise ConfigError(
                f"chestx-ray14-bbox.split must be test (the boxes are an evaluation set), got {split!r}"
            )
        require_choice(
            "chestx-ray14-bbox.image_labels", image_labels, ("auto", "data_entry", "boxes")
        )
        self.name = "chestx-ray14-bbox"
        self.split = split
        self.findings = FINDINGS
        self.problems: list[Problem] = []
        self.root = require_file(Path(root).expanduser(), "chestx-ray14-bbox root folder", LAYOUT, folder=True)
        self.bbox_file = (
            self._given(bbox_file, "bbox_file")
            or _first(self.root, ["BBox_List_2017.csv"])
            or require_file(self.root / "BBox_List_2017.csv", "NIH box list BBox_List_2017.csv", LAYOUT)
        )
        images = self._read_boxes(self.bbox_file)

        entry = self._given(data_entry, "data_entry") or _first(
            self.root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"]
        )
        if image_labels == "data_entry" and entry is None:
            raise DataError(
                f"chestx-ray14-bbox.image_labels=data_entry but no Data_Entry_2017_v2020.csv or "
                f"Data_Entry_2017.csv under {self.root}; download it from the NIH box folder, pass "
                "data_entry=PATH, or set image_labels=boxes"
            )
        self.data_entry = entry
        if entry is not None:
            self._read_data_entry(entry, images)
        self.label_source = "boxes" if image_labels == "boxes" or entry is None else "data_entry"

        ids = sorted(images)
        if split_file:
            ids = select_listed(
                split_file,
                set(ids),
                self.problems,
                lambda sid: f"id {sid!r} has no box in {self.bbox_file.name}; skipped",
            )
        self._ids = ids
        self._images = images
        self._index, self._default_folder = image_index(
            self.root,
            image_dir,
            [self.root / "images", *sorted(self.root.glob("images_*/images"))],
            option="chestx-ray14-bbox.image_dir",
            layout=LAYOUT,
            suffixes=(".png",),
        )

    def _given(self, value: str | None, option: str) -> Path | None:
        if not value:
            return None
        return require_file(under_root(self.root, value), f"chestx-ray14-bbox.{option}", LAYOUT)

    # -- BBox_List_2017.csv -----------------------------------------------------------------------
    def _read_boxes(self, path: Path) -> dict[str, _Image]:
        images: dict[str, _Image] = {}
        where = str(path)
        with open_text(path) as (fh, _):
            reader = csv.reader(fh)
            for row in reader:
                line = reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                if line == 1 and row[0].strip() == "Image Index":
                    continue  # the header, with its `Bbox [x,y,w,h],,,` split over 4+3 columns
                if len(row) < 6 or any(c.strip() for c in row[6:]):
                    self.problems.append(
                        Problem(
                            where,
                            f"expected 6 fields (Image Index, Finding Label, x, y, w, h), "
                            f"got {len(row)}: {','.join(row)!r}; skipped",
                            line=line,
                        )
                    )
                    continue
                index, label = row[0].strip(), row[1].strip()
                if why := label_name_problem(index):
                    self.problems.append(Problem(where, f"Image Index {why}; skipped", line=line))
                    continue
                sid = id_from_value(index)
                try:
                    x, y, w, h = (float(v) for v in row[2:6])
                except ValueError:
                    self.problems.append(
                        Problem(
                            where,
                            f"box {row[2:6]} is not 4 numbers; skipped",
                            line=line,
                            sample=sid,
                        )
                    )
                    continue
                if not index or not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
                    self.problems.append(
                        Problem(
                            where,
                            f"malformed row {','.join(row)!r}; skipped",
                            line=line,
                            sample=sid,
                        )
                    )
                    continue
                finding = self._finding(label)
                if finding is None:
                    self.problems.append(
                        Problem(
                            where,
                            f"unknown label {label!r} (the boxes are of {', '.join(FINDINGS)}); skipped",
                            line=line,
                            sample=sid,
                        )
                    )
                    continue
                box = self._clip([x, y, x + w, y + h], where, line, sid)
                image = images.setdefault(sid, _Image(index))
                if box is None:
                    image.boxes.setdefault(finding, [])
                    continue
                if finding in image.boxes and image.boxes[finding]:
                    self.problems.append(
                        Problem(
                            where,
                            f"second box of {label} on this image; both kept (union)",
                            line=line,
                            sample=sid,
                        )
                    )
                image.boxes.setdefault(finding, []).append(box)
        return images

    @staticmethod
    def _finding(label: str) -> str | None:
        try:
            finding = canonical(label)
        except ConfigError:
            return None
        return finding if finding in FINDINGS else None

    def _clip(self, box: list[float], where: str, line: int, sid: str) -> list[float] | None:
        h, w = IMAGE_SIZE
        clipped, fate = clip_box(box, IMAGE_SIZE)
        if fate == "inside":
            return box
        if fate == "outside":
            self.problems.append(
                Problem(
                    where,
                    f"box {box} lies outside the {w}x{h} image; skipped",
                    line=line,
                    sample=sid,
                )
            )
            return None
        self.problems.append(
            Problem(
                where,
                f"box {box} reaches outside the {w}x{h} image; clipped",
                line=line,
                sample=sid,
            )
        )
        return clipped

    # -- Data_Entry_2017(_v2020).csv ---------------------------------------------------------------
    def _read_data_entry(self, path: Path, images: dict[str, _Image]) -> None:
        wanted = {img.index: img for img in images.values()}
        where = str(path)
        with open_text(path) as (fh, _):
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "Image Index" not in header or "Finding Labels" not in header:
                raise DataError(
                    f"{path}: not a Data_Entry file (header must have `Image Index` and `Finding "
                    f"Labels`, got {header[:4]}); pass the right file as data_entry=PATH or set "
                    "image_labels=boxes"
                )
            col = {name: k for k, name in enumerate(header) if name}
            for row in reader:
                index = row[0].strip() if row else ""
                image = wanted.get(index)
                if image is None:
                    continue
                if len(row) <= col["Finding Labels"]:
                    self.problems.append(
                        Problem(
                            where,
                            "row too short; labels unknown",
                            line=reader.line_num,
                            sample=id_from_value(index),
                        )
                    )
                    continue
                names = {n.strip() for n in row[col["Finding Labels"]].split("|") if n.strip()}
                present = {self._finding(n) for n in names}
                image.labels = {f: int(f in present) for f in FINDINGS}
                image.meta = _entry_meta(row, col)
        for image in images.values():
            sid = id_from_value(image.index)
            if image.labels is None:
                self.problems.append(
                    Problem(
                        where,
                        f"{image.index} has boxes but no row here; its negatives come "
                        "from its boxes",
                        sample=sid,
                    )
                )
                continue
            for finding in image.boxes:
                if not image.labels[finding]:
                    self.problems.append(
                        Problem(
                            where,
                            f"{image.index} has a box of {finding} but its Finding Labels "
                            "lack it; counted positive",
                            sample=sid,
                        )
                    )

    # -- samples ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """The sample ids without building samples (annotation() looks up image paths, walking the image folders)."""
        return list(self._ids)

    def annotation(self, index: int) -> Sample:
        sid = self._ids[index]
        image = self._images[sid]
        boxed = {f for f in image.boxes}
        if self.label_source == "data_entry" and image.labels is not None:
            labels = {f: int(image.labels[f] or f in boxed) for f in FINDINGS}
        else:
            labels = {f: int(f in boxed) for f in FINDINGS}
        regions = {
            f: Region.from_boxes(IMAGE_SIZE, boxes) for f, boxes in image.boxes.items() if boxes
        }
        meta = {
            "path": self._index.get(sid) or str(self._default_folder / image.index),
            "size": IMAGE_SIZE,
            "image_index": image.index,
            "label_source": self.label_source if image.labels is not None else "boxes",
            **image.meta,
        }
        return Sample(self.name, sid, None, labels=labels, regions=regions, meta=meta)


def _entry_meta(row: list[str], col: dict[str, int]) -> dict[str, Any]:
    """Patient and acquisition fields of a Data_Entry row (2017 and v2020 headers)."""

    def get(name: str) -> str:
        k = col.get(name)
        return row[k].strip() if k is not None and k < len(row) else ""

    meta: dict[str, Any] = {}
    if get("Patient ID"):
        meta["patient_id"] = get("Patient ID")
    if get("View Position"):
        meta["view"] = get("View Position")
    if get("Patient Gender"):
        meta["sex"] = get("Patient Gender")
    age = get("Patient Age").rstrip("YyMmDd")  # 2017 writes "058Y", v2020 writes 58
    if age.isdigit():
        meta["age"] = int(age)
    if get("Follow-up #").isdigit():
        meta["follow_up"] = int(get("Follow-up #"))
    width, height = get("OriginalImage[Width"), get("Height]")
    if width.isdigit() and height.isdigit():
        meta["original_size"] = (int(height), int(width))
    return meta
