"""XBench plugin: BioViL (Boecking et al., ECCV 2022) and BioViL-T (Bannur et al., CVPR 2023),
Microsoft's chest X-ray vision-language models (ResNet-50 image tower, CXR-BERT text tower, MIT
licence), ported from hi-ml-multimodal. Registration only: nothing heavy is imported here."""

from __future__ import annotations

from typing import Any

from xbench_core import ModelSpec, Option, hookimpl

__version__ = "0.1.0"

SPEC = ModelSpec(
    name="biovil",
    summary="BioViL / BioViL-T (ResNet-50 + CXR-BERT, hi-ml-multimodal): positive vs negative "
    "prompt cosine score; native map = patch-text cosine, Gaussian-smoothed (sigma 1.5)",
    factory="xbench_plugin_biovil.model:BioViL",
    map_kind="similarity",
    capabilities=frozenset({"logits", "feature_layer", "phrases"}),
    note=(
        "score = (2 + cos(image, positive prompts) - cos(image, negative prompts)) / 4: above 0.5 "
        "exactly when the official zero-shot rule says positive"
    ),
    options=(
        Option(
            "variant",
            str,
            "biovil-t",
            "biovil-t (BioViL-T: resize 512, crop 448, 14 x 14 patches) or biovil (BioViL: crop "
            "480, 15 x 15)",
            choices=("biovil-t", "biovil"),
        ),
        Option(
            "checkpoint",
            "path",
            None,
            "the image weights: biovil_t_image_model_proj_size_128.pt (biovil-t) or "
            "biovil_image_resnet50_proj_size_128.pt (biovil), a folder holding it, a Hub id, or "
            "'random'; default: $XBENCH_BIOVIL_CHECKPOINT, the cache, or the Hub "
            "(microsoft/BiomedVLP-BioViL-T v1.0, microsoft/BiomedVLP-CXR-BERT-specialized v1.1)",
        ),
        Option(
            "text_encoder",
            "path",
            None,
            "the CXR-BERT folder (config.json, vocab.txt, pytorch_model.bin or model.safetensors) or "
            "a Hub id; default: $XBENCH_BIOVIL_TEXT_ENCODER or the variant's Hub repository; with "
            "checkpoint 'random' only its config and vocabulary are read (a BERT-base shape with a "
            "generated vocabulary when not given)",
        ),
        Option(
            "templates",
            list,
            help="positive prompt templates with {finding}, averaged (default: the official "
            "pneumonia prompts, and 'Findings consistent with {finding}', ... for the others)",
        ),
        Option(
            "negative_templates",
            list,
            help="negative prompt templates with {finding} (default: 'There is no {finding}', ...)",
        ),
    ),
)


@hookimpl
def xbench_register_models(register: Any) -> None:
    """Register the BioViL model (both variants)."""
    register(SPEC)
