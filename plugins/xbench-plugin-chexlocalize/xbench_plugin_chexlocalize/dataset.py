"""CheXlocalize: CheXpert val/test CXRs with radiologist segmentations of ten findings.

Files (rajpurkarlab/cheXlocalize README, "Download data"): the CheXpert label CSV of the split
(`Path, Sex, Age, Frontal/Lateral, AP/PA` and 14 labels, 0/1), `gt_segmentations_<split>.json`
(`{cxr_id: {task: {"size": [h, w], "counts": COCO RLE text}}}` for all ten tasks of every CXR with
a positive label; negative tasks hold an all-zero mask) and `gt_annotations_<split>.json`
(`{cxr_id: {"img_size": [h, w], task: [contour, ...]}}`, positive tasks only; contours are [x, y]
float points that `annotation_to_segmentation.create_mask` fills with Pillow). A CXR id is the image
path with its first two `/` made `_`: `patient64541/study1/view1_frontal.jpg` ->
`patient64541_study1_view1_frontal`. The task the JSONs call `Airspace Opacity` is the CSV's
`Lung Opacity`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import ConfigError, DataError, Dataset, Problem, Region, Sample, canonical
from xbench_core.dataset import require_file
from xbench_core.io import coco_rle_area, open_text
from xbench_core.io.layout import (
    read_json,
    require_choice,
    select_listed,
    under_root,
)

from . import IMAGE_ONLY, LOCALIZED

FINDINGS = LOCALIZED + IMAGE_ONLY
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")

LAYOUT = """\
  <root>/
    CheXpert/val/patient64541/study1/view1_frontal.jpg ...   images (CheXpert-v1.0/valid/ also works)
    CheXpert/val_labels.csv, CheXpert/test_labels.csv      labels (or CheXpert-v1.0/valid.csv)
    CheXpert/test/patient64741/study1/view1_frontal.jpg ...
    CheXlocalize/gt_segmentations_val.json, gt_segmentations_test.json
    CheXlocalize/gt_annotations_val.json, gt_annotations_test.json   (for regions=polygons)"""

# Where the official download and the older CheXpert-v1.0 release keep each split.
IMAGE_DIRS = {
    "val": ("CheXpert/val", "CheXpert-v1.0/valid", "val", "valid"),
    "test": ("CheXpert/test", "CheXpert-v1.0/test", "test"),
}
LABEL_CSVS = {
    "val": ("CheXpert/val_labels.csv", "CheXpert-v1.0/valid.csv", "val_labels.csv", "valid.csv"),
    "test": ("CheXpert/test_labels.csv", "CheXpert-v1.0/test_labels.csv", "test_labels.csv"),
}


def cxr_id(value: str) -> str | None:
    """The CheXlocalize id of a CheXpert path (`.../patient1/study2/view1_frontal.jpg`), or the
    value itself when it already is an id; None when it is neither."""
    text = value.strip().replace("\\", "/")
    if "/" not in text:
        text = text[: -len(".jpg")] if text.lower().endswith(".jpg") else text
        parts = text.split("_", 2)
        ok = len(parts) == 3 and parts[0].startswith("patient") and parts[1].startswith("study")
        return text if ok else None
    parts = text.split("/")
    if len(parts) < 3 or not parts[-3].startswith("patient") or not parts[-2].startswith("study"):
        return None
    stem = parts[-1][: -len(".jpg")] if parts[-1].lower().endswith(".jpg") else parts[-1]
    return f"{parts[-3]}_{parts[-2]}_{stem}"


@dataclass
class _Cxr:
    line: int
    labels: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    regions: dict[str, Region] = field(default_factory=dict)


class CheXlocalize(Dataset):
    """A CheXlocalize split: the CheXpert labels of every CXR, regions of the ten tasks."""

    def __init__(
        self,
        root: str,
        split: str = "test",
        split_file: str | None = None,
        regions: str = "segmentations",
        labels_csv: str | None = None,
        gt_dir: str | None = None,
        image_dir: str | None = None,
        frontal_only: bool = False,
    ) -> None:
        require_choice("chexlocalize.split", split, ("val", "test"))
        require_choice("chexlocalize.regions", regions, ("segmentations", "polygons"))
        self.name = "chexlocalize"
        self.split = split
        self.findings = FINDINGS
        self.regions_kind = regions
        self.problems: list[Problem] = []
        self.root = require_file(Path(root).expanduser(), "chexlocalize root folder", LAYOUT, folder=True)

        self.labels_csv = self._find(labels_csv, LABEL_CSVS[split], f"CheXpert {split} label CSV")
        cxrs = self._read_csv(self.labels_csv)
        gt_folder = self._gt_folder(gt_dir)
        if regions == "segmentations":
            self.gt_file = require_file(
                gt_folder / f"gt_segmentations_{split}.json", "CheXlocalize segmentations", LAYOUT
            )
            self._read_segmentations(self.gt_file, cxrs)
        else:
            self.gt_file = require_file(
                gt_folder / f"gt_annotations_{split}.json", "CheXlocalize annotations", LAYOUT
            )
            self._read_annotations(self.gt_file, cxrs)
        self._check_positives(cxrs)

        ids = sorted(cxrs)
        if frontal_only:
            ids = [i for i in ids if cxrs[i].meta.get("view") == "frontal"]
        if split_file:
            listed = set(
                select_listed(
                    split_file,
                    set(cxrs),
                    self.problems,
                    lambda cid: f"id {cid!r} is not in {self.labels_csv.name}; skipped",
                    normalize=lambda v: cxr_id(v) or v.strip(),
                )
            )
            ids = [cid for cid in ids if cid in listed]
        self._ids = ids
        self._cxrs = cxrs
        self.image_dir = self._image_dir(image_dir)

    # -- files ------------------------------------------------------------------------------------
    def _find(self, given: str | None, candidates: tuple[str, ...], what: str) -> Path:
        if given:
            return require_file(under_root(self.root, given), what, LAYOUT)
        for name in candidates:
            if (self.root / name).is_file():
                return self.root / name
        return require_file(self.root / candidates[0], what, LAYOUT)

    def _gt_folder(self, given: str | None) -> Path:
        if given:
            return require_file(under_root(self.root, given), "chexlocalize.gt_dir", LAYOUT, folder=True)
        nested = self.root / "CheXlocalize"
        return nested if nested.is_dir() else self.root

    def _image_dir(self, given: str | None) -> Path:
        if given:
            return require_file(under_root(self.root, given), "chexlocalize.image_dir", LAYOUT, folder=True)
        for name in IMAGE_DIRS[self.split]:
            if (self.root / name).is_dir():
                return self.root / name
        return self.root / IMAGE_DIRS[self.split][0]

    @staticmethod
    def _load_json(path: Path) -> dict[str, Any]:
        data = read_json(path, "download it again from Stanford AIMI (CheXlocalize)")
        if not isinstance(data, dict):
            raise DataError(
                f"{path}: expected an object keyed by CXR id, got {type(data).__name__}"
            )
        return data

    # -- the CheXpert label CSV -------------------------------------------------------------------
    def _read_csv(self, path: Path) -> dict[str, _Cxr]:
        cxrs: dict[str, _Cxr] = {}
        where = str(path)
        with open_text(path) as (fh, _):
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "Path" not in header:
                raise DataError(
                    f"{path}: no `Path` column (header {header[:5]}); this is not a CheXpert label "
                    "CSV. Pass the right file as labels_csv=PATH."
                )
            columns: dict[int, str] = {}
            for k, name in enumerate(header):
                if not name or name in META_COLUMNS:
                    continue
                try:
                    finding = canonical(name)
                except ConfigError:
                    finding = None
                if finding in FINDINGS:
                    columns[k] = finding
                else:
                    self.problems.append(
                        Problem(where, f"column {name!r} is not a CheXpert label; ignored", line=1)
                    )
            col = {name: k for k, name in enumerate(header)}
            for row in reader:
                line = reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                value = row[col["Path"]] if col["Path"] < len(row) else ""
                cid = cxr_id(value)
                if cid is None or "/" not in value.replace("\\", "/"):
                    self.problems.append(
                        Problem(
                            where, f"Path {value!r} is not patient*/study*/view*.jpg; skipped", line
                        )
                    )
                    continue
                if cid in cxrs:
                    self.problems.append(
                        Problem(where, "second row for this CXR; ignored", line, sample=cid)
                    )
                    continue
                cxr = cxrs[cid] = _Cxr(line)
                for k, finding in columns.items():
                    text = row[k].strip() if k < len(row) else ""
                    label = self._label(text, header[k], where, line, cid)
                    if label is not None:
                        cxr.labels[finding] = label
                cxr.meta = self._meta(row, col, value, cid)
        return cxrs

    def _label(self, text: str, column: str, where: str, line: int, cid: str) -> int | None:
        try:
            number = float(text) if text else math.nan
        except ValueError:
            number = None
        if number in (0.0, 1.0):
            return int(number)
        if number is not None and (math.isnan(number) or number == -1.0):
            # The val/test labels are radiologist consensus (0/1); blank or uncertain is unknown.
            kind = "blank" if not text else "uncertain (-1)"
            self.problems.append(
                Problem(where, f"{column} is {kind}; read as unknown", line, sample=cid)
            )
            return None
        self.problems.append(
            Problem(where, f"{column} = {text!r} is not 0 or 1; read as unknown", line, sample=cid)
        )
        return None

    @staticmethod
    def _meta(row: list[str], col: dict[str, int], path: str, cid: str) -> dict[str, Any]:
        def get(name: str) -> str:
            k = col.get(name)
            return row[k].strip() if k is not None and k < len(row) else ""

        patient, study, view = cid.split("_", 2)
        meta: dict[str, Any] = {
            "patient_id": patient,
            "study": study,
            "view_file": view,
            "csv_path": path,
            "view": (get("Frontal/Lateral") or ("frontal" if "frontal" in view else "lateral"))
            .strip()
            .lower(),
        }
        if get("AP/PA"):
            meta["ap_pa"] = get("AP/PA")
        if get("Sex"):
            meta["sex"] = get("Sex")
        if get("Age").isdigit():
            meta["age"] = int(get("Age"))
        return meta

    # -- ground truth -----------------------------------------------------------------------------
    def _task(self, name: str, where: str, cid: str) -> str | None:
        try:
            finding = canonical(name)
        except ConfigError:
            finding = None
        if finding not in LOCALIZED:
            self.problems.append(
                Problem(where, f"{cid}: unknown task {name!r}; skipped", sample=cid)
            )
            return None
        return finding

    def _known(self, cid: str, where: str, cxrs: dict[str, _Cxr]) -> bool:
        if cid in cxrs:
            return True
        self.problems.append(
            Problem(
                where,
                f"{cid} has ground truth but no row in {self.labels_csv.name}; skipped",
                sample=cid,
            )
        )
        return False

    def _read_segmentations(self, path: Path, cxrs: dict[str, _Cxr]) -> None:
        where = str(path)
        for cid, tasks in self._load_json(path).items():
            if not self._known(cid, where, cxrs):
                continue
            if not isinstance(tasks, dict):
                self.problems.append(
                    Problem(where, f"{cid}: not an object of tasks; skipped", sample=cid)
                )
                continue
            cxr = cxrs[cid]
            for name, rle in tasks.items():
                finding = self._task(name, where, cid)
                if finding is None:
                    continue
                try:
                    size = (int(rle["size"][0]), int(rle["size"][1]))
                    if not isinstance(rle["counts"], (str, list)):
                        raise TypeError("counts")
                    # negatives hold an all-zero mask: emptiness is decided on the runs
                    empty = coco_rle_area(rle) == 0
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    self.problems.append(
                        Problem(
                            where,
                            f"{cid} / {name}: not a COCO RLE {{size, counts}} ({exc}); skipped",
                            sample=cid,
                        )
                    )
                    continue
                if cxr.size is None:
                    cxr.size = size
                elif cxr.size != size:
                    self.problems.append(
                        Problem(
                            where,
                            f"{cid} / {name}: size {list(size)} differs from the other "
                            f"tasks' {list(cxr.size)}",
                            sample=cid,
                        )
                    )
                if not empty:
                    rle = {"size": list(size), "counts": rle["counts"]}
                    cxr.regions[finding] = Region(size, coco_rles=(rle,))
            present = {canonical(n) for n in tasks if self._is_task(n)}
            missing = [t for t in LOCALIZED if t not in present]
            if missing:
                self.problems.append(
                    Problem(
                        where, f"{cid}: no mask for {', '.join(missing)}; read as empty", sample=cid
                    )
                )

    @staticmethod
    def _is_task(name: str) -> bool:
        try:
            return canonical(name) in LOCALIZED
        except ConfigError:
            return False

    def _read_annotations(self, path: Path, cxrs: dict[str, _Cxr]) -> None:
        where = str(path)
        for cid, entry in self._load_json(path).items():
            if not self._known(cid, where, cxrs):
                continue
            try:
                size = (int(entry["img_size"][0]), int(entry["img_size"][1]))
            except (KeyError, IndexError, TypeError, ValueError):
                self.problems.append(
                    Problem(where, f"{cid}: no `img_size` [h, w]; skipped", sample=cid)
                )
                continue
            cxr = cxrs[cid]
            cxr.size = size
            for name, contours in entry.items():
                if name == "img_size":
                    continue
                finding = self._task(name, where, cid)
                if finding is None:
                    continue
                polygons = self._polygons(contours, size, f"{cid} / {name}", where, cid)
                if polygons:
                    cxr.regions[finding] = Region(size, polygons=tuple(polygons))

    def _polygons(
        self, contours: Any, size: tuple[int, int], what: str, where: str, cid: str
    ) -> list[np.ndarray]:
        if not isinstance(contours, list):
            self.problems.append(
                Problem(where, f"{what}: not a list of contours; skipped", sample=cid)
            )
            return []
        h, w = size
        out = []
        for k, contour in enumerate(contours):
            try:
                pts = np.asarray(contour, dtype=np.float64)
            except (TypeError, ValueError):
                pts = np.zeros((0,))
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2 or not np.isfinite(pts).all():
                self.problems.append(
                    Problem(
                        where,
                        f"{what} contour {k}: not a list of [x, y] points; skipped",
                        sample=cid,
                    )
                )
                continue
            inside = np.clip(pts, 0.0, [w, h])
            if not np.array_equal(inside, pts):
                self.problems.append(
                    Problem(
                        where,
                        f"{what} contour {k}: reaches outside the {w}x{h} image; clipped",
                        sample=cid,
                    )
                )
            out.append(inside)
        return out

    def _check_positives(self, cxrs: dict[str, _Cxr]) -> None:
        """Make labels and regions agree, reporting where the files disagree."""
        where = str(self.gt_file)
        for cid, cxr in cxrs.items():
            for finding in list(cxr.regions):
                label = cxr.labels.get(finding)
                if label == 0:
                    self.problems.append(
                        Problem(
                            where,
                            f"{cid}: a {finding} region on a CXR labelled negative in "
                            f"{self.labels_csv.name}; region dropped",
                            sample=cid,
                        )
                    )
                    del cxr.regions[finding]
                elif label is None:
                    self.problems.append(
                        Problem(
                            where,
                            f"{cid}: {finding} has a region but no label; counted positive",
                            sample=cid,
                        )
                    )
                    cxr.labels[finding] = 1
            for finding in LOCALIZED:
                if cxr.labels.get(finding) == 1 and finding not in cxr.regions:
                    self.problems.append(
                        Problem(
                            where,
                            f"{cid}: labelled {finding} but has no segmentation; recognition only",
                            sample=cid,
                        )
                    )

    # -- samples ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def annotation(self, index: int) -> Sample:
        cid = self._ids[index]
        cxr = self._cxrs[cid]
        patient, study, view = cid.split("_", 2)
        meta = {"path": str(self.image_dir / patient / study / f"{view}.jpg"), **cxr.meta}
        if cxr.size is not None:
            meta["size"] = cxr.size
        return Sample(
            self.name, cid, None, labels=dict(cxr.labels), regions=dict(cxr.regions), meta=meta
        )
