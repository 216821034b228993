"""DeViDe's query for every canonical finding it can express: ONE table.

DeViDe is evaluated zero-shot like KAD (the paper compares on ChestX-ray14, CheXpert and PadChest)
and shares KAD's text encoder (Med-KEBERT) and query decoder, so its queries are KAD's plain
disease phrases. The phrases come from KAD's official test scripts (xiaoman-zhang/KAD
`A3_CLIP/test_chestxray14.py`, `test_chexpert.py`, `test_padchest.py`) wherever one exists,
quirks kept ("pleural thicken"); the others are plain names in the same style ("ours"). Catch-all
labels ("other diseases", "other lesion", "pleural other") are unsupported. This table is a copy
of the KAD plugin's, on purpose: plugins never import each other.
"""

from __future__ import annotations

QUERIES: dict[str, str] = {
    "aortic_enlargement": "aortic enlargement",  # ours
    "atelectasis": "atelectasis",  # CXR14, CheXpert
    "calcification": "calcification",  # KAD's ChestX-Det10 list
    "cardiomegaly": "cardiomegaly",  # CXR14, CheXpert
    "clavicle_fracture": "clavicle fracture",  # PadChest
    "consolidation": "consolidation",  # CXR14, CheXpert
    "copd": "copd signs",  # PadChest "COPD signs"
    "covid19": "covid-19",  # ours
    "diffuse_nodule": "multiple nodules",  # PadChest
    "edema": "edema",  # CXR14, CheXpert
    "emphysema": "emphysema",  # CXR14
    "enlarged_cardiomediastinum": "enlarged cardiomediastinum",  # ours (CheXpert label name)
    "enlarged_pa": "pulmonary artery enlargement",  # PadChest
    "fibrosis": "fibrosis",  # CXR14
    "fracture": "fracture",  # PadChest
    "ground_glass_opacity": "ground glass pattern",  # PadChest
    "hernia": "hernia",  # CXR14
    "ild": "interstitial pattern",  # PadChest
    "infiltration": "infiltration",  # CXR14
    "lung_cavity": "cavitation",  # PadChest
    "lung_cyst": "cyst",  # PadChest
    "lung_lesion": "lung lesion",  # ours (CheXpert label name)
    "lung_opacity": "lung opacity",  # ours (CheXpert label name)
    "lung_tumor": "lung tumor",  # ours
    "mass": "lung mass",  # CXR14
    "mediastinal_shift": "mediastinal shift",  # PadChest
    "no_finding": "normal",  # PadChest
    "nodule": "lung nodule",  # CXR14
    "nodule_mass": "lung nodule or mass",  # ours
    "pleural_effusion": "pleural effusion",  # CXR14, CheXpert
    "pleural_thickening": "pleural thicken",  # CXR14 (sic)
    "pneumonia": "pneumonia",  # CXR14
    "pneumothorax": "pneumothorax",  # CXR14
    "rib_fracture": "rib fracture",  # PadChest
    "support_devices": "support devices",  # ours (CheXpert label name)
    "tuberculosis": "tuberculosis",  # PadChest
}
