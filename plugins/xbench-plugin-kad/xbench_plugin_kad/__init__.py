"""XBench plugin: the KAD model (Zhang et al., "Knowledge-enhanced visual-language pre-training on
chest radiology images", Nature Communications 2023). Registration only: nothing heavy is imported
here, so that `xbench list` stays fast."""

from __future__ import annotations

from typing import Any

from xbench_core import ModelSpec, Option, hookimpl

SPEC = ModelSpec(
    name="kad",
    summary="KAD: ResNet-50 (512 or 1024) + Med-KEBERT disease phrases, query decoder with "
    "[neg, pos] logits; native map = last decoder layer's cross-attention",
    factory="xbench_plugin_kad.model:KAD",
    map_kind="cross_attention",
    capabilities=frozenset({"logits", "feature_layer"}),
    options=(
        Option(
            "checkpoint",
            "path",
            help="best_valid.pt of KAD-512 or KAD-1024 (a file, a folder holding it, a Hugging "
            "Face Hub id) or 'random'; env XBENCH_KAD_CHECKPOINT",
        ),
        Option(
            "text_encoder",
            "path",
            help="Med-KEBERT config and tokenizer: a local folder or a hub id (default "
            "xmcmic/Med-KEBERT); its weights come from the checkpoint; env XBENCH_KAD_TEXT_ENCODER",
        ),
        Option(
            "resolution",
            int,
            default=512,
            choices=(512, 1024),
            help="input size of the variant: 512 (KAD-512, 16x16 map) or 1024 (KAD-1024, 32x32)",
        ),
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """Register the KAD model."""
    register(SPEC)
