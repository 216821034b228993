"""KAD's query for every canonical finding it can express: ONE table.

KAD queries are plain disease phrases, encoded by the fine-tuned Med-KEBERT; the official test
scripts use these lists (xiaoman-zhang/KAD, `A3_CLIP/test_chestxray14.py`, `test_chexpert.py`,
`test_padchest.py`):
- ChestX-ray14: atelectasis, cardiomegaly, pleural effusion, infiltration, lung mass, lung nodule,
  pneumonia, pneumothorax, consolidation, edema, emphysema, fibrosis, pleural thicken, hernia
- CheXpert: atelectasis, cardiomegaly, consolidation, edema, pleural effusion
- PadChest (193 names), e.g. normal, clavicle fracture, rib fracture, fracture, tuberculosis,
  mediastinal shift, pulmonary artery enlargement, COPD signs, ...
A phrase from those lists is used wherever one exists, quirks kept ("pleural thicken" is the
official ChestX-ray14 query). The remaining findings get their plain name in the same style
(marked "ours" below). Catch-all labels ("other diseases", "other lesion", "pleural other") have no
disease phrase and are unsupported. The tokenizer lower-cases; the phrases are lower case already.
"""

from __future__ import annotations

QUERIES: dict[str, str] = {
    "aortic_enlargement": "aortic enlargement",  # ours
    "atelectasis": "atelectasis",  # CXR14, CheXpert
    "calcification": "calcification",  # ChestX-Det10 list of plot_visualize_512.py
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
