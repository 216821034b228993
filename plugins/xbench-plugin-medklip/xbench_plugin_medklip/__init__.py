"""XBench plugin for MedKLIP (Wu et al., ICCV 2023; MediaBrain-SJTU/MedKLIP).

Only the registration lives here: torch, torchvision and transformers are imported when the model
is built, so that `xbench list` stays fast.
"""

from __future__ import annotations

from typing import Any

from xbench_core import ModelSpec, Option, hookimpl

__version__ = "0.1.0"

SPEC = ModelSpec(
    name="medklip",
    summary=(
        "MedKLIP: ResNet-50 (to layer3) + 4-layer query decoder over 75 entity queries embedded "
        "by a frozen Bio_ClinicalBERT; score softmax(present), map = cross-attention (14x14)"
    ),
    factory="xbench_plugin_medklip.model:MedKLIP",
    map_kind="cross_attention",
    capabilities=frozenset({"logits", "feature_layer"}),
    options=(
        Option(
            "checkpoint",
            str,
            None,
            help="checkpoint_final.pth (a file, a folder holding it, a Hub id) or 'random'; "
            "also XBENCH_MEDKLIP_CHECKPOINT",
        ),
        Option(
            "text_encoder",
            str,
            None,
            help="Bio_ClinicalBERT: a local folder (config.json, vocab.txt, weights) or a Hub id; "
            "default emilyalsentzer/Bio_ClinicalBERT (a generated random BERT of the same shape "
            "with checkpoint=random); also XBENCH_MEDKLIP_TEXT_ENCODER",
        ),
        Option(
            "descriptions",
            "path",
            None,
            help="the official 'observation explanation.json' (75 entity descriptions, key order "
            "= query order); downloaded from the official repository when not given; placeholders "
            "with checkpoint=random; also XBENCH_MEDKLIP_DESCRIPTIONS",
        ),
        Option(
            "equalize_hist",
            bool,
            False,
            help="histogram-equalize the image first, as the official RSNA loader does for DICOMs",
        ),
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    register(SPEC)
