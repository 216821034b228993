"""XBench dataset plugin for the RSNA Pneumonia Detection Challenge (Kaggle 2018).

Only the registration lives here; the dataset is imported when it is built.
"""

from __future__ import annotations

from typing import Any

from xbench_core import DatasetSpec, Option, hookimpl

SPEC = DatasetSpec(
    name="rsna-pneumonia",
    summary="RSNA Pneumonia Detection Challenge (Kaggle 2018): 26,684 chest X-rays, "
    "6,012 with pneumonia boxes (1024x1024 DICOM)",
    factory="xbench_plugin_rsna_pneumonia.dataset:RSNAPneumonia",
    findings=("pneumonia",),
    splits=("train", "test"),
    default_split="train",
    options=(
        Option(
            "root",
            "path",
            required=True,
            help="folder with stage_2_train_labels.csv and stage_2_train_images/ (or the MD.ai "
            "nested <Study>/<Series>/<SOP>.dcm tree)",
        ),
        Option(
            "split",
            str,
            default="train",
            choices=("train", "test"),
            help="train: every image of the Kaggle label file (or the split_file subset); "
            "test: the subset listed by split_file (required)",
        ),
        Option(
            "split_file",
            "path",
            help="CSV (patientId/ID column) or text list of patientIds to keep, e.g. MedKLIP's "
            "RSNA grounding test.csv; unknown ids are reported as problems",
        ),
        Option(
            "label_file",
            "path",
            help="the labels CSV (.csv, .csv.gz or .csv.zip) if not in root as "
            "stage_2_train_labels.csv",
        ),
        Option("images_dir", "path", help="where the images are, if not below root"),
        Option(
            "headers_file",
            "path",
            help="torchxrayvision's DICOM-headers CSV (view, age, sex per image); found next to "
            "the labels when named stage_2_train_images_dicom_headers.csv[.gz]",
        ),
        Option("views", list, help="keep only these ViewPositions (PA, AP); needs headers_file"),
        Option(
            "check_images",
            bool,
            default=False,
            help="look for every image file at construction and report missing ones as problems",
        ),
    ),
)


@hookimpl
def xbench_register_datasets(register: Any) -> None:
    """Register the rsna-pneumonia dataset."""
    register(SPEC)
