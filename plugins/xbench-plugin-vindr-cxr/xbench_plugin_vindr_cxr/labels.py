"""VinDr-CXR label names and their canonical XBench finding ids.

The PhysioNet release (v1.0.0) has 22 local labels (boxable) and 6 global labels (image level only);
the Kaggle VinBigData version keeps 14 of the local labels (the rarer ones folded into
"Other lesion") plus "No finding", with a `class_id` 0..14. Sources: the VinDr-CXR paper and
PhysioNet page (label lists), and the Kaggle `train.csv` (class ids, checked on the full file).
"""

from __future__ import annotations

# The 22 local labels in the column order of PhysioNet's image_labels_*.csv.
LOCAL_LABELS: dict[str, str] = {
    "Aortic enlargement": "aortic_enlargement",
    "Atelectasis": "atelectasis",
    "Calcification": "calcification",
    "Cardiomegaly": "cardiomegaly",
    "Clavicle fracture": "clavicle_fracture",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Enlarged PA": "enlarged_pa",
    "ILD": "ild",
    "Infiltration": "infiltration",
    "Lung Opacity": "lung_opacity",
    "Lung cavity": "lung_cavity",
    "Lung cyst": "lung_cyst",
    "Mediastinal shift": "mediastinal_shift",
    "Nodule/Mass": "nodule_mass",
    "Pleural effusion": "pleural_effusion",
    "Pleural thickening": "pleural_thickening",
    "Pneumothorax": "pneumothorax",
    "Pulmonary fibrosis": "fibrosis",
    "Rib fracture": "rib_fracture",
    "Other lesion": "other_lesion",
}

# Global labels: image-level only, never a box. The test file spells "Other disease" (singular).
GLOBAL_LABELS: dict[str, str] = {
    "COPD": "copd",
    "Lung tumor": "lung_tumor",
    "Pneumonia": "pneumonia",
    "Tuberculosis": "tuberculosis",
    "Other diseases": "other_diseases",
    "Other disease": "other_diseases",
}

NO_FINDING_NAME = "No finding"
NO_FINDING = "no_finding"

# Kaggle VinBigData train.csv: class_id -> class_name (0..13 boxes, 14 = No finding).
KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    NO_FINDING_NAME,
)

LOCAL_FINDINGS: tuple[str, ...] = tuple(dict.fromkeys(LOCAL_LABELS.values()))
GLOBAL_FINDINGS: tuple[str, ...] = tuple(dict.fromkeys(GLOBAL_LABELS.values()))
KAGGLE_FINDINGS: tuple[str, ...] = tuple(LOCAL_LABELS[n] for n in KAGGLE_CLASSES[:-1])
# Everything the dataset can label, in a stable order (the spec's findings).
ALL_FINDINGS: tuple[str, ...] = (*LOCAL_FINDINGS, *GLOBAL_FINDINGS, NO_FINDING)

_BY_KEY: dict[str, str] = {
    **{k.lower(): v for k, v in LOCAL_LABELS.items()},
    **{k.lower(): v for k, v in GLOBAL_LABELS.items()},
    NO_FINDING_NAME.lower(): NO_FINDING,
}


def finding_of(name: str) -> str | None:
    """The canonical id of a VinDr label name (case and surrounding spaces ignored), or None."""
    return _BY_KEY.get(" ".join(name.split()).lower())


def is_local(finding: str) -> bool:
    """Whether a finding is one of the boxable local labels."""
    return finding in _LOCAL_SET


_LOCAL_SET = frozenset(LOCAL_FINDINGS)
