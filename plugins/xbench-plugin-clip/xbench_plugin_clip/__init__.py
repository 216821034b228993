"""XBench plugin: OpenAI CLIP (Radford et al., 2021), ViT-B/16 or RN50, loaded through open_clip.
Registration only: nothing heavy is imported here, so that `xbench list` stays fast."""

from __future__ import annotations

from typing import Any

from xbench_blocks.prompts import PROMPT_OPTIONS

from xbench_core import ModelSpec, Option, hookimpl

SPEC = ModelSpec(
    name="clip",
    summary="OpenAI CLIP (ViT-B/16 default, or RN50) via open_clip: pos/neg prompt softmax score; "
    "native map = patch-token (RN50: MaskCLIP) similarity with the positive prompt",
    factory="xbench_plugin_clip.model:OpenAICLIP",
    map_kind="similarity",
    capabilities=frozenset({"logits", "feature_layer"}),
    note="general-domain CLIP: not trained on chest X-rays; its patch-token maps are known to be "
    "noisy (no MaskCLIP/CLIP-Surgery trick applied for ViT)",
    options=(
        Option(
            "checkpoint",
            "path",
            help="open_clip weights of the OpenAI model: a .safetensors/.bin/.pt file, a folder "
            "holding one (and optionally open_clip_config.json), a Hugging Face Hub id (default "
            "timm/vit_base_patch16_clip_224.openai or timm/resnet50_clip.openai), or 'random'; "
            "env XBENCH_CLIP_CHECKPOINT",
        ),
        Option(
            "variant",
            str,
            default="ViT-B-16",
            choices=("ViT-B-16", "RN50"),
            help="image tower: ViT-B-16 (14x14 map) or RN50 (7x7 MaskCLIP map)",
        ),
        Option(
            "text_encoder",
            "path",
            help="the CLIP BPE vocabulary file (bpe_simple_vocab_16e6.txt.gz); default: the copy "
            "shipped inside open_clip (the text weights come from the checkpoint)",
        ),
        *PROMPT_OPTIONS,
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """Register the CLIP model."""
    register(SPEC)
