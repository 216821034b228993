"""The canonical finding vocabulary shared by every dataset and model.

Datasets map their label names onto these ids (`canonical`); models map the ids onto their own
queries. Ids are snake_case and stable: they appear in records, results and tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Finding:
    """One finding: its id, the name shown in tables, and the label spellings that mean it."""

    id: str
    display: str
    synonyms: tuple[str, ...] = ()


FINDINGS: tuple[Finding, ...] = (
    Finding("aortic_enlargement", "Aortic enlargement"),
    Finding("atelectasis", "Atelectasis"),
    Finding("calcification", "Calcification"),
    Finding("cardiomegaly", "Cardiomegaly"),
    Finding("clavicle_fracture", "Clavicle fracture"),
    Finding("consolidation", "Consolidation"),
    Finding("copd", "COPD", ("chronic obstructive pulmonary disease",)),
    Finding("covid19", "COVID-19", ("covid-19", "covid", "covid19 opacity")),
    Finding("diffuse_nodule", "Diffuse nodule", ("diffuse nodules",)),
    Finding("edema", "Edema", ("pulmonary edema", "oedema")),
    Finding("emphysema", "Emphysema"),
    Finding("enlarged_cardiomediastinum", "Enlarged cardiomediastinum"),
    Finding("enlarged_pa", "Enlarged pulmonary artery", ("enlarged pa",)),
    Finding("fibrosis", "Fibrosis", ("pulmonary fibrosis",)),
    Finding("fracture", "Fracture"),
    Finding("ground_glass_opacity", "Ground-glass opacity", ("groud_glass_opacity", "ggo")),
    Finding("hernia", "Hernia"),
    Finding("ild", "Interstitial lung disease", ("interstitial lung disease",)),
    Finding("infiltration", "Infiltration", ("infiltrate", "infiltrates", "pulmonary infiltration")),
    Finding("lung_cavity", "Lung cavity"),
    Finding("lung_cyst", "Lung cyst"),
    Finding("lung_lesion", "Lung lesion"),
    # CheXlocalize calls CheXpert's "Lung Opacity" "Airspace Opacity".
    Finding("lung_opacity", "Lung opacity", ("airspace opacity", "opacity")),
    Finding("lung_tumor", "Lung tumor", ("lung tumour",)),
    Finding("mass", "Mass", ("lung mass", "pulmonary mass")),
    Finding("mediastinal_shift", "Mediastinal shift"),
    Finding("no_finding", "No finding", ("normal",)),
    Finding("nodule", "Nodule", ("lung nodule", "pulmonary nodule")),
    Finding("nodule_mass", "Nodule/Mass", ("nodule/mass", "nodule or mass")),
    Finding("other_diseases", "Other diseases", ("other disease",)),
    Finding("other_lesion", "Other lesion"),
    Finding("pleural_effusion", "Pleural effusion", ("effusion",)),
    Finding("pleural_other", "Pleural other"),
    Finding("pleural_thickening", "Pleural thickening", ("pleural_thickening",)),
    Finding("pneumonia", "Pneumonia", ("lung opacity (pneumonia)",)),
    Finding("pneumothorax", "Pneumothorax"),
    Finding("rib_fracture", "Rib fracture"),
    Finding("support_devices", "Support devices", ("support device",)),
    Finding("tuberculosis", "Tuberculosis", ("tb",)),
)

BY_ID: dict[str, Finding] = {f.id: f for f in FINDINGS}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9/]+", " ", name.lower()).strip()


_LOOKUP: dict[str, str] = {}
for _f in FINDINGS:
    for _name in (_f.id, _f.display, *_f.synonyms):
        _LOOKUP[_key(_name)] = _f.id


def canonical(name: str) -> str:
    """The canonical id of a label name (case, spaces, underscores and synonyms folded)."""
    found = _LOOKUP.get(_key(name))
    if found is None:
        import difflib

        close = difflib.get_close_matches(_key(name), list(_LOOKUP), n=1)
        hint = f" (did you mean {_LOOKUP[close[0]]!r}?)" if close else ""
        raise ConfigError(
            f"unknown finding {name!r}{hint}; the vocabulary is in xbench_core/findings.py"
        )
    return found


def display_name(finding_id: str) -> str:
    """The name of a finding as tables show it."""
    return BY_ID[finding_id].display if finding_id in BY_ID else finding_id
