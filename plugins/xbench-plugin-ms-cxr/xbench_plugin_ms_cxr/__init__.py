"""XBench dataset plugin for MS-CXR (Boecking et al., ECCV 2022): phrase grounding on MIMIC-CXR.

Only the registration lives here; the loader is imported when the dataset is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xbench_core import DatasetSpec, Option, hookimpl

# category_name of the release -> canonical finding id
CATEGORIES = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Lung Opacity": "lung_opacity",
    "Pleural Effusion": "pleural_effusion",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}
FINDINGS = tuple(CATEGORIES.values())
SPLITS = ("all", "train", "val", "test")


@hookimpl
def xbench_register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSpec(
            name="ms-cxr",
            summary=(
                "MS-CXR: 1,162 report sentences with radiologist boxes (8 findings) on 1,153 "
                "MIMIC-CXR images; one sample per (image, sentence), queried with the sentence"
            ),
            factory="xbench_plugin_ms_cxr.dataset:MSCXR",
            findings=FINDINGS,
            splits=SPLITS,
            default_split="all",
            options=(
                Option(
                    "root",
                    "path",
                    required=True,
                    help="folder with MS_CXR_Local_Alignment_v1.1.0.csv (or v1.0.0, or the .json)",
                ),
                Option(
                    "split",
                    str,
                    "all",
                    "all (the published evaluations use every pair), or v1.1.0's train/val/test",
                    choices=SPLITS,
                ),
                Option(
                    "annotations",
                    "path",
                    None,
                    "the annotation file (default: the newest MS_CXR_Local_Alignment_v*.csv, else "
                    ".json, in root)",
                ),
                Option(
                    "image_root",
                    "path",
                    None,
                    "the MIMIC-CXR-JPG folder holding files/ (default: root); the annotation's "
                    "`path` column is relative to it",
                ),
                Option(
                    "split_file",
                    "path",
                    None,
                    "CSV or text list of dicom_id values to keep; unknown ids are reported as problems",
                ),
            ),
        )
    )
