"""The RSNA Pneumonia Detection Challenge (Kaggle 2018) as an XBench dataset.

Reads the Kaggle download as it comes (reference/datasets.md section 1): `stage_2_train_labels.csv`
with one row per box and `stage_2_train_images/<patientId>.dcm`, or the MD.ai nested layout
`<Study>/<Series>/<SOP>.dcm` found anywhere below the root. The region of an image is the union of
its boxes, as MedKLIP's RSNA grounding loader builds it (MediaBrain-SJTU/MedKLIP,
`Sample_Zero-Shot_Grounding_RSNA/dataset/dataset_RSNA.py`: `seg_map[y:y+h, x:x+w] = 1` on a
1024x1024 map): the core's half-open box [x, y, x + w, y + h] covers exactly those pixels for the
integer-valued boxes of the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import ConfigError, DataError, ImageReadError, Region, Sample
from xbench_core.io import (
    ImageIndex,
    dicom_header,
    find_file,
    id_from_value,
    read_id_list,
    split_image_name,
)
from xbench_core.io.layout import LabelTableDataset

from .labels import SIZE, Headers, parse_class_info, parse_headers, parse_labels

LABEL_NAMES = (
    "stage_2_train_labels.csv",
    "stage_2_train_labels.csv.zip",
    "stage_2_train_labels.csv.gz",
    "kaggle_stage_2_train_labels.csv.zip",  # torchxrayvision's bundled copy
    "stage_1_train_labels.csv",
)
HEADER_NAMES = (
    "stage_2_train_images_dicom_headers.csv",
    "stage_2_train_images_dicom_headers.csv.gz",
    "kaggle_stage_2_train_images_dicom_headers.csv.gz",
)
CLASS_INFO_NAMES = ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv")
# Flat image folders next to the label file, with the suffix their files carry.
FLAT_FOLDERS = (
    ("stage_2_train_images", ".dcm"),
    ("stage_1_train_images", ".dcm"),
    ("stage_2_train_images_jpg", ".jpg"),
    ("stage_2_train_images_png", ".png"),
)
SPLITS = ("train", "test")
ID_COLUMNS = ("patientid", "patient_id", "id", "image_id", "imageid")
PATH_COLUMNS = ("img_path", "image_path", "path", "filename", "file", "dicom_path")
LAYOUT = """\
  <root>/stage_2_train_labels.csv            patientId,x,y,width,height,Target (one row per box)
  <root>/stage_2_train_images/<patientId>.dcm
or the MD.ai nested layout:
  <root>/stage_2_train_labels.csv
  <root>/.../<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   (any depth below root)
