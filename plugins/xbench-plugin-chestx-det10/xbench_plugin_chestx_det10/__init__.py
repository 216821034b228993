"""XBench dataset plugin for ChestX-Det10 (Deepwise, 2020) and its 13-class extension ChestX-Det.

Only the registration lives here; the loader is imported when the dataset is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xbench_core import DatasetSpec, Option, hookimpl

FINDINGS = (
    "atelectasis",
    "calcification",
    "consolidation",
    "pleural_effusion",
    "emphysema",
    "fibrosis",
    "fracture",
    "mass",
    "nodule",
    "pneumothorax",
)


@hookimpl
def xbench_register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSpec(
            name="chestx-det10",
            summary=(
                "ChestX-Det10: 3,543 NIH ChestX-ray14 images with instance boxes of 10 findings "
                "(train 3,001 / test 542); the 13-class ChestX-Det files add polygons and "
                "cardiomegaly, diffuse nodule, pleural thickening"
            ),
            factory="xbench_plugin_chestx_det10.dataset:ChestXDet10",
            findings=FINDINGS,
            splits=("train", "test"),
            default_split="test",
            options=(
                Option(
                    "root",
                    "path",
                    required=True,
                    help="folder with train.json/test.json (or ChestX_Det_*.json) and the PNG folders",
                ),
                Option("split", str, "test", "train or test", choices=("train", "test")),
                Option(
                    "split_file",
                    "path",
                    None,
                    "CSV or text list of image ids (e.g. 36204 or 36204.png) to keep; unknown ids "
                    "are reported as problems",
                ),
                Option(
                    "label_file",
                    "path",
                    None,
                    "the annotation JSON (default: <root>/<split>.json, then "
                    "<root>/ChestX_Det_<split>.json)",
                ),
                Option(
                    "image_dir",
                    "path",
                    None,
                    "folder of the PNGs (default: <root>/<split>_data, <root>/<split>, "
                    "<root>/images; any other file is found by name under root)",
                ),
                Option(
                    "regions",
                    str,
                    "boxes",
                    "boxes, or polygons (only with the 13-class ChestX-Det files)",
                    choices=("boxes", "polygons"),
                ),
                Option(
                    "box_convention",
                    str,
                    "inclusive",
                    "inclusive: x2, y2 are the last covered pixel, as the official eval.py "
                    "(+1 on reading); half_open: x2, y2 are exclusive edges",
                    choices=("inclusive", "half_open"),
                ),
            ),
        )
    )
