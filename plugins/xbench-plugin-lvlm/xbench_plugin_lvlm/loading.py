"""Finding and building a decoder LVLM with `transformers`: a local folder or a Hub id, offline rules
of the core (`xbench_core.assets`), gated repositories explained, random weights from the config.

The option `model` is a folder laid out as a Hub snapshot (config.json, the processor and tokenizer
files, the safetensors shards) or a Hub id, looked up in the order of `resolve_asset`: the value,
the environment variable XBENCH_LVLM_MODEL, XBench's cache, the user's Hugging Face cache, a
download (never with HF_HUB_OFFLINE=1). With `checkpoint=random` only the config and processor
files are fetched and the architecture is built from the config with seeded random weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from xbench_core import AssetError, CheckpointError, ConfigError
from xbench_core.assets import resolve_asset

ENV = "XBENCH_LVLM_MODEL"
DEFAULT_MODEL = "google/medgemma-4b-it"
ASSET = "LVLM model"
RANDOM_SEED = 0

# config.model_type -> the family code path of model.py
FAMILIES = {"qwen2_5_vl": "qwen2_5_vl", "gemma3": "gemma3"}

# What a `checkpoint=random` build needs from a Hub repository (the weights are not fetched).
PROCESSOR_FILES = (
    "config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.json", "chat_template.jinja",
    "tokenizer.model", "video_preprocessor_config.json", "generation_config.json",
)  # fmt: skip

GATED = {
    "google/": "Google's Gemma and MedGemma repositories are gated: accept the terms on the model's "
    "Hub page (Health AI Developer Foundations terms for MedGemma) with your Hugging Face account",
}


def _gated_message(repo: str, error: BaseException) -> str | None:
    """One line saying how to get a gated repository, or None when the error is not about access."""
    cause: BaseException | None = error
    names = []
    while cause is not None:
        names.append(type(cause).__name__)
        cause = cause.__cause__
    if not any(n in ("GatedRepoError", "RepositoryNotFoundError") for n in names) and "401" not in str(error):
        return None
    why = next((text for prefix, text in GATED.items() if repo.startswith(prefix)), "the repository is gated or private")
    return (
        f"{repo} cannot be downloaded without access: {why}, then log in on this machine "
        f"(`hf auth login`, or set HF_TOKEN) and run again; or download the repository elsewhere "
        f"and pass its folder with --set lvlm.model=FOLDER (or {ENV}=FOLDER)"
    )


def resolve_model(model: str | None, random_weights: bool) -> Path:
    """The local folder of `model` (a folder, or a Hub id fetched through the core's asset rules)."""
    import os

    value = model or os.environ.get(ENV) or DEFAULT_MODEL
    local = Path(value).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(
                f"lvlm.model is the folder {local}, which has no config.json; pass a folder laid out "
                "as a Hugging Face snapshot of the model (config.json, tokenizer and processor files)"
            )
        return local.resolve()
    repo = value
    try:
        if not random_weights:
            return resolve_asset(ASSET, repo, env=ENV, folder=True, option="lvlm.model",
                                 hint="a transformers image-text-to-text model")  # fmt: skip
        folder = None
        for name in PROCESSOR_FILES:
            try:
                path = resolve_asset(ASSET, repo, env=ENV, filename=name, option="lvlm.model")
            except AssetError as error:
                if name == "config.json":
                    raise
                if _gated_message(repo, error):
                    raise
                continue
            folder = folder or path.parent
        assert folder is not None
        return folder
    except AssetError as error:
        gated = _gated_message(repo, error)
        if gated:
            raise AssetError(gated) from error
        raise


def family_of(config: Any, folder: Path) -> str:
    """The plugin's code path for this architecture, or a ConfigError naming what is supported."""
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ConfigError(
            f"lvlm: {folder} holds a {kind!r} model; this plugin supports "
            f"{', '.join(sorted(FAMILIES))} (Qwen2.5-VL, Gemma 3 / MedGemma)"
        )
    return FAMILIES[kind]


def choose_dtype(dtype: str) -> Any:
    """`auto`: bfloat16 when CUDA is available (the engine's `auto` device), float32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def _no_zero_matrices(model: Any, std: float) -> None:
    """Draw every all-zero weight matrix of a random build from N(0, std): Gemma 3 initializes its
    image projection (`mm_input_projection_weight`) to zeros, which would cut the image off from
    the answer (every image the same score, every gradient map zero)."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2 and not parameter.any():
                parameter.normal_(0.0, std)


def build(folder: Path, random_weights: bool, dtype: Any) -> tuple[Any, Any, str]:
    """(the ForConditionalGeneration model in eval mode, its processor, the family).

    Eager attention: the maps read the attention weights, which the SDPA and flash kernels do not
    return.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"cannot read the model config in {folder}: {error}".replace("\n", " ")) from error
    family = family_of(config, folder)
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"cannot build the processor (tokenizer, chat template, image processor) from {folder}: "
            f"{error}".replace("\n", " ")
        ) from error
    if getattr(processor, "chat_template", None) is None:
        raise CheckpointError(f"{folder} has no chat template (chat_template.jinja or .json); the prompts need it")
    with contextlib.ExitStack() as stack:
        if random_weights:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(RANDOM_SEED)
            model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager", dtype=dtype)
            _no_zero_matrices(model, float(getattr(config.get_text_config(), "initializer_range", 0.02)))
        else:
            try:
                model = AutoModelForImageTextToText.from_pretrained(
                    folder, attn_implementation="eager", dtype=dtype, local_files_only=True
                )
            except (OSError, ValueError, RuntimeError) as error:
                raise CheckpointError(
                    f"cannot load the weights in {folder}: {error}".replace("\n", " ")
                    + " (use --set lvlm.checkpoint=random to run the architecture with random weights)"
                ) from error
    return model.eval().requires_grad_(False), processor, family
