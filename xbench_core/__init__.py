"""XBench core: plugin contracts, engine, grounding statistics, run store and reports.

The public API that plugins import lives here and in `xbench_core.testing`. Names are loaded on
first use (PEP 562), so that `import xbench_core` (and `xbench list`) imports neither torch nor numpy:
only the errors, the hook markers and the specs are loaded eagerly.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (  # noqa: F401 - re-exported
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
from .hookspecs import hookimpl  # noqa: F401 - re-exported
from .types import (  # noqa: F401 - re-exported
    DatasetSpec,
    ExplainerSpec,
    MetricSpec,
    ModelOutput,
    ModelSpec,
    Option,
    Sample,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Dataset": "dataset", "Problem": "dataset", "require_file": "dataset",
    "FINDINGS": "findings", "canonical": "findings", "display_name": "findings",
    "Geometry": "geometry", "letterbox_crop": "geometry", "resize": "geometry",
    "shortest_side_crop": "geometry", "squash": "geometry",
    "ID_COLUMNS": "io.files", "IMAGE_SUFFIXES": "io.files", "DicomHeader": "io.files", "IdList": "io.files",
    "ImageIndex": "io.files", "dicom_header": "io.files", "find_file": "io.files",
    "id_from_value": "io.files", "open_text": "io.files", "read_id_list": "io.files",
    "split_image_name": "io.files",
    "Region": "io.regions", "coco_rle_area": "io.regions", "decode_coco_rle": "io.regions",
    "decode_relative_rle": "io.regions", "encode_coco_rle": "io.regions",
    "read_image": "io.images",
    "Explainer": "model", "FeatureLayer": "model", "Model": "model",
    "load_checkpoint": "checkpoints", "load_state_dict_strict": "checkpoints",
    "read_pickle_safely": "checkpoints", "convert_checkpoint": "checkpoints",
    "resolve_asset": "assets", "xbench_home": "assets", "asset_cache_path": "assets",
    "write_bert_folder": "blocks.text", "generated_vocabulary": "blocks.text",
    "FrozenTextEncoder": "blocks.frozen_text", "resolve_text_encoder": "blocks.frozen_text",
    "embed_texts": "blocks.frozen_text", "tokenize_without_sep": "blocks.frozen_text",
    "bert_cls_embeddings": "blocks.frozen_text",
    "IMAGENET_MEAN": "blocks.preprocessing", "IMAGENET_STD": "blocks.preprocessing",
    "equalize_histogram": "blocks.preprocessing", "equalize_histogram_uint8": "blocks.preprocessing",
    "squash_imagenet": "blocks.preprocessing",
    "PreNormDecoderLayer": "blocks.decoder",
    "LabelTableDataset": "io.layout", "clip_box": "io.layout", "fit_regions_to_image": "io.layout", "image_fit_problem": "io.layout", "label_name_problem": "io.layout", "MIN_IMAGE_SIDE": "io.layout", "MAX_DOWNSCALE": "io.layout", "MAX_SQUASH": "io.layout", "group_label_rows": "io.layout", "image_index": "io.layout", "read_json": "io.layout", "require_choice": "io.layout", "select_listed": "io.layout", "under_root": "io.layout",
    "PreNormDecoder": "blocks.fusion", "init_normal_weights": "blocks.fusion", "MEDKLIP_ENTITIES": "blocks.fusion", "COVID19_ENTITY": "blocks.fusion", "MEDKLIP_FINDINGS": "blocks.fusion", "EntityQueries": "blocks.fusion", "EntityQueryModel": "blocks.fusion", "write_tiny_text_encoder": "blocks.fusion",
    "DISEASE_PHRASES": "blocks.knowledge", "OLD_BERT_BUFFERS": "blocks.knowledge", "PhraseQueryModel": "blocks.knowledge", "squash_bicubic_8bit": "blocks.knowledge",
    "PROMPT_OPTIONS": "blocks.prompts", "PROMPT_PHRASES": "blocks.prompts", "PromptEmbeddings": "blocks.prompts", "PromptPairMixin": "blocks.prompts", "quiet_open_clip": "blocks.prompts", "strip_open_clip_schema": "blocks.prompts",
    "get_registry": "plugins", "inspect_dataset": "inspect",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xbench_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(
    [
        "AssetError", "CheckpointError", "ConfigError", "DataError", "ImageReadError", "MapError",
        "PluginError", "UnsupportedFinding", "XBenchError", "hookimpl", "DatasetSpec", "ExplainerSpec",
        "MetricSpec", "ModelOutput", "ModelSpec", "Option", "Sample", *_LAZY,
    ]
)
