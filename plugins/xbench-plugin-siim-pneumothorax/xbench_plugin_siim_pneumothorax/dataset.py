"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019) as an XBench dataset.

Reads the download as it comes (reference/datasets.md section 2): the stage-1 `train-rle.csv` with
the nested `dicom-images-train/<Study>/<Series>/<SOP>.dcm` tree (the ImageId is the file stem), or
the stage-2 `stage_2_train.csv` (labels of stage-1 train + test, whose DICOMs are in
`dicom-images-train/` and `dicom-images-test/`). Each RLE row of an image stays one part of the
region (`Region.relative_rles`); the region is their union, decoded by the core's
`decode_relative_rle` (column-major relative runs, transposed to (H, W)).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import ConfigError, DataError, ImageReadError, Region, Sample
from xbench_core.io import ImageIndex
from xbench_core.io.layout import LabelTableDataset, select_listed

from .labels import SIZE, parse_labels

LABEL_NAMES = (
    "stage_2_train.csv",  # stage 2 labels stage-1 train + test: the larger set comes first
    "train-rle.csv",
    "stage_2_train.csv.gz",
    "train-rle.csv.gz",
    "stage_2_train.csv.zip",
    "train-rle.csv.zip",
    "siim-pneumothorax-train-rle.csv.gz",  # torchxrayvision's bundled copy
)
NESTED_FOLDERS = ("dicom-images-train", "dicom-images-test")
SPLITS = ("train", "test")
ID_COLUMNS = ("imageid", "image_id", "id", "sopinstanceuid", "image")
LAYOUT = """\
  <root>/train-rle.csv                     'ImageId, EncodedPixels' (stage 1)
  <root>/dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm
or stage 2:
  <root>/stage_2_train.csv                 'ImageId,EncodedPixels' (stage-1 train + test)
  <root>/dicom-images-train/..., <root>/dicom-images-test/...
(images are found by file stem anywhere below root or images_dir; the label file may also sit in
one subfolder, e.g. siim/, or be given with label_file=)"""
# The MD.ai export names Study and Series after the SOP instance: same UID root with .2 / .3 in
# place of .4 and the last number minus 1 / minus 2 (seen on the real SIIM DICOM and in MedKLIP's
# RSNA paths). Used only as a first guess; the stem index is the fallback.
_SOP = re.compile(r"^(1\.2\.276\.0\.7230010\.3\.1)\.4\.(.+)\.(\d+)$")


def nested_guess(image_id: str) -> str | None:
    """`<Study>/<Series>/<SOP>.dcm` for an MD.ai SOP UID, or None if it does not follow the pattern."""
    match = _SOP.match(image_id)
    if match is None or int(match.group(3)) < 2:
        return None
    head, middle, last = match.groups()
    n = int(last)
    return f"{head}.2.{middle}.{n - 1}/{head}.3.{middle}.{n - 2}/{image_id}.dcm"


class SIIMPneumothorax(LabelTableDataset):
    """SIIM-ACR: one sample per ImageId; finding `pneumothorax`, region the OR of its RLE rows.

    RLEs index the 1024x1024 DICOM, so every region has size (1024, 1024). `meta["path"]` from
    `annotation()` is where the image is expected; `__getitem__` sets it to the file actually
    read. Missing images are reported when images are opened (or at construction with
    `check_images=True`): the dataset can be inspected from its label file alone.
    """

    name = "siim-pneumothorax"
    findings = ("pneumothorax",)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        split_file: str | os.PathLike | None = None,
        label_file: str | os.PathLike | None = None,
        images_dir: str | os.PathLike | None = None,
        rle_encoding: str = "auto",
        check_images: bool = False,
    ) -> None:
        super().__init__(root, split, SPLITS, LAYOUT)
        label_path = self._find_label_file(label_file, LABEL_NAMES, LAYOUT)
        self.label_file = str(label_path)
        labels = parse_labels(label_path, rle_encoding)
        self.problems += labels.problems
        self.rle_encoding = labels.encoding
        self._ids = labels.ids
        self._targets = labels.targets
        self._offsets = labels.offsets
        self._rles = labels.rles

        rows = np.arange(len(self._ids))
        self.split_file = None
        if split == "test" and split_file is None:
            raise ConfigError(
                "siim-pneumothorax: split 'test' is a published subset of the labelled images "
                "(the competition's test labels are not public): give split_file= (a CSV with an "
                "ImageId column or a list of ImageIds)"
            )
        if split_file is not None:
            path = self._given(split_file)
            assert path is not None
            self.split_file = str(path)
            chosen = select_listed(
                path,
                set(self._ids.tolist()),
                self.problems,
                lambda iid: f"id {iid!r} is not in the label file; skipped",
                rows_per_id=("EncodedPixels",),  # a split in the label format: one row per RLE
                id_columns=ID_COLUMNS,
            )
            rows = np.searchsorted(self._ids, np.asarray(chosen, dtype=self._ids.dtype))
            if len(rows) == 0:
                raise DataError(
                    f"siim-pneumothorax: no image of split_file {path} is in {label_path}; is it a "
                    "split of this dataset (ImageId column)?"
                )
        self._rows = rows

        self._images_root = self._find_images_root(images_dir)
        bases = [self._images_root] if images_dir is not None else [label_path.parent, self.root]
        self._nested = [
            base / folder
            for base in dict.fromkeys(bases)
            for folder in NESTED_FOLDERS
            if (base / folder).is_dir()
        ]
        if images_dir is not None:
            self._nested.append(self._images_root)
        self._index = ImageIndex(self._images_root)
        if check_images:
            self._check_images()

    # -- annotations ---------------------------------------------------------------------------
    def annotation(self, index: int) -> Sample:
        """The index-th image's label, region (its RLE rows) and meta without opening the image."""
        j = int(self._rows[index])
        image_id = str(self._ids[j])
        label = int(self._targets[j])
        rles = tuple(self._rles[self._offsets[j] : self._offsets[j + 1]])
        regions = {"pneumothorax": Region(SIZE, relative_rles=rles)} if label and rles else {}
        meta: dict[str, Any] = {
            "path": self._expected_path(image_id),
            "size": SIZE,
            "image_id": image_id,
            "rle_rows": len(rles),
            "rle_encoding": self.rle_encoding,
        }
        return Sample(self.name, image_id, None, {"pneumothorax": label}, regions, meta)

    # -- images (found by `_resolve`: the nested guess, then the stem index) -------------------
    def _guesses(self, image_id: str) -> list[Path]:
        tail = nested_guess(image_id)
        return [folder / tail for folder in self._nested] if tail else []

    def _expected_path(self, image_id: str) -> str:
        if self._index.built:
            found = self._index.get(image_id)
            if found:
                return found
        guesses = self._guesses(image_id)
        return str(guesses[0] if guesses else self._images_root / f"{image_id}.dcm")

    def _resolve(self, image_id: str) -> str:
        for guess in self._guesses(image_id):
            if guess.is_file():
                return str(guess)
        found = self._index.get(image_id)
        if found is None:
            raise ImageReadError(
                f"siim-pneumothorax: no image for ImageId {image_id}: no file named "
                f"{image_id}.dcm/.png/.jpg below {self._images_root}. Check root/images_dir; "
                f"expected layout:\n{LAYOUT}"
            )
        return found
