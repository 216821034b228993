"""XBench dataset plugin for CheXlocalize (Saporta et al., Nature Machine Intelligence 2022):
radiologist segmentations of 10 findings on the CheXpert validation and test sets.

Only the registration lives here; the loader is imported when the dataset is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xbench_core import DatasetSpec, Option, hookimpl

# The ten localization tasks (cheXlocalize `eval_constants.LOCALIZATION_TASKS`), then the CheXpert
# labels that are image labels only.
LOCALIZED = (
    "enlarged_cardiomediastinum",
    "cardiomegaly",
    "lung_lesion",
    "lung_opacity",
    "edema",
    "consolidation",
    "atelectasis",
    "pneumothorax",
    "pleural_effusion",
    "support_devices",
)
IMAGE_ONLY = ("no_finding", "pneumonia", "pleural_other", "fracture")


@hookimpl
def xbench_register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSpec(
            name="chexlocalize",
            summary=(
                "CheXlocalize: radiologist segmentations of 10 findings on CheXpert val (234 "
                "CXRs) and test (668); the other CheXpert labels are image labels only"
            ),
            factory="xbench_plugin_chexlocalize.dataset:CheXlocalize",
            findings=LOCALIZED + IMAGE_ONLY,
            splits=("val", "test"),
            default_split="test",
            options=(
                Option(
                    "root",
                    "path",
                    required=True,
                    help="folder with CheXpert/ (images, {val,test}_labels.csv) and CheXlocalize/",
                ),
                Option("split", str, "test", "val or test", choices=("val", "test")),
                Option(
                    "split_file",
                    "path",
                    None,
                    "CSV or text list of CXR ids (patient64541_study1_view1_frontal) or CheXpert "
                    "paths to keep; unknown ids are reported as problems",
                ),
                Option(
                    "regions",
                    str,
                    "segmentations",
                    "segmentations (gt_segmentations_<split>.json, COCO RLE) or polygons "
                    "(gt_annotations_<split>.json, the radiologists' contours)",
                    choices=("segmentations", "polygons"),
                ),
                Option(
                    "labels_csv",
                    "path",
                    None,
                    "the CheXpert label CSV (default: CheXpert/<split>_labels.csv, then the "
                    "CheXpert-v1.0 names valid.csv / test.csv)",
                ),
                Option(
                    "gt_dir",
                    "path",
                    None,
                    "folder of gt_segmentations_<split>.json / gt_annotations_<split>.json "
                    "(default: <root>/CheXlocalize, then <root>)",
                ),
                Option(
                    "image_dir",
                    "path",
                    None,
                    "folder holding patient*/study*/view*.jpg (default: <root>/CheXpert/<split>, "
                    "then CheXpert-v1.0/valid or /test)",
                ),
                Option("frontal_only", bool, False, "keep only frontal views"),
            ),
        )
    )
