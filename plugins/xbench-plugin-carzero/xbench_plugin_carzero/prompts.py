"""The one table of CARZero queries: canonical finding id -> "There is {disease}" prompt.

Disease names come first from the official prompt files of the CARZero release (the authors' Drive
`Dataset/` folder; public copy in github.com/Skizdukion/reproduce_carzero):
`ChestXray14/chestxray14_test_text.json` (the 14 NIH names, e.g. "Pulmonary Infiltration", "Lung
Nodule") and `OpenI/openi_multi_label_text.json` ("Bone Fracture", "Lung Opacity", "Abnormal
Lesion"). Other findings use the same template with the finding's usual name. The prompt must have
two words or more: `process_text` drops one-word sentences.

Not supported (absent, never scored): `no_finding` (the absence of disease is not a "There is X"
query; CARZero's own OpenI evaluation drops it), `other_diseases`, `other_lesion` and
`pleural_other` (catch-all labels with no disease name to put in a prompt).
"""

from __future__ import annotations

PROMPTS: dict[str, str] = {
    # ChestX-ray14 prompts of the official release
    "atelectasis": "There is Atelectasis",
    "cardiomegaly": "There is Cardiomegaly",
    "pleural_effusion": "There is Pleural Effusion",
    "infiltration": "There is Pulmonary Infiltration",
    "mass": "There is Pulmonary Mass",
    "nodule": "There is Lung Nodule",
    "pneumonia": "There is Pneumonia",
    "pneumothorax": "There is Pneumothorax",
    "consolidation": "There is Pulmonary Consolidation",
    "edema": "There is Pulmonary Edema",
    "emphysema": "There is Pulmonary Emphysema",
    "fibrosis": "There is Fibrosis",
    "pleural_thickening": "There is Pleural Thickening",
    "hernia": "There is Hernia",
    # OpenI prompts of the official release
    "fracture": "There is Bone Fracture",
    "lung_opacity": "There is Lung Opacity",
    "lung_lesion": "There is Abnormal Lesion",
    # The template with the finding's name (no official prompt)
    "aortic_enlargement": "There is Aortic Enlargement",
    "calcification": "There is Calcification",
    "clavicle_fracture": "There is Clavicle Fracture",
    "copd": "There is Chronic Obstructive Pulmonary Disease",
    "covid19": "There is COVID-19 Pneumonia",
    "diffuse_nodule": "There is Diffuse Nodule",
    "enlarged_cardiomediastinum": "There is Enlarged Cardiomediastinum",
    "enlarged_pa": "There is Enlarged Pulmonary Artery",
    "ground_glass_opacity": "There is Ground Glass Opacity",
    "ild": "There is Interstitial Lung Disease",
    "lung_cavity": "There is Lung Cavity",
    "lung_cyst": "There is Lung Cyst",
    "lung_tumor": "There is Lung Tumor",
    "mediastinal_shift": "There is Mediastinal Shift",
    "nodule_mass": "There is Nodule or Mass",
    "rib_fracture": "There is Rib Fracture",
    "support_devices": "There is Support Device",
    "tuberculosis": "There is Tuberculosis",
}
