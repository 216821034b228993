"""XBench plugin registering the CARZero model (Lai et al., CVPR 2024; github.com/laihaoran/CARZero).

Only the specification lives here: torch and transformers are imported when the model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xbench_core import ModelSpec, Option, hookimpl

__version__ = "0.1.0"


@hookimpl
def xbench_register_models(register: Callable[[Any], None]) -> None:
    register(
        ModelSpec(
            name="carzero",
            summary=(
                "CARZero (CVPR 2024): MAE ViT-B/16 + BioClinicalMPBERT fused by a cross-attention "
                "decoder; 'There is {finding}' prompts; native map = image-to-text cross-attention"
            ),
            factory="xbench_plugin_carzero.model:CARZero",
            map_kind="cross_attention",
            capabilities=frozenset({"logits", "feature_layer"}),
            note=(
                "score = sigmoid((image-to-text logit + text-to-image logit) / 2); the official "
                "code ranks the raw mean logit, the sigmoid keeps that order"
            ),
            options=(
                Option(
                    "checkpoint",
                    "path",
                    None,
                    "CARZero_best_model.ckpt (Lightning file), a folder holding it, a Hugging "
                    "Face Hub id, or 'random' for random weights; default: "
                    "$XBENCH_CARZERO_CHECKPOINT or the XBench cache",
                ),
                Option(
                    "text_encoder",
                    "path",
                    None,
                    "BioClinicalMPBERT config and vocabulary: a local folder or a Hub id "
                    "(default Laihaoran/BioClinicalMPBERT or $XBENCH_CARZERO_TEXT_ENCODER); the "
                    "weights come from the checkpoint",
                ),
            ),
        )
    )
