"""Reading cheXlocalize's third-party saliency files: heat-map pickles and predicted segmentations.

The CheXlocalize release ships DenseNet121 + Grad-CAM outputs for the validation set:
`gradcam_maps_val/<cxr_id>_<Task>_map.pkl`, each a pickled dict with `map` (a torch tensor
(1, 1, h, w), 320 x 320), `prob` (a float, or 14 values in `eval_constants.CHEXPERT_TASKS` order),
`task`, `gt`, `cxr_img` and `cxr_dims` (**(w, h)** of the original CXR), and
`gradcam_segmentations_val.json`, COCO RLE masks in the layout of the ground-truth file. These
helpers turn them into arrays and `Region`s, for comparing XBench's maps with the published ones.
The pickles are read with the core's safe unpickler (nothing in them is executed), not with
cheXlocalize's `CPU_Unpickler`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import ConfigError, DataError, Region, canonical
from xbench_core.checkpoints import read_pickle_safely

from .dataset import cxr_id


@dataclass(frozen=True)
class SaliencyMap:
    """One cheXlocalize heat-map pickle: the map as stored and what it was computed for."""

    task: str  # as written in the file, e.g. "Cardiomegaly", "Airspace Opacity"
    finding: str | None  # the canonical XBench id of the task
    map: np.ndarray  # float32, the stored shape (1, 1, h, w)
    prob: float | np.ndarray  # the model probability (or the 14 CheXpert probabilities)
    gt: int | None  # the ground-truth label the file records
    cxr_dims: tuple[int, int]  # (width, height) of the original CXR, as stored
    cxr_id: str | None  # from a `<cxr_id>_<Task>_map.pkl` file name

    @property
    def heatmap(self) -> np.ndarray:
        """The map as an (h, w) array."""
        return self.map.reshape(self.map.shape[-2:])

    @property
    def original_size(self) -> tuple[int, int]:
        """(height, width) of the CXR the map is stretched onto (cheXlocalize `eval.py`)."""
        return (int(self.cxr_dims[1]), int(self.cxr_dims[0]))


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, rebuilt by the safe reader
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def read_saliency_map(path: str | Path) -> SaliencyMap:
    """Read a cheXlocalize `*_map.pkl` through `xbench_core.checkpoints.read_pickle_safely`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"saliency map not found: {path}")
    try:
        raw = read_pickle_safely(path)
    except Exception as exc:  # the reader's own errors already say what is wrong with the file
        raise DataError(f"cannot read the saliency map {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: expected a pickled dict (map, prob, task, cxr_dims), got {type(raw)}"
        )
    missing = [k for k in ("map", "prob", "task", "cxr_dims") if k not in raw]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} in the pickle (keys: {sorted(raw)})")
    heat = _array(raw["map"]).astype(np.float32)
    if heat.ndim < 2:
        raise DataError(f"{path}: `map` has shape {heat.shape}, expected (1, 1, h, w)")
    prob = _array(raw["prob"]).astype(np.float64)
    task = str(raw["task"])
    try:
        finding: str | None = canonical(task)
    except ConfigError:
        finding = None
    dims = tuple(int(v) for v in raw["cxr_dims"])
    if len(dims) != 2:
        raise DataError(f"{path}: `cxr_dims` is {raw['cxr_dims']!r}, expected (width, height)")
    name_id = None
    if path.name.endswith("_map.pkl"):
        # cheXlocalize utils.parse_pkl_filename: <cxr_id>_<Task>_map.pkl
        name_id = cxr_id(path.name[: -len("_map.pkl")].rsplit("_", 1)[0])
    gt = raw.get("gt")
    return SaliencyMap(
        task=task,
        finding=finding,
        map=heat,
        prob=float(prob) if prob.ndim == 0 else prob,
        gt=int(_array(gt)) if gt is not None else None,
        cxr_dims=(dims[0], dims[1]),
        cxr_id=name_id,
    )


def read_segmentations(path: str | Path) -> dict[str, dict[str, Region]]:
    """Predicted (or ground-truth) segmentations in cheXlocalize's JSON layout, as regions.

    Returns {cxr_id: {finding id: Region}} with every task the file holds, empty masks included
    (a predicted empty mask is a prediction). Tasks outside the vocabulary raise a DataError.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read segmentations {path}: {exc}") from exc
    out: dict[str, dict[str, Region]] = {}
    for cid, tasks in data.items():
        regions: dict[str, Region] = {}
        for task, rle in tasks.items():
            try:
                finding = canonical(task)
                size = (int(rle["size"][0]), int(rle["size"][1]))
            except (ConfigError, KeyError, IndexError, TypeError, ValueError) as exc:
                raise DataError(f"{path}: {cid} / {task}: {exc}") from exc
            regions[finding] = Region(
                size, coco_rles=({"size": list(size), "counts": rle["counts"]},)
            )
        out[cid] = regions
    return out
