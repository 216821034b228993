"""XBench plugin: the DeViDe model (Luo et al., "DeViDe: Faceted medical knowledge for improved
medical vision-language pre-training", arXiv 2404.03618), rebuilt from the paper. Registration
only: nothing heavy is imported here, so that `xbench list` stays fast."""

from __future__ import annotations

from typing import Any

from xbench_core import ModelSpec, Option, hookimpl

NOTE = (
    "architecture rebuilt from the paper (arXiv 2404.03618) on KAD's code base; DeViDe has no "
    "public code or checkpoint, and this module has not been checked against released weights"
)

SPEC = ModelSpec(
    name="devide",
    summary="DeViDe: ViT-B/16 (224) + Med-KEBERT disease phrases, KAD-style query decoder with "
    "[neg, pos] logits; native map = decoder cross-attention on 14x14 patches",
    factory="xbench_plugin_devide.model:DeViDe",
    map_kind="cross_attention",
    capabilities=frozenset({"logits", "feature_layer"}),
    note=NOTE,
    options=(
        Option(
            "checkpoint",
            "path",
            help="DeViDe weights (a file, or a Hugging Face Hub id) or 'random'; not public; "
            "env XBENCH_DEVIDE_CHECKPOINT",
        ),
        Option(
            "text_encoder",
            "path",
            help="Med-KEBERT config and tokenizer: a local folder or a hub id (default "
            "xmcmic/Med-KEBERT); env XBENCH_DEVIDE_TEXT_ENCODER",
        ),
        Option(
            "attention_layers",
            str,
            default="last",
            choices=("last", "mean"),
            help="native map: the last decoder layer's cross-attention (KAD's recipe) or the "
            "mean over the 4 layers",
        ),
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """Register the DeViDe model."""
    register(SPEC)
