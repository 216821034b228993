"""XBench plugin: BiomedCLIP (Zhang et al., "A Multimodal Biomedical Foundation Model Trained from
Fifteen Million Image-Text Pairs", NEJM AI 2025), loaded through open_clip. Registration only:
nothing heavy is imported here, so that `xbench list` stays fast."""

from __future__ import annotations

from typing import Any

from xbench_blocks.prompts import PROMPT_OPTIONS

from xbench_core import ModelSpec, Option, hookimpl

SPEC = ModelSpec(
    name="biomedclip",
    summary="BiomedCLIP (ViT-B/16 + PubMedBERT, 256 tokens) via open_clip: pos/neg prompt "
    "softmax score; native map = patch-token similarity with the positive prompt",
    factory="xbench_plugin_biomedclip.model:BiomedCLIP",
    map_kind="similarity",
    capabilities=frozenset({"logits", "feature_layer"}),
    options=(
        Option(
            "checkpoint",
            "path",
            help="open_clip_pytorch_model.bin of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_"
            "patch16_224: the file, a folder holding it (with open_clip_config.json and vocab.txt "
            "as on the Hub), a Hugging Face Hub id (default that repository), or 'random'; env "
            "XBENCH_BIOMEDCLIP_CHECKPOINT",
        ),
        Option(
            "text_encoder",
            "path",
            help="the BiomedBERT vocabulary: a vocab.txt, a folder holding it (a folder that also "
            "holds config.json defines the text tower), or a Hub id; default: vocab.txt beside "
            "the checkpoint or from its Hub repository, generated for 'random'; env "
            "XBENCH_BIOMEDCLIP_TEXT_ENCODER",
        ),
        *PROMPT_OPTIONS,
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """Register the BiomedCLIP model."""
    register(SPEC)
