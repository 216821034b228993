"""Building OpenAI CLIP with open_clip and loading its released weights safely.

The architecture comes from open_clip's own configs (`ViT-B-16`, `RN50`) with QuickGELU forced on,
as open_clip does for the `openai` pretrained tags (open_clip/pretrained.py: the openai entries
carry `quick_gelu=True`; open_clip/factory.py `create_model(..., force_quick_gelu=True)`). The
weights are read by the core's safe checkpoint reader and loaded strictly, never through
open_clip's `load_checkpoint` (which would `torch.load` the file). The extra entries of the OpenAI
JIT archives (`input_resolution`, `context_length`, `vocab_size`) are dropped, as open_clip's
`load_state_dict` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbench_blocks.prompts import create_open_clip, open_clip_weights_in, strip_open_clip_schema

from xbench_core import AssetError, ConfigError
from xbench_core.assets import resolve_asset

ENV = "XBENCH_CLIP_CHECKPOINT"
VARIANTS = ("ViT-B-16", "RN50")
# Where open_clip itself fetches the `openai` weights today (open_clip/pretrained.py, hf_hub entries).
DEFAULT_HUB = {
    "ViT-B-16": "timm/vit_base_patch16_clip_224.openai",
    "RN50": "timm/resnet50_clip.openai",
}
# File names of open_clip weights, most preferred first (open_clip/factory.py `_find_checkpoint_in_dir`).
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
# Non-tensor entries of OpenAI's JIT archives that are not part of the module.
JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
CONFIG_FILE = "open_clip_config.json"


@dataclass(frozen=True)
class CheckpointSource:
    """Where the weights come from: a weights file, and the folder's open_clip config if any."""

    weights: Path | None
    config_folder: Path | None = None


def resolve_checkpoint(checkpoint: str | None, variant: str) -> CheckpointSource:
    """Find the weights: 'random', a file, a folder, a Hub id, the env variable, cache or download."""
    if checkpoint is not None and checkpoint.strip().lower() == "random":
        return CheckpointSource(None)
    given = strip_open_clip_schema(checkpoint) if checkpoint else None
    user_value = given or os.environ.get(ENV) or None
    if user_value and Path(user_value).expanduser().is_dir():
        folder = Path(user_value).expanduser().resolve()
        config = folder if (folder / CONFIG_FILE).is_file() else None
        return CheckpointSource(
            open_clip_weights_in(folder, WEIGHT_FILES, "CLIP", "clip.checkpoint"), config
        )
    errors: list[AssetError] = []
    # open_clip prefers the safetensors copy of a Hub repository and falls back to the pickle.
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            path = resolve_asset(
                f"CLIP {variant} checkpoint",
                given,
                env=ENV,
                hub_repo=DEFAULT_HUB[variant],
                filename=filename,
                option="clip.checkpoint",
                hint="the OpenAI weights as open_clip publishes them",
            )
        except AssetError as error:
            errors.append(error)
            continue
        return CheckpointSource(Path(path))
    raise errors[0]


def build_architecture(variant: str, config_folder: Path | None) -> Any:
    """The open_clip CLIP module with random weights (seeded, so that `random` is reproducible).

    With a folder holding `open_clip_config.json` the architecture comes from that config (open_clip's
    `local-dir:` schema, weights not loaded by open_clip); otherwise from open_clip's built-in config
    of the variant. QuickGELU is forced on either way: the OpenAI weights were trained with it and a
    plain-GELU model runs without error but computes wrong features.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"clip.variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    name = f"local-dir:{config_folder}" if config_folder is not None else variant
    hint = f"If this is a folder, check its {CONFIG_FILE}; another model needs its own plugin."
    return create_open_clip(
        name, "CLIP", "an OpenAI-style CLIP", hint, pretrained=None, force_quick_gelu=True
    )
