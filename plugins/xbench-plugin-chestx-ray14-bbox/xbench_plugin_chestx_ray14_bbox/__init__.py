"""XBench dataset plugin for the NIH ChestX-ray14 (ChestX-ray8) bounding boxes, `BBox_List_2017.csv`.

Only the registration lives here; the loader is imported when the dataset is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xbench_core import DatasetSpec, Option, hookimpl

FINDINGS = (
    "atelectasis",
    "cardiomegaly",
    "pleural_effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
)


@hookimpl
def xbench_register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSpec(
            name="chestx-ray14-bbox",
            summary=(
                "NIH ChestX-ray14 BBox_List_2017: 984 radiologist boxes of 8 findings on 880 images "
                "(evaluation only), image labels from Data_Entry_2017"
            ),
            factory="xbench_plugin_chestx_ray14_bbox.dataset:ChestXray14BBox",
            findings=FINDINGS,
            splits=("test",),
            default_split="test",
            options=(
                Option(
                    "root",
                    "path",
                    required=True,
                    help="folder with BBox_List_2017.csv (and Data_Entry_2017*.csv, images/)",
                ),
                Option("split", str, "test", "the only split: the boxed images", choices=("test",)),
                Option(
                    "split_file",
                    "path",
                    None,
                    "CSV or text list of Image Index values (e.g. test_list.txt) to keep; unknown "
                    "ids are reported as problems",
                ),
                Option(
                    "bbox_file",
                    "path",
                    None,
                    "the box list (default: <root>/BBox_List_2017.csv or .csv.gz)",
                ),
                Option(
                    "data_entry",
                    "path",
                    None,
                    "the image-label file (default: <root>/Data_Entry_2017_v2020.csv, then "
                    "Data_Entry_2017.csv, plain or .gz)",
                ),
                Option(
                    "image_labels",
                    str,
                    "auto",
                    "where negatives come from: data_entry (all 8 labels from Data_Entry), boxes "
                    "(a finding without a box is negative), auto (data_entry when the file is there)",
                    choices=("auto", "data_entry", "boxes"),
                ),
                Option(
                    "image_dir",
                    "path",
                    None,
                    "folder of the PNGs (default: <root>/images, <root>/images_*/images; any other "
                    "file is found by name under root)",
                ),
            ),
        )
    )
