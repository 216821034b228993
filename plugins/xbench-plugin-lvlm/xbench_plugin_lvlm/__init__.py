"""XBench plugin: decoder vision-language models (Qwen2.5-VL, Gemma 3 / MedGemma) through
`transformers`, asked one yes/no question per finding (MedFocus's direct-answer mode), with maps
from the answer token's attention to the image tokens. Registration only: nothing heavy is
imported here, so that `xbench list` stays fast."""

from __future__ import annotations

from typing import Any

from xbench_core import ExplainerSpec, ModelSpec, Option, hookimpl

QUESTION = "Is there evidence of {finding} in the image? Answer directly with yes or no without any explanation."
NEEDS = frozenset({"lvlm_attention"})

SPEC = ModelSpec(
    name="lvlm",
    summary="Decoder LVLM (Qwen2.5-VL, Gemma 3 / MedGemma) via transformers: score = P(yes) / "
    "(P(yes) + P(no)) of 'Is there evidence of {finding} in the image?'; native map = last-layer "
    "answer-token attention to the image tokens",
    factory="xbench_plugin_lvlm.model:LVLM",
    map_kind="cross_attention",
    capabilities=frozenset({"logits", "feature_layer", "lvlm_attention"}),
    note="eager attention (the maps read attention weights); bf16 on CUDA, fp32 on the CPU",
    options=(
        Option(
            "model",
            "path",
            help="a Hugging Face Hub id (google/medgemma-4b-it, Qwen/Qwen2.5-VL-3B-Instruct, any "
            "Qwen2.5-VL or Gemma 3 image-text model) or a local folder laid out as its snapshot; "
            "default google/medgemma-4b-it; env XBENCH_LVLM_MODEL",
        ),
        Option("checkpoint", str, help="'random': the architecture from the config with random weights"),
        Option("image_size", int, 224, "side of the letterboxed square given to the processor (MedFocus: 224)", min=28),
        Option(
            "question",
            str,
            QUESTION,
            "the user turn after the image; {finding} is replaced by the finding's phrase",
        ),
        Option("dtype", str, "auto", "weights: auto (bfloat16 with CUDA, else float32)",
               choices=("auto", "bfloat16", "float16", "float32")),
        Option("sequences", int, 16, "(image, finding) sequences per language-model call", min=1),
        Option("shared_prefix", bool, True, "run the tokens all questions share (system turn, image) once "
               "per image and reuse their keys and values (false: every sequence in full)"),
    ),
)

EXPLAINERS = (
    ExplainerSpec(
        name="lvlm-attention-mean",
        summary="LVLM answer-token attention to the image tokens, heads and layers averaged (no extra pass)",
        factory="xbench_plugin_lvlm.attribution:AttentionMean",
        requires=NEEDS,
    ),
    ExplainerSpec(
        name="lvlm-rollout",
        summary="LVLM attention rollout (Abnar and Zuidema 2020) of the answer token over the image tokens",
        factory="xbench_plugin_lvlm.attribution:Rollout",
        requires=NEEDS,
    ),
    ExplainerSpec(
        name="lvlm-gradient-attention",
        summary="LVLM gradient-weighted attention (Chefer et al. 2021): ReLU(dlogit/dA) * A, last layer, "
        "answer row; one extra forward and backward",
        factory="xbench_plugin_lvlm.attribution:GradientAttention",
        requires=NEEDS,
        needs_grad=True,
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """Register the lvlm model."""
    register(SPEC)


@hookimpl
def xbench_register_explainers(register: Any) -> None:
    """Register the LVLM attention explainers."""
    for spec in EXPLAINERS:
        register(spec)
