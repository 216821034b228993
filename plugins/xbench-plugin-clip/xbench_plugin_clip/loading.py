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

from xbench_blocks.prompts import quiet_open_clip, strip_open_clip_schema

from xbench_core import AssetError, CheckpointError, ConfigError
from xbench_core.assets import resolve_asset
from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

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
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Non-tensor entries of OpenAI's JIT archives that are not part of the module.
JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
CONFIG_FILE = "open_clip_config.json"
RANDOM_SEED = 0


@dataclass(frozen=True)
class CheckpointSource:
    """Where the weights come from: a weights file, and the folder's open_clip config if any."""

    weights: Path | None
    config_folder: Path | None = None


def _weights_in_folder(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(
        f"CLIP checkpoint folder {folder} holds no single open_clip weights file (looked for "
        f"{', '.join(WEIGHT_FILES)} or one *.safetensors/*.bin/*.pt file); it holds {listing}. "
        "Pass the weights file itself with --set clip.checkpoint=FILE."
    )


def resolve_checkpoint(checkpoint: str | None, variant: str) -> CheckpointSource:
    """Find the weights: 'random', a file, a folder, a Hub id, the env variable, cache or download."""
    if checkpoint is not None and checkpoint.strip().lower() == "random":
        return CheckpointSource(None)
    given = strip_open_clip_schema(checkpoint) if checkpoint else None
    user_value = given or os.environ.get(ENV) or None
    if user_value and Path(user_value).expanduser().is_dir():
        folder = Path(user_value).expanduser().resolve()
        config = folder if (folder / CONFIG_FILE).is_file() else None
        return CheckpointSource(_weights_in_folder(folder), config)
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
    import open_clip
    import torch

    if variant not in VARIANTS:
        raise ConfigError(f"clip.variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    name = f"local-dir:{config_folder}" if config_folder is not None else variant
    with torch.random.fork_rng(devices=[]), quiet_open_clip():
        torch.manual_seed(RANDOM_SEED)
        try:
            model = open_clip.create_model(
                name,
                pretrained=None,
                load_weights=False,
                force_quick_gelu=True,
                pretrained_image=False,
                pretrained_text=False,
                device="cpu",
            )
        except (ValueError, RuntimeError, FileNotFoundError, KeyError) as error:
            raise CheckpointError(
                f"open_clip could not build the CLIP model from {name}: {error}. If this is a "
                f"folder, check its {CONFIG_FILE}."
            ) from error
    if not isinstance(model, open_clip.CLIP):
        raise CheckpointError(
            f"{name} describes a {type(model).__name__}, not an OpenAI-style CLIP; use the "
            "plugin of that model instead."
        )
    return model.eval()


def load_weights(module: Any, weights: Path) -> None:
    """Read an open_clip/OpenAI state_dict safely and load it strictly (key diff on mismatch)."""
    state_dict = load_checkpoint(weights, strip_prefixes=("module.",), drop=JIT_EXTRAS)
    # open_clip's load_checkpoint accepts a 1-element logit_scale for a scalar one; so do we.
    scale = state_dict.get("logit_scale")
    if scale is not None and scale.ndim != module.logit_scale.ndim and scale.numel() == 1:
        state_dict["logit_scale"] = scale.reshape(module.logit_scale.shape)
    load_state_dict_strict(module, state_dict, source=str(weights))
