"""MedKLIP's 75 entities, their descriptions, and the table from XBench findings to entities.

The entity list and its order are those of `MedKLIP.disease_name` / `original_class` in the
official Sample_Zero-Shot_Grounding_RSNA/models/model_MedKLIP.py and test.py. The official code
reads the descriptions as `[json_book[i] for i in json_book]`: the JSON key order is the query
order, and the key for pneumonia is misspelt "eumonia" in the released file (harmless, order is
what counts).
"""

from __future__ import annotations

import json
from pathlib import Path

from xbench_core import DataError

ENTITIES: tuple[str, ...] = (
    "normal", "clear", "sharp", "sharply", "unremarkable", "intact", "stable", "free",
    "effusion", "opacity", "pneumothorax", "edema", "atelectasis", "tube", "consolidation",
    "process", "abnormality", "enlarge", "tip", "low", "pneumonia", "line", "congestion",
    "catheter", "cardiomegaly", "fracture", "air", "tortuous", "lead", "disease", "calcification",
    "prominence", "device", "engorgement", "picc", "clip", "elevation", "expand", "nodule", "wire",
    "fluid", "degenerative", "pacemaker", "thicken", "marking", "scar", "hyperinflate", "blunt",
    "loss", "widen", "collapse", "density", "emphysema", "aerate", "mass", "crowd", "infiltrate",
    "obscure", "deformity", "hernia", "drainage", "distention", "shift", "stent", "pressure",
    "lesion", "finding", "borderline", "hardware", "dilation", "chf", "redistribution",
    "aspiration", "tail_abnorm_obs", "excluded_obs",
)  # fmt: skip

# An entity the official evaluation code appends after the 75 (MAVL's Zero-shot_grounding/test.py
# does `original_class.append('covid19')` for COVID-Rural, for MedKLIP as well), available here
# when the descriptions file has a "covid19" entry (MAVL's copy does; MedKLIP's own does not).
EXTRA_ENTITY = "covid19"

# The spellings the released files use for an entity, where they differ from the entity name.
_KEY_SPELLINGS = {"pneumonia": ("pneumonia", "eumonia")}

# XBench finding id -> MedKLIP entity. Official mappings: ChestX-ray14 in
# Sample_zero-shot_Classification_CXR14/test.py (`chexray14_cls`: infiltration -> infiltrate,
# pleural thickening -> thicken, fibrosis -> tail_abnorm_obs, ...), CheXpert in MAVL's
# Zero-shot_classification/test.py (`chexpert_cls`: no finding -> normal, enlarged
# cardiomediastinum -> enlarge, lung opacity -> opacity, lung lesion -> lesion, pleural other ->
# abnormality, support devices -> device). The rows marked "XBench" have no official mapping and
# use the entity whose description names the finding (README, "Findings").
FINDING_TO_ENTITY: dict[str, str] = {
    "atelectasis": "atelectasis",
    "calcification": "calcification",
    "cardiomegaly": "cardiomegaly",
    "clavicle_fracture": "fracture",  # XBench: the only fracture entity
    "consolidation": "consolidation",
    "diffuse_nodule": "nodule",  # XBench
    "edema": "edema",
    "emphysema": "emphysema",
    "enlarged_cardiomediastinum": "enlarge",
    "fibrosis": "tail_abnorm_obs",
    "fracture": "fracture",
    "ground_glass_opacity": "opacity",  # XBench
    "hernia": "hernia",
    "infiltration": "infiltrate",
    "lung_lesion": "lesion",
    "lung_opacity": "opacity",
    "lung_tumor": "mass",  # XBench: "a lung mass ... can also view as lung cancer"
    "mass": "mass",
    "mediastinal_shift": "shift",  # XBench: "The mediastinal shift is ..."
    "no_finding": "normal",
    "nodule": "nodule",
    "nodule_mass": "lesion",  # XBench: "Lung nodules, ... lesions these terms all describe ..."
    "pleural_effusion": "effusion",
    "pleural_other": "abnormality",
    "pleural_thickening": "thicken",
    "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax",
    "rib_fracture": "fracture",  # XBench: "fracture is a break in a rib bone"
    "support_devices": "device",
}

# The official file, pinned to the commit read for this plugin (8e60b03, 2023-09-04).
DESCRIPTIONS_URL = (
    "https://raw.githubusercontent.com/MediaBrain-SJTU/MedKLIP/"
    "8e60b035ddc160f44a389f476b596f1052f02d8f/Sample_Zero-Shot_Grounding_RSNA/"
    "observation%20explanation.json"
)
DESCRIPTIONS_SHA256 = "bd7496a4c9dea12dd755aba0fd2d0f88405b6797ea9c0a9d298d1aef25d6cabd"
DESCRIPTIONS_FILENAME = "observation explanation.json"


def placeholder_descriptions() -> dict[str, str]:
    """Generated stand-ins for `checkpoint: random` without a descriptions file (no file needed)."""
    return {name: f"{name.replace('_', ' ')} is seen on the chest x-ray." for name in ENTITIES}


def read_descriptions(path: str | Path) -> dict[str, str]:
    """Parse an 'observation explanation.json': entity name -> description, in query order.

    The first 75 keys must be the official entities in the official order (the "eumonia" typo is
    accepted); an optional "covid19" entry after them is kept as an extra entity. Anything else is
    an error that names the file and the key.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"cannot read the MedKLIP descriptions {path}: {error}. Pass the official "
            "'observation explanation.json' with --set medklip.descriptions=PATH."
        ) from error
    if not isinstance(raw, dict) or len(raw) < len(ENTITIES):
        raise DataError(
            f"{path} is not a MedKLIP descriptions file: expected a JSON object with the "
            f"{len(ENTITIES)} entity descriptions, got {type(raw).__name__} of {len(raw)} entries."
        )
    keys = list(raw)
    out: dict[str, str] = {}
    for position, (name, key) in enumerate(zip(ENTITIES, keys)):
        if key not in _KEY_SPELLINGS.get(name, (name,)):
            raise DataError(
                f"{path}: entry {position} is {key!r}, expected {name!r}; MedKLIP reads the "
                "descriptions in key order, so the file must list the 75 entities in the official "
                "order (models/model_MedKLIP.py, disease_name)."
            )
        out[name] = _text(raw[key], path, key)
    for key in keys[len(ENTITIES) :]:
        if key != EXTRA_ENTITY:
            raise DataError(
                f"{path}: unexpected entry {key!r} after the 75 entities; only {EXTRA_ENTITY!r} "
                "may follow them."
            )
        out[key] = _text(raw[key], path, key)
    return out


def _text(value: object, path: Path, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: the description of {key!r} is not a non-empty string.")
    return value
