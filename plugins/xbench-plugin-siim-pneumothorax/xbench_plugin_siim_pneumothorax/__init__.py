"""XBench dataset plugin for SIIM-ACR Pneumothorax Segmentation (Kaggle 2019).

Only the registration lives here; the dataset is imported when it is built.
"""

from __future__ import annotations

from typing import Any

from xbench_core import DatasetSpec, Option, hookimpl

SPEC = DatasetSpec(
    name="siim-pneumothorax",
    summary="SIIM-ACR Pneumothorax Segmentation (Kaggle 2019): 12,047 labelled chest X-rays, "
    "2,669 with pneumothorax masks (RLE, 1024x1024 DICOM)",
    factory="xbench_plugin_siim_pneumothorax.dataset:SIIMPneumothorax",
    findings=("pneumothorax",),
    splits=("train", "test"),
    default_split="train",
    options=(
        Option(
            "root",
            "path",
            required=True,
            help="folder with train-rle.csv or stage_2_train.csv and the dicom-images-train/ "
            "(and dicom-images-test/) trees",
        ),
        Option(
            "split",
            str,
            default="train",
            choices=("train", "test"),
            help="train: every image of the label file (or the split_file subset); "
            "test: the subset listed by split_file (required)",
        ),
        Option(
            "split_file",
            "path",
            help="CSV (ImageId column) or text list of ImageIds to keep, e.g. a published "
            "grounding test split; unknown ids are reported as problems",
        ),
        Option(
            "label_file",
            "path",
            help="the labels CSV (.csv, .csv.gz or .csv.zip) if not in root as stage_2_train.csv "
            "or train-rle.csv",
        ),
        Option("images_dir", "path", help="where the images are, if not below root"),
        Option(
            "rle_encoding",
            str,
            default="auto",
            choices=("auto", "relative", "absolute"),
            help="relative (the published label files), absolute (Kaggle standard RLE, 1-based "
            "starts) or auto (decided from the rows)",
        ),
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
    """Register the siim-pneumothorax dataset."""
    register(SPEC)
