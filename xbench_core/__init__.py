"""XBench core: plugin contracts, engine, grounding statistics, run store and reports.

The public API that plugins import lives here and in `xbench_core.testing`. Importing this package
does not import torch.
"""

from .dataset import Dataset, Problem, require_file
from .errors import (
    AssetError,
    CheckpointError,
    ConfigError,
    DataError,
    ImageReadError,
    MapError,
    PluginError,
    UnsupportedFinding,
    XBenchError,
)
from .findings import FINDINGS, canonical, display_name
from .geometry import Geometry, letterbox_crop, resize, shortest_side_crop, squash
from .hookspecs import hookimpl
from .io.files import (
    ID_COLUMNS,
    IMAGE_SUFFIXES,
    DicomHeader,
    IdList,
    ImageIndex,
    dicom_header,
    find_file,
    id_from_value,
    open_text,
    read_id_list,
    split_image_name,
)
from .io.regions import (
    Region,
    coco_rle_area,
    decode_coco_rle,
    decode_relative_rle,
    encode_coco_rle,
)
from .model import Explainer, FeatureLayer, Model
from .types import (
    DatasetSpec,
    ExplainerSpec,
    MetricSpec,
    ModelOutput,
    ModelSpec,
    Option,
    Sample,
)

__version__ = "0.1.0"


def read_image(path, *, dataset=None, voi_lut=True):  # noqa: ANN001, ANN201 - re-export, lazily
    """Decode a DICOM, PNG or JPEG to float32 [0, 1] (see `xbench_core.io.images`)."""
    from .io.images import read_image as _read

    return _read(path, dataset=dataset, voi_lut=voi_lut)


def load_checkpoint(path, **kwargs):  # noqa: ANN001, ANN003, ANN201
    """Read a checkpoint's tensors safely (see `xbench_core.checkpoints.load_checkpoint`)."""
    from .checkpoints import load_checkpoint as _load

    return _load(path, **kwargs)


def load_state_dict_strict(module, state_dict, *, source):  # noqa: ANN001, ANN201
    """Strict load with a readable key diff (see `xbench_core.checkpoints`)."""
    from .checkpoints import load_state_dict_strict as _load

    return _load(module, state_dict, source=source)


def read_pickle_safely(path):  # noqa: ANN001, ANN201
    """Unpickle without executing code (see `xbench_core.checkpoints.read_pickle_safely`)."""
    from .checkpoints import read_pickle_safely as _read

    return _read(path)


def resolve_asset(name, given=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
    """Find a file a plugin needs (see `xbench_core.assets.resolve_asset`)."""
    from .assets import resolve_asset as _resolve

    return _resolve(name, given, **kwargs)


__all__ = [
    "AssetError", "CheckpointError", "ConfigError", "DataError", "Dataset", "DatasetSpec",
    "DicomHeader", "Explainer", "ExplainerSpec", "FINDINGS", "FeatureLayer", "Geometry",
    "ID_COLUMNS", "IMAGE_SUFFIXES", "IdList", "ImageIndex", "ImageReadError", "MapError",
    "MetricSpec", "Model", "ModelOutput", "ModelSpec", "Option", "PluginError", "Problem",
    "Region", "Sample", "UnsupportedFinding", "XBenchError", "canonical", "coco_rle_area",
    "decode_coco_rle", "decode_relative_rle", "dicom_header", "display_name", "encode_coco_rle",
    "find_file", "hookimpl", "id_from_value", "letterbox_crop", "load_checkpoint",
    "load_state_dict_strict", "open_text", "read_id_list", "read_image", "read_pickle_safely",
    "require_file", "resize", "resolve_asset", "shortest_side_crop", "split_image_name", "squash",
]  # fmt: skip
