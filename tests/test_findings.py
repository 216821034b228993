"""The canonical finding vocabulary: ids, display names, synonyms and errors."""

from __future__ import annotations

import re

import pytest

from xbench_core.errors import ConfigError
from xbench_core.findings import BY_ID, FINDINGS, _key, canonical, display_name


def test_ids_are_snake_case_and_unique():
    ids = [f.id for f in FINDINGS]
    assert len(ids) == len(set(ids)) == len(BY_ID)
    for i in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", i), i
    assert all(f.display for f in FINDINGS)


def test_no_name_means_two_findings():
    """A display name or synonym of one finding must not fold onto another finding's name."""
    owner: dict[str, str] = {}
    for f in FINDINGS:
        for name in (f.id, f.display, *f.synonyms):
            k = _key(name)
            assert owner.setdefault(k, f.id) == f.id, f"{name!r}: {owner[k]} and {f.id}"


def test_every_id_display_and_synonym_maps_to_its_finding():
    for f in FINDINGS:
        for name in (f.id, f.display, *f.synonyms, f.display.upper(), f.id.replace("_", " ")):
            assert canonical(name) == f.id, name


@pytest.mark.parametrize(
    "name, expect",
    [
        ("Airspace Opacity", "lung_opacity"),
        ("Lung Opacity", "lung_opacity"),
        ("Infiltrate", "infiltration"),
        ("Infiltration", "infiltration"),
        ("Effusion", "pleural_effusion"),
        ("Pleural Effusion", "pleural_effusion"),
        ("Nodule/Mass", "nodule_mass"),
        ("Pleural_Thickening", "pleural_thickening"),
        ("Pleural thickening", "pleural_thickening"),
        ("groud_glass_opacity", "ground_glass_opacity"),
        ("ground_glass_opacity", "ground_glass_opacity"),
        ("Enlarged Cardiomediastinum", "enlarged_cardiomediastinum"),
        ("Support Devices", "support_devices"),
        ("No Finding", "no_finding"),
        ("Aortic enlargement", "aortic_enlargement"),
        ("ILD", "ild"),
        ("Other lesion", "other_lesion"),
        ("Pneumothorax", "pneumothorax"),
        ("Cardiomegaly", "cardiomegaly"),
        ("  pneumothorax  ", "pneumothorax"),
        ("PNEUMONIA", "pneumonia"),
        ("Nodule", "nodule"),
        ("Mass", "mass"),
        ("COVID-19", "covid19"),
        ("Lung tumor", "lung_tumor"),
    ],
)
def test_dataset_label_names(name, expect):
    assert canonical(name) == expect


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown finding 'Pneumothorx' \(did you mean 'pneumothorax'\?\)"):
        canonical("Pneumothorx")
    with pytest.raises(ConfigError, match=r"did you mean 'pleural_effusion'"):
        canonical("pleural efusion")
    with pytest.raises(ConfigError, match=r"unknown finding 'qwertyuiop'; the vocabulary is in"):
        canonical("qwertyuiop")


def test_display_name():
    assert display_name("nodule_mass") == "Nodule/Mass"
    assert display_name("pleural_effusion") == "Pleural effusion"
    assert display_name("not_a_finding") == "not_a_finding"
