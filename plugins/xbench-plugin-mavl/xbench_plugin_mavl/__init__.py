"""XBench plugin for MAVL (Phan et al., CVPR 2024; HieuPhan33/MAVL).

Only the registration lives here: torch, torchvision and transformers are imported when the model
is built, so that `xbench list` stays fast.
"""

from __future__ import annotations

from typing import Any

from xbench_core import ModelSpec, Option, hookimpl

__version__ = "0.1.0"

SPEC = ModelSpec(
    name="mavl",
    summary=(
        "MAVL: ResNet-50 (to layer3) + 4-layer decoder over 75 entities x 9 concepts (description "
        "+ 8 visual aspects) embedded by a frozen Bio_ClinicalBERT; score softmax(present), map = "
        "cross-attention of 4 concepts (14x14)"
    ),
    factory="xbench_plugin_mavl.model:MAVL",
    map_kind="cross_attention",
    capabilities=frozenset({"logits", "feature_layer"}),
    options=(
        Option(
            "checkpoint",
            str,
            None,
            help="checkpoint_full_40.pth / checkpoint_full_46.pth (a file, a folder holding it, a "
            "Hub id) or 'random'; also XBENCH_MAVL_CHECKPOINT",
        ),
        Option(
            "variant",
            str,
            "full_40",
            help="which released checkpoint a folder, the cache or a Hub id is searched for: "
            "full_40 (the grounding configs' choice) or full_46 (best zero-shot classification)",
            choices=("full_40", "full_46"),
        ),
        Option(
            "text_encoder",
            str,
            None,
            help="Bio_ClinicalBERT: a local folder (config.json, vocab.txt, weights) or a Hub id; "
            "default emilyalsentzer/Bio_ClinicalBERT (a generated random BERT of the same shape "
            "with checkpoint=random); also XBENCH_MAVL_TEXT_ENCODER",
        ),
        Option(
            "descriptions",
            "path",
            None,
            help="MAVL's 'observation explanation.json' (entity descriptions, read by name); "
            "downloaded from the official repository when not given; placeholders with "
            "checkpoint=random; also XBENCH_MAVL_DESCRIPTIONS",
        ),
        Option(
            "aspects",
            "path",
            None,
            help="MAVL's gpt4_mimic.json (8 visual aspects per entity); downloaded from the "
            "official repository when not given; placeholders with checkpoint=random; also "
            "XBENCH_MAVL_ASPECTS",
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
