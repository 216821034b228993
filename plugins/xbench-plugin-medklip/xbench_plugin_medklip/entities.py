"""MedKLIP's entity descriptions: the official file, its parser and placeholders.

The 75 entities, their order and the table from XBench findings to them are in the core
(`xbench_blocks.fusion.MEDKLIP_ENTITIES`, `MEDKLIP_FINDINGS`; MAVL uses the same). The official code
reads the descriptions as `[json_book[i] for i in json_book]`: the JSON key order is the query
order, and the key for pneumonia is misspelt "eumonia" in the released file (harmless, order is
what counts).
"""

from __future__ import annotations

import json
from pathlib import Path

from xbench_blocks.fusion import COVID19_ENTITY
from xbench_blocks.fusion import MEDKLIP_ENTITIES as ENTITIES

from xbench_core import DataError

# The spellings the released files use for an entity, where they differ from the entity name.
_KEY_SPELLINGS = {"pneumonia": ("pneumonia", "eumonia")}

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
    accepted); an optional "covid19" entry after them (MAVL's copy of the file has one, MedKLIP's
    own does not) is kept as an extra entity. Anything else is an error that names the file and
    the key.
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
        if key != COVID19_ENTITY:
            raise DataError(
                f"{path}: unexpected entry {key!r} after the 75 entities; only {COVID19_ENTITY!r} "
                "may follow them."
            )
        out[key] = _text(raw[key], path, key)
    return out


def _text(value: object, path: Path, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: the description of {key!r} is not a non-empty string.")
    return value
