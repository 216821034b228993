"""BiomedCLIP's queries: the finding phrase table and the positive/negative prompt templates.

BiomedCLIP has no fixed label set, so every finding that a phrase can state is supported. The three
catch-all labels (no finding, other diseases, other lesion) state nothing a "{finding}" versus
"no {finding}" prompt pair can test, so they are unsupported and never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xbench_core import ConfigError

# Canonical finding id -> lower-case phrase put into the templates. One table for the plugin.
QUERIES: dict[str, str] = {
    "aortic_enlargement": "aortic enlargement",
    "atelectasis": "atelectasis",
    "calcification": "calcification",
    "cardiomegaly": "cardiomegaly",
    "clavicle_fracture": "clavicle fracture",
    "consolidation": "consolidation",
    "copd": "chronic obstructive pulmonary disease",
    "covid19": "covid-19",
    "diffuse_nodule": "diffuse nodules",
    "edema": "edema",
    "emphysema": "emphysema",
    "enlarged_cardiomediastinum": "enlarged cardiomediastinum",
    "enlarged_pa": "enlarged pulmonary artery",
    "fibrosis": "fibrosis",
    "fracture": "fracture",
    "ground_glass_opacity": "ground-glass opacity",
    "hernia": "hernia",
    "ild": "interstitial lung disease",
    "infiltration": "infiltration",
    "lung_cavity": "lung cavity",
    "lung_cyst": "lung cyst",
    "lung_lesion": "lung lesion",
    "lung_opacity": "lung opacity",
    "lung_tumor": "lung tumor",
    "mass": "mass",
    "mediastinal_shift": "mediastinal shift",
    "nodule": "nodule",
    "nodule_mass": "nodule or mass",
    "pleural_effusion": "pleural effusion",
    "pleural_other": "pleural abnormality",
    "pleural_thickening": "pleural thickening",
    "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax",
    "rib_fracture": "rib fracture",
    "support_devices": "support devices",
    "tuberculosis": "tuberculosis",
}

PLACEHOLDER = "{finding}"


def check_templates(templates: Sequence[str], option: str) -> tuple[str, ...]:
    """Validate prompt templates: a non-empty list of strings, each holding `{finding}`."""
    if isinstance(templates, str):
        templates = [templates]
    out = tuple(str(t) for t in templates)
    if not out:
        raise ConfigError(
            f"biomedclip.{option} is empty; give at least one template with {PLACEHOLDER}"
        )
    for template in out:
        if PLACEHOLDER not in template:
            raise ConfigError(
                f"biomedclip.{option}: template {template!r} lacks {PLACEHOLDER}, so every finding "
                f"would get the same prompt; write it like 'no {PLACEHOLDER}'"
            )
    return out


def fill(template: str, phrase: str) -> str:
    """The prompt of one template for one phrase (plain replacement: other braces stay as they are)."""
    return template.replace(PLACEHOLDER, phrase)


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text side of one run: per finding, the L2-normalized positive and negative prompt
    embeddings ([F, D] each, ensembles already averaged) on the model's device."""

    findings: tuple[str, ...]
    positive: Any
    negative: Any
    positive_prompts: tuple[tuple[str, ...], ...]
    negative_prompts: tuple[tuple[str, ...], ...]
