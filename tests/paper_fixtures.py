"""Synthetic data of the seven paper datasets in their real layouts, written by the dataset
plugins' own test fixtures (plugins/*/tests), and split files in the published formats."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def plugin_tests(plugin: str) -> ModuleType:
    """A dataset plugin's test module (for its fixture writers), imported from its file; the test
    is skipped where the plugin is not installed (the core's own tests on the core alone)."""
    pytest.importorskip(f"xbench_plugin_{plugin.replace('-', '_')}")
    path = next((REPO / "plugins" / f"xbench-plugin-{plugin}" / "tests").glob("test_*.py"))
    spec = importlib.util.spec_from_file_location(f"paper_fixture_{plugin.replace('-', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(label_file: Path, column: str) -> list[str]:
    with open(label_file, newline="") as handle:
        rows = list(csv.DictReader(handle, skipinitialspace=True))
    return list(dict.fromkeys(r[column].strip() for r in rows))


def write_paper_data(base: Path) -> list[str]:
    """Every dataset of the xbench-paper preset under `base`; returns the `--set` arguments that
    point the preset at them (roots, and split files in the published formats)."""
    sets: list[str] = []
    rsna = plugin_tests("rsna-pneumonia").write_kaggle(base / "rsna")
    split = base / "rsna-test.csv"  # MAVL's format: ID,img_path,boxes,classes
    split.write_text("ID,img_path,boxes,classes\n" + "".join(
        f"{pid},{pid}.dcm,,0\n" for pid in _ids(rsna / "stage_2_train_labels.csv", "patientId")))
    sets += [f"rsna-pneumonia.root={rsna}", f"rsna-pneumonia.split_file={split}"]

    siim = plugin_tests("siim-pneumothorax").write_stage1(base / "siim-root")
    label = siim / "siim" / "train-rle.csv"
    split = base / "siim-test.csv"  # MAVL's format: the label rows themselves, ImageId,EncodedPixels
    split.write_text("ImageId,EncodedPixels\n" + "".join(
        line.replace(", ", ",", 1) + "\n" for line in label.read_text().splitlines()[1:]))
    sets += [f"siim-pneumothorax.root={siim / 'siim'}", f"siim-pneumothorax.split_file={split}"]

    covid = plugin_tests("covid-rural")
    root = covid.write_repository(base / "covid") / "covid_rural_annot"
    split = base / "covid-test.csv"  # MAVL's format: filepath
    split.write_text("filepath\n" + "".join(f"{s}\n" for s in (covid.STEM_A, covid.STEM_B, covid.STEM_C)))
    sets += [f"covid-rural.root={root}", f"covid-rural.split_file={split}"]

    for folder in ("det10", "nih", "vindr", "cxl"):
        (base / folder).mkdir(parents=True)
    sets.append(f"chestx-det10.root={plugin_tests('chestx-det10').write_root(base / 'det10')}")
    sets.append(f"chestx-ray14-bbox.root={plugin_tests('chestx-ray14-bbox').write_root(base / 'nih')}")
    sets.append(f"vindr-cxr.root={plugin_tests('vindr-cxr').write_physionet(base / 'vindr')}")
    sets.append(f"chexlocalize.root={plugin_tests('chexlocalize').write_root(base / 'cxl', split='test')}")
    return sets


def random_models(models: Any) -> list[str]:
    return [f"{m}.checkpoint=random" for m in models]
