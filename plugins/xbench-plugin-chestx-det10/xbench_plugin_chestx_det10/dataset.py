"""ChestX-Det10 / ChestX-Det: instance boxes (and polygons) on NIH ChestX-ray14 PNGs.

The annotation file is a JSON list of `{"file_name": "36204.png", "syms": [...], "boxes": [[x1, y1,
x2, y2], ...]}` with integer corners on the 1024 x 1024 PNG grid; the 13-class ChestX-Det files add
`"polygons": [[[x, y], ...], ...]`, one contour per box (Deepwise-AILab/ChestX-Det10-Dataset and
ChestX-Det-Dataset READMEs). An image whose `syms` is empty has no finding: every class is negative;
a class absent from `syms` is negative. The official `eval.py` (`IOU`) counts x2 and y2 as inclusive
pixels (`+ 1.`); with `box_convention="inclusive"` (the default) 1 is added to x2 and y2 on reading so
that the core's half-open boxes cover exactly those pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import ConfigError, DataError, Dataset, Problem, Region, Sample, canonical
from xbench_core.dataset import require_file
from xbench_core.io import id_from_value
from xbench_core.io.layout import (
    clip_box,
    image_index,
    label_name_problem,
    read_json,
    require_choice,
    select_listed,
    under_root,
)

from . import FINDINGS as DET10_FINDINGS

IMAGE_SIZE = (1024, 1024)  # (H, W): the NIH PNGs both files are annotated on
# ChestX-Det (13 classes) adds these three.
EXTRA_FINDINGS = ("cardiomegaly", "diffuse_nodule", "pleural_thickening")

LAYOUT = """\
  <root>/
    train.json, test.json              ChestX-Det10 (Deepwise-AILab/ChestX-Det10-Dataset)
      or ChestX_Det_train.json, ChestX_Det_test.json   ChestX-Det, 13 classes with polygons
    train_data/36200.png ...           PNGs from train_data.zip (or train/, images/, anywhere
    test_data/36199.png ...            under root: found by file name; or set image_dir)"""


@dataclass
class _Entry:
    file_name: str
    present: set[str] = field(default_factory=set)
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)
    polygons: dict[str, list[np.ndarray]] = field(default_factory=dict)


class ChestXDet10(Dataset):
    """A split of ChestX-Det10 (or ChestX-Det): image labels for every class, boxes or polygons."""

    def __init__(
        self,
        root: str,
        split: str = "test",
        split_file: str | None = None,
        label_file: str | None = None,
        image_dir: str | None = None,
        regions: str = "boxes",
        box_convention: str = "inclusive",
    ) -> None:
        require_choice("chestx-det10.split", split, ("train", "test"))
        require_choice("chestx-det10.regions", regions, ("boxes", "polygons"))
        require_choice("chestx-det10.box_convention", box_convention, ("inclusive", "half_open"))
        self.name = "chestx-det10"
        self.split = split
        self.regions_kind = regions
        self.box_convention = box_convention
        self.problems: list[Problem] = []
        self.root = require_file(Path(root).expanduser(), "chestx-det10 root folder", LAYOUT, folder=True)
        self.label_file = self._label_file(label_file)

        entries = self._read_json(self.label_file)
        self.variant = (
            "chestx-det"
            if any(isinstance(e, dict) and "polygons" in e for e in entries)
            else "chestx-det10"
        )
        self.findings = DET10_FINDINGS + (EXTRA_FINDINGS if self.variant == "chestx-det" else ())
        if regions == "polygons" and self.variant != "chestx-det":
            raise ConfigError(
                f"chestx-det10.regions=polygons needs the 13-class ChestX-Det annotation files "
                f"(ChestX_Det_{split}.json, with `polygons`); {self.label_file} has boxes only. "
                "Set regions=boxes or point label_file at a ChestX-Det file."
            )
        parsed = self._parse(entries)
        ids = sorted(parsed)
        if split_file:
            ids = select_listed(
                split_file,
                set(ids),
                self.problems,
                lambda sid: f"id {sid!r} is not in {self.label_file.name}; skipped",
            )
        self._ids = ids
        self._entries = parsed
        self._images, self._default_folder = image_index(
            self.root,
            image_dir,
            [self.root / f"{split}_data", self.root / split, self.root / "images"],
            option="chestx-det10.image_dir",
            layout=LAYOUT,
            suffixes=(".png",),
        )

    # -- files ------------------------------------------------------------------------------------
    def _label_file(self, given: str | None) -> Path:
        if given:
            return require_file(under_root(self.root, given), "chestx-det10 label_file", LAYOUT)
        candidates = [
            self.root / f"{self.split}.json",
            self.root / f"ChestX_Det_{self.split}.json",
            self.root / f"{self.split}.json.gz",
            self.root / f"ChestX_Det_{self.split}.json.gz",
        ]
        for path in candidates:
            if path.is_file():
                return path
        return require_file(candidates[0], f"chestx-det10 {self.split} annotation file", LAYOUT)

    @staticmethod
    def _read_json(path: Path) -> list[Any]:
        data = read_json(path, "re-download it from Deepwise-AILab/ChestX-Det10-Dataset")
        if not isinstance(data, list):
            raise DataError(
                f"{path}: expected a JSON list of {{file_name, syms, boxes}} entries, "
                f"found a {type(data).__name__}"
            )
        return data

    # -- parsing ----------------------------------------------------------------------------------
    def _problem(self, message: str, sample: str | None = None) -> None:
        self.problems.append(Problem(str(self.label_file), message, sample=sample))

    def _parse(self, entries: list[Any]) -> dict[str, _Entry]:
        parsed: dict[str, _Entry] = {}
        for number, raw in enumerate(entries):
            where = f"entry {number}"
            if not isinstance(raw, dict) or not isinstance(raw.get("file_name"), str):
                self._problem(f"{where}: not an object with a string `file_name`; skipped")
                continue
            file_name = raw["file_name"]
            where = f"entry {number} ({file_name})"
            if why := label_name_problem(file_name):
                self._problem(f"{where}: file_name {why}; skipped")
                continue
            sid = id_from_value(file_name)
            syms, boxes = raw.get("syms"), raw.get("boxes")
            polygons = raw.get("polygons")
            if not isinstance(syms, list) or not isinstance(boxes, list) or len(syms) != len(boxes):
                self._problem(
                    f"{where}: `syms` and `boxes` must be lists of the same length; skipped", sid
                )
                continue
            if polygons is not None and (
                not isinstance(polygons, list) or len(polygons) != len(boxes)
            ):
                self._problem(
                    f"{where}: `polygons` must have one contour per box; polygons ignored", sid
                )
                polygons = None
            if sid in parsed:
                self._problem(
                    f"{where}: second entry for this image; its annotations are merged", sid
                )
                entry = parsed[sid]
            else:
                entry = parsed[sid] = _Entry(file_name)
            for k, sym in enumerate(syms):
                finding = self._finding(sym, f"{where} sym {k}", sid)
                if finding is None:
                    continue
                entry.present.add(finding)
                box = self._box(boxes[k], f"{where} box {k} ({sym})", sid)
                if box is not None:
                    entry.boxes.setdefault(finding, []).append(box)
                if polygons is not None:
                    poly = self._polygon(polygons[k], f"{where} polygon {k} ({sym})", sid)
                    if poly is not None:
                        entry.polygons.setdefault(finding, []).append(poly)
        return parsed

    def _finding(self, sym: Any, where: str, sid: str) -> str | None:
        try:
            finding = canonical(str(sym))
        except ConfigError:
            finding = None
        if finding not in self.findings:
            self._problem(
                f"{where}: unknown label {sym!r} (the {self.variant} classes are "
                f"{', '.join(self.findings)}); skipped",
                sid,
            )
            return None
        return finding

    def _box(self, raw: Any, where: str, sid: str) -> list[float] | None:
        try:
            x1, y1, x2, y2 = (float(v) for v in raw)
        except (TypeError, ValueError):
            self._problem(
                f"{where}: a box must be 4 numbers [x1, y1, x2, y2], got {raw!r}; skipped", sid
            )
            return None
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
            self._problem(f"{where}: box {raw!r} is not [left, top, right, bottom]; skipped", sid)
            return None
        if self.box_convention == "inclusive":
            x2, y2 = x2 + 1.0, y2 + 1.0
        h, w = IMAGE_SIZE
        clipped, fate = clip_box([x1, y1, x2, y2], IMAGE_SIZE)
        if fate == "outside":
            self._problem(f"{where}: box {raw!r} lies outside the {w}x{h} image; skipped", sid)
            return None
        if fate == "clipped":
            self._problem(f"{where}: box {raw!r} reaches outside the {w}x{h} image; clipped", sid)
        return clipped

    def _polygon(self, raw: Any, where: str, sid: str) -> np.ndarray | None:
        try:
            pts = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            pts = np.zeros((0,))
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
            self._problem(f"{where}: a polygon must be 3 or more [x, y] points; skipped", sid)
            return None
        h, w = IMAGE_SIZE
        inside = np.clip(pts, 0.0, [w, h])
        if not np.array_equal(inside, pts):
            self._problem(f"{where}: polygon reaches outside the {w}x{h} image; clipped", sid)
        return inside

    # -- samples ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """The sample ids without building samples (annotation() looks up image paths, walking the image folders)."""
        return list(self._ids)

    def annotation(self, index: int) -> Sample:
        sid = self._ids[index]
        entry = self._entries[sid]
        regions: dict[str, Region] = {}
        if self.regions_kind == "polygons":
            for finding, polys in entry.polygons.items():
                regions[finding] = Region(IMAGE_SIZE, polygons=tuple(polys))
        else:
            for finding, boxes in entry.boxes.items():
                regions[finding] = Region.from_boxes(IMAGE_SIZE, boxes)
        return Sample(
            dataset=self.name,
            id=sid,
            image=None,
            labels={f: int(f in entry.present) for f in self.findings},
            regions=regions,
            meta={
                "path": self._images.get(sid) or str(self._default_folder / entry.file_name),
                "size": IMAGE_SIZE,
                "file_name": entry.file_name,
                "variant": self.variant,
                "box_convention": self.box_convention,
            },
        )
