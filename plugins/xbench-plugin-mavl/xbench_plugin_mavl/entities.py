"""MAVL's entity descriptions and visual aspects: the official files, their parsers and
placeholders.

The entities are `original_class` of the official Zero-shot_grounding/test.py, MedKLIP's list
(`xbench_blocks.fusion.MEDKLIP_ENTITIES`; the table from XBench findings to them: `MEDKLIP_FINDINGS`),
plus covid19 when both files have it, as the official COVID configs append it. Each entity has 9
concepts: its description (MAVL's 'observation explanation.json', read by name:
`[json_book[i] for i in original_class]`) and 8 GPT-4 visual aspects
(Pretrain/concept_gen/gpt4_mimic.json, read by name: `{i: concepts[i] for i in original_class}`),
in the order border, fluid, location, opacity, other, patterns, shape, texture.
"""

from __future__ import annotations

import json
from pathlib import Path

from xbench_blocks.fusion import COVID19_ENTITY
from xbench_blocks.fusion import MEDKLIP_ENTITIES as ENTITIES

from xbench_core import DataError

ASPECTS: tuple[str, ...] = (
    "border", "fluid", "location", "opacity", "other", "patterns", "shape", "texture",
)  # fmt: skip
CONCEPTS: tuple[str, ...] = ("description", *ASPECTS)
# The concepts the official grounding averages: ws.view(B, n_disease, 9, -1)[:, :, [0, 6, 7, 8]]
MAP_CONCEPTS: tuple[int, ...] = (0, 6, 7, 8)
_ASPECT_SPELLINGS = {"other": ("other", "others")}  # three entries of gpt4_mimic.json say "others"

# The official files, pinned to the commit read for this plugin (1597030, 2024-07-02).
_RAW = "https://raw.githubusercontent.com/HieuPhan33/MAVL/15970307d6a82b054f1c2da91bb6672346a40cb0/"
DESCRIPTIONS_URL = _RAW + "Zero-shot_grounding/observation%20explanation.json"
DESCRIPTIONS_SHA256 = "453b9b8da7739ad7b5f84649fc9bc275e3317cd0ccb62616033f964287b9832e"
DESCRIPTIONS_FILENAME = "observation explanation.json"
ASPECTS_URL = _RAW + "Pretrain/concept_gen/gpt4_mimic.json"
ASPECTS_SHA256 = "f03b7f86839f8023e10789baa7d297356795844038fadfde55ddbfc30a6cf482"
ASPECTS_FILENAME = "gpt4_mimic.json"

_NAMES = (*ENTITIES, COVID19_ENTITY)  # both released files have covid19


def placeholder_descriptions() -> dict[str, str]:
    """Generated stand-ins for `checkpoint: random` without files (covid19 included)."""
    return {name: f"{name.replace('_', ' ')} is seen on the chest x-ray." for name in _NAMES}


def placeholder_aspects() -> dict[str, list[str]]:
    """Generated stand-ins for the 8 aspects of every entity (covid19 included)."""
    return {
        name: [f"{aspect}: the {aspect} of {name.replace('_', ' ')}." for aspect in ASPECTS]
        for name in _NAMES
    }


def _load_entities(path: Path, what: str, noun: str, official: str) -> dict:
    """The JSON object of a MAVL file (`what`: descriptions or aspects, also its option), which
    must have an entry (its `noun`) for every entity; else a DataError naming `official`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"cannot read the MAVL {what} {path}: {error}. Pass the official file with "
            f"--set mavl.{what}=PATH."
        ) from error
    if not isinstance(raw, dict):
        raise DataError(f"{path} is not a MAVL {what} file: expected a JSON object.")
    missing = [name for name in ENTITIES if name not in raw]
    if missing:
        raise DataError(
            f"{path} has no {noun} for {len(missing)} MAVL entities: {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}. Pass MAVL's {official}."
        )
    return raw


def read_descriptions(path: str | Path) -> dict[str, str]:
    """Parse MAVL's 'observation explanation.json': entity -> description, in the official entity
    order, plus covid19 when present. Entries are looked up by name, as the official code does;
    other entries are not used."""
    path = Path(path)
    official = "'observation explanation.json' (Zero-shot_grounding/)"
    raw = _load_entities(path, "descriptions", "description", official)
    out = {}
    for name in _NAMES:
        if name in raw:
            value = raw[name]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}: the description of {name!r} is not a non-empty string.")
            out[name] = value
    return out


def read_aspects(path: str | Path) -> dict[str, list[str]]:
    """Parse gpt4_mimic.json: entity -> its 8 aspect texts in the order border, fluid, location,
    opacity, other, patterns, shape, texture (each text starts with its aspect's name)."""
    path = Path(path)
    raw = _load_entities(path, "aspects", "aspects", "Pretrain/concept_gen/gpt4_mimic.json")
    out = {}
    for name in _NAMES:
        if name not in raw:
            continue
        texts = raw[name]
        if not isinstance(texts, list) or len(texts) != len(ASPECTS):
            raise DataError(
                f"{path}: entity {name!r} has {len(texts) if isinstance(texts, list) else texts!r} "
                f"aspects; MAVL needs exactly {len(ASPECTS)} ({', '.join(ASPECTS)})."
            )
        for aspect, text in zip(ASPECTS, texts):
            label = text.split(":", 1)[0].strip().lower() if isinstance(text, str) else None
            if label not in _ASPECT_SPELLINGS.get(aspect, (aspect,)):
                raise DataError(
                    f"{path}: entity {name!r}: expected the {aspect!r} aspect, got {text!r}; the "
                    f"aspects must come in the order {', '.join(ASPECTS)}, because the grounding "
                    "map averages concepts 0, 6, 7, 8 by position."
                )
        out[name] = list(texts)
    return out