optional: stage_2_detailed_class_info.csv, stage_2_train_images_dicom_headers.csv[.gz]
(the label file may also be given with label_file=, e.g. a .csv.zip)"""


def _holds_images(folder: Path, look: int = 100) -> bool:
    """Whether a folder holds image files itself (flat) rather than only subfolders (nested)."""
    try:
        with os.scandir(folder) as entries:
            for k, entry in enumerate(entries):
                if k >= look:
                    break
                if split_image_name(entry.name)[1] is not None and entry.is_file():
                    return True
    except OSError:
        pass
    return False


class RSNAPneumonia(LabelTableDataset):
    """RSNA Pneumonia: one sample per patientId; finding `pneumonia` with the union of its boxes.

    Boxes are in the 1024x1024 pixel frame of the DICOMs, so every region has size (1024, 1024).
    `meta["path"]` from `annotation()` is where the image is expected; `__getitem__` sets it to the
    file actually read. Missing images are reported when images are opened (or at construction
    with `check_images=True`), never otherwise: the dataset can be inspected from its label file.
    """

    name = "rsna-pneumonia"
    findings = ("pneumonia",)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        split_file: str | os.PathLike | None = None,
        label_file: str | os.PathLike | None = None,
        images_dir: str | os.PathLike | None = None,
        headers_file: str | os.PathLike | None = None,
        views: list[str] | None = None,
        check_images: bool = False,
    ) -> None:
        super().__init__(root, split, SPLITS, LAYOUT)
        label_path = self._find_label_file(label_file, LABEL_NAMES, LAYOUT)
        self.label_file = str(label_path)
        labels = parse_labels(label_path)
        self.problems += labels.problems
        self._ids = labels.ids
        self._targets = labels.targets
        self._offsets = labels.offsets
        self._boxes = labels.boxes

        self._headers: Headers | None = None
        headers_path = self._given(headers_file)
        if headers_path is not None and not headers_path.is_file():
            raise DataError(f"rsna-pneumonia: headers_file {headers_path} not found")
        headers_path = headers_path or find_file(label_path.parent, HEADER_NAMES, max_subdirs=0)
        if headers_path is not None:
            self._headers = parse_headers(headers_path, self._ids, self.problems)
        class_path = find_file(label_path.parent, CLASS_INFO_NAMES, max_subdirs=0)
        self._classes = (
            parse_class_info(class_path, self._ids, self.problems) if class_path else None
        )

        rows = np.arange(len(self._ids))
        if views:
            if self._headers is None:
                raise ConfigError(
                    "rsna-pneumonia: views= needs the view of each image, which the label file "
                    "lacks: give headers_file= (torchxrayvision's "
                    "kaggle_stage_2_train_images_dicom_headers.csv.gz) or put it next to the labels"
                )
            wanted = [str(v).strip().upper() for v in views]
            rows = rows[np.isin(self._headers.view, wanted)]

        self._path_stems: dict[str, str] = {}
        self.split_file = None
        if split == "test" and split_file is None:
            raise ConfigError(
                "rsna-pneumonia: split 'test' is a published subset of the Kaggle training labels "
                "(the Kaggle test labels are not public): give split_file=, e.g. MedKLIP's "
                "Sample_Zero-Shot_Grounding_RSNA/data_sample/test.csv"
            )
        if split_file is not None:
            path = self._given(split_file)
            assert path is not None
            listed = read_id_list(path, id_columns=ID_COLUMNS, path_columns=PATH_COLUMNS)
            chosen, problems = listed.select(
                set(self._ids.tolist()), lambda pid: f"id {pid!r} is not in the label file; skipped"
            )
            self.split_file = str(path)
            self.problems += problems
            self._path_stems = {
                pid: id_from_value(listed.paths[pid]) for pid in chosen if pid in listed.paths
            }
            picked = np.searchsorted(self._ids, np.asarray(sorted(chosen), dtype=self._ids.dtype))
            rows = np.intersect1d(rows, picked)
            if len(rows) == 0:
                raise DataError(
                    f"rsna-pneumonia: no image of split_file {path} is in {label_path}"
                    + (f" with views {views}" if views else "")
                    + "; is it a split of this dataset (patientId column)?"
                )
        self._rows = rows

        # Images: a flat Kaggle folder next to the labels, else any file below images_dir/root.
        self._images_root = self._find_images_root(images_dir)
        self._flat: tuple[Path, str] | None = None
        for base in dict.fromkeys([self._images_root, label_path.parent, self.root]):
            for folder, suffix in FLAT_FOLDERS:
                if (base / folder).is_dir():
                    self._flat = (base / folder, suffix)
                    break
            if self._flat is not None or images_dir is not None:
                break
        if self._flat is None and images_dir is not None and _holds_images(self._images_root):
            self._flat = (self._images_root, ".dcm")
        self.layout = "kaggle" if self._flat is not None else "nested"
        self._index = ImageIndex(self._images_root)
        self._by_header: dict[str, str] | None = None
        if check_images:
            self._check_images()

    # -- annotations ---------------------------------------------------------------------------
    def annotation(self, index: int) -> Sample:
        """The index-th image's labels, region and meta without opening the image."""
        j = int(self._rows[index])
        pid = str(self._ids[j])
        label = int(self._targets[j])
        regions: dict[str, Region] = {}
        start, stop = self._offsets[j], self._offsets[j + 1]
        if label == 1 and stop > start:
            regions["pneumonia"] = Region(SIZE, boxes=self._boxes[start:stop].copy())
        meta: dict[str, Any] = {
            "path": self._expected_path(pid),
            "size": SIZE,
            "patient_id": pid,
            "boxes": int(stop - start),
        }
        if self._headers is not None and self._headers.view[j]:
            meta["view"] = str(self._headers.view[j])
            if self._headers.age[j] >= 0:
                meta["age"] = int(self._headers.age[j])
            if self._headers.sex[j]:
                meta["sex"] = str(self._headers.sex[j])
            if not np.isnan(self._headers.spacing[j]):
                meta["pixel_spacing"] = float(self._headers.spacing[j])
        if self._classes is not None and self._classes[j]:
            meta["class"] = str(self._classes[j])
        return Sample(self.name, pid, None, {"pneumonia": label}, regions, meta)

    # -- images (found by `_resolve`: the flat folder, then the stem index) ---------------------
    def _expected_path(self, pid: str) -> str:
        if self._flat is not None:
            folder, suffix = self._flat
            return str(folder / f"{pid}{suffix}")
        if self._index.built:
            found = self._index.get(pid) or self._index.get(self._path_stems.get(pid, ""))
            if found:
                return found
        return str(self._images_root / f"{pid}.dcm")

    def _resolve(self, pid: str) -> str:
        if self._flat is not None:
            path = self._flat[0] / f"{pid}{self._flat[1]}"
            if path.is_file():
                return str(path)
        found = self._index.get(pid)
        if found is None and pid in self._path_stems:
            found = self._index.get(self._path_stems[pid])
        if found is None and self._flat is None:
            found = self._patient_id_map().get(pid)
        if found is None:
            where = f"{self._flat[0] / (pid + self._flat[1])} nor " if self._flat else ""
            tag = "" if self._flat else f", nor a DICOM there whose PatientID is {pid}"
            raise ImageReadError(
                f"rsna-pneumonia: no image for patientId {pid}: found neither {where}a file named "
                f"{pid}.dcm/.png/.jpg below {self._images_root}{tag}. Check root/images_dir; "
                f"expected layout:\n{LAYOUT}"
            )
        return found

    def _patient_id_map(self) -> dict[str, str]:
        """PatientID -> path for the indexed DICOMs whose file name is not a patientId.

        In the MD.ai export the files are named by SOPInstanceUID (MedKLIP's test.csv maps the
        patientId to such a path); when no split file gives that path, the PatientID tag of those
        DICOMs is read once (headers only).
        """
        if self._by_header is None:
            known = set(self._ids.tolist())
            hinted = set(self._path_stems.values())
            self._by_header = {}
            for stem, path in self._index.paths().items():
                if stem in known or stem in hinted or not path.lower().endswith((".dcm", ".dicom")):
                    continue
                try:
                    patient = dicom_header(path).patient_id
                except ImageReadError:  # unreadable files are reported when they are opened
                    continue
                if patient is not None and patient in known:
                    self._by_header.setdefault(patient, path)
        return self._by_header
