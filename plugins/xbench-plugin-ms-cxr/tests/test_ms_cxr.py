"""MS-CXR on a synthetic fixture in the release layout (CSV v1.1.0 / v1.0.0, COCO JSON, MIMIC-CXR-JPG
tree): pairs, boxes, splits, problems, paths, counts, and a run through the engine."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from xbench_core import ConfigError, DataError, Dataset
from xbench_core.inspect import inspect_dataset
from xbench_core.testing import DatasetPluginTests, get_registry

HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height", "split"]
IMAGES = {  # dicom_id -> (subject, study, H, W)
    "aaaa1111-0001": ("10000001", "50000001", 60, 80),
    "bbbb2222-0002": ("10000002", "50000002", 64, 64),
    "cccc3333-0003": ("10000003", "50000003", 70, 50),
}
ROWS = [
    # a sentence with two boxes (one sample, union), and a second sentence on the same image
    ["aaaa1111-0001", "Pleural Effusion", "Small left pleural effusion.", 10, 40, 20, 10, "test"],
    ["aaaa1111-0001", "Pleural Effusion", "Small left pleural effusion.", 50, 42, 15, 12, "test"],
    ["aaaa1111-0001", "Cardiomegaly", "The heart is enlarged.", 25, 20, 30, 25, "test"],
    ["bbbb2222-0002", "Pneumothorax", "Right apical  pneumothorax.", 5, 5, 20, 15, "val"],
    ["cccc3333-0003", "Lung Opacity", "Patchy opacity at the left base.", 30, 50, 30, 30, "train"],  # clipped
    ["cccc3333-0003", "Nodule", "A nodule.", 1, 1, 5, 5, "train"],  # not an MS-CXR category
    ["cccc3333-0003", "Edema", "Mild edema.", 100, 100, 5, 5, "train"],  # outside the image
    ["cccc3333-0003", "Atelectasis", "Basal atelectasis.", 2, 3, -4, 5, "train"],  # negative width
]


def path_of(dicom_id: str) -> str:
    subject, study, _, _ = IMAGES[dicom_id]
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"


def write_release(root: Path, version: str = "v1.1.0", rows: list[list[Any]] = ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for dicom_id, (_, _, h, w) in IMAGES.items():
        target = root / path_of(dicom_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(target, quality=95)
    header = HEADER if version == "v1.1.0" else HEADER[:-1]
    with open(root / f"MS_CXR_Local_Alignment_{version}.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        for dicom_id, cat, text, x, y, w, h, split in rows:
            _, _, ih, iw = IMAGES[dicom_id]
            row = [dicom_id, cat, text, path_of(dicom_id), x, y, w, h, iw, ih, split]
            out.writerow(row if version == "v1.1.0" else row[:-1])
    return root


def build(root: Path, **options: Any) -> Dataset:
    return get_registry().datasets["ms-cxr"].build(root=str(root), **options)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(tmp_path_factory.mktemp("ms-cxr"))


class TestConformance(DatasetPluginTests):
    name = "ms-cxr"

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, release: Path) -> Dataset:
        return build(release)


def test_one_sample_per_sentence_with_the_union_of_its_boxes(release: Path) -> None:
    ds = build(release)
    by_id = {ds.annotation(i).id: ds.annotation(i) for i in range(len(ds))}
    assert sorted(by_id) == ["aaaa1111-0001-0", "aaaa1111-0001-1", "bbbb2222-0002-0", "cccc3333-0003-0"]
    effusion = by_id["aaaa1111-0001-0"]
    (phrase,) = effusion.phrases
    assert phrase.text == "Small left pleural effusion." and phrase.finding == "pleural_effusion"
    assert effusion.labels == {"pleural_effusion": 1} and effusion.regions["pleural_effusion"] is phrase.region
    mask = phrase.region.rasterize((60, 80))
    expected = np.zeros((60, 80), bool)
    expected[40:50, 10:30] = True  # half-open [x, y, x + w, y + h]
    expected[42:54, 50:65] = True
    assert np.array_equal(mask, expected)
    assert by_id["bbbb2222-0002-0"].phrases[0].text == "Right apical pneumothorax."  # spaces folded
    opacity = by_id["cccc3333-0003-0"]
    assert opacity.phrases[0].region.rasterize((70, 50)).sum() == 20 * 20  # clipped at 50 x 70
    meta = effusion.meta
    assert meta["path"] == str((release / path_of("aaaa1111-0001")).resolve())
    assert meta["size"] == (60, 80) and meta["patient_id"] == "10000001" and meta["study_id"] == "50000001"
    assert meta["split"] == "test" and meta["category_name"] == "Pleural Effusion"
    sample = ds[0]
    assert sample.image.shape == (60, 80)


def test_problems_name_the_file_and_line(release: Path) -> None:
    ds = build(release)
    text = "\n".join(str(p) for p in ds.problems)
    assert len(ds.problems) == 4, text
    assert "MS_CXR_Local_Alignment_v1.1.0.csv:6 [cccc3333-0003]: box [30.0, 50.0, 30.0, 30.0] reaches outside" in text
    assert ":7 [cccc3333-0003]: unknown category_name 'Nodule'" in text
    assert ":8 [cccc3333-0003]: box [100.0, 100.0, 5.0, 5.0] lies outside the image; skipped" in text
    assert ":9 [cccc3333-0003]: empty or malformed box" in text


def test_splits_and_split_file(release: Path, tmp_path: Path) -> None:
    assert [build(release, split="test").annotation(i).id for i in range(2)] == ["aaaa1111-0001-0", "aaaa1111-0001-1"]
    assert len(build(release, split="val")) == 1 and len(build(release, split="train")) == 1
    listed = tmp_path / "keep.txt"
    listed.write_text("bbbb2222-0002\nzzzz\n")
    ds = build(release, split_file=str(listed))
    assert [ds.annotation(i).id for i in range(len(ds))] == ["bbbb2222-0002-0"]
    assert any("zzzz" in str(p) for p in ds.problems)
    old = write_release(tmp_path / "v1.0", version="v1.0.0")
    assert len(build(old)) == 4
    with pytest.raises(ConfigError, match="has no split"):
        build(old, split="test")


def test_json_release_gives_the_same_samples(release: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(open(release / "MS_CXR_Local_Alignment_v1.1.0.csv")))
    cats = sorted({r["category_name"] for r in rows})
    ids = sorted({r["dicom_id"] for r in rows})
    coco = {
        "categories": [{"id": k, "name": c} for k, c in enumerate(cats)],
        "images": [{"id": k, "path": path_of(d), "width": IMAGES[d][3], "height": IMAGES[d][2]} for k, d in enumerate(ids)],
        "annotations": [{"id": n, "image_id": ids.index(r["dicom_id"]), "category_id": cats.index(r["category_name"]),
                         "bbox": [float(r[k]) for k in "xywh"], "label_text": r["label_text"], "split": r["split"]}
                        for n, r in enumerate(rows)],
    }  # fmt: skip
    (tmp_path / "release.json").write_text(json.dumps(coco))
    from_json = build(release, annotations=str(tmp_path / "release.json"))
    from_csv = build(release)
    assert len(from_json) == len(from_csv)
    for i in range(len(from_csv)):
        a, b = from_json.annotation(i), from_csv.annotation(i)
        assert (a.id, a.phrases[0].text, a.meta) == (b.id, b.phrases[0].text, b.meta)
        assert np.array_equal(a.phrases[0].region.boxes, b.phrases[0].region.boxes)
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not the MS-CXR COCO layout"):
        build(release, annotations=str(tmp_path / "bad.json"))


def test_image_root_and_paths_that_leave_it(release: Path, tmp_path: Path) -> None:
    annotations = str(release / "MS_CXR_Local_Alignment_v1.1.0.csv")
    ds = build(tmp_path, annotations=annotations, image_root=str(release / "files"))  # the files/ folder
    assert ds[0].image.shape == (60, 80)
    evil = tmp_path / "evil"
    write_release(evil)
    csv_file = evil / "MS_CXR_Local_Alignment_v1.1.0.csv"
    csv_file.write_text(csv_file.read_text().replace("files/p10/p10000001", "../../etc/p10000001"))
    with pytest.raises(DataError, match="leaves the image root"):
        build(evil).annotation(0)
    with pytest.raises(DataError, match="missing columns"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text("a,b\n1,2\n")
        build(tmp_path / "x")


def test_a_folder_named_like_the_release_is_not_read(release: Path, tmp_path: Path) -> None:
    """The newest release file is taken; a folder with a newer release's name is passed over, and
    alone it is reported like a missing file."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(release, root)
    (root / "MS_CXR_Local_Alignment_v9.9.9.csv").mkdir()
    assert build(root).file.name == "MS_CXR_Local_Alignment_v1.1.0.csv"
    (root / "MS_CXR_Local_Alignment_v1.1.0.csv").unlink()
    with pytest.raises(DataError, match="MS-CXR annotation file not found"):
        build(root)


def test_inspect_counts(release: Path) -> None:
    report = inspect_dataset(build(release))
    assert report["images"] == 4 and report["images_with_region"] == 4
    rows = report["findings"]
    assert rows["pleural_effusion"] == {"positive": 1, "with_region": 1, "instances": 2}
    assert rows["lung_opacity"] == {"positive": 1, "with_region": 1, "instances": 1}
    assert rows["edema"]["positive"] == 0 and len(report["problems"]) == 4


def _run(release: Path, out: Path, model: str, **model_options: Any) -> dict[str, Any]:
    from xbench_core.engine.config import build_config
    from xbench_core.engine.session import execute

    registry = get_registry()
    cfg = build_config({"datasets": [{"name": "ms-cxr", "root": str(release)}],
                        "models": [{"name": model, **model_options}], "out": str(out), "batch_size": 2}, registry)  # fmt: skip
    execute(cfg, registry, quiet=True)
    return json.loads((out / "results.json").read_text())


def _records(out: Path, model: str) -> list[dict[str, Any]]:
    folder = out / "records" / "ms-cxr" / model / "native"
    return [json.loads(x) for f in folder.glob("*.jsonl") for x in f.read_text().splitlines()]


def test_run_scores_every_sentence(release: Path, tmp_path: Path) -> None:
    results = _run(release, tmp_path / "r", "center")
    records = _records(tmp_path / "r", "center")
    assert sorted((r["id"], r["finding"]) for r in records) == [
        ("aaaa1111-0001-0", "pleural_effusion"), ("aaaa1111-0001-1", "cardiomegaly"),
        ("bbbb2222-0002-0", "pneumothorax"), ("cccc3333-0003-0", "lung_opacity"),
    ]  # fmt: skip
    assert all(r["label"] == 1 and r["stats"]["region_px"] > 0 for r in records)
    assert not results["errors"]


@pytest.mark.slow
def test_clip_reads_the_sentences(release: Path, tmp_path: Path) -> None:
    """CLIP at random weights queried with each sentence: its text reaches the model."""
    if "clip" not in get_registry().models:
        pytest.skip("xbench-plugin-clip is not installed")
    _run(release, tmp_path / "r", "clip", checkpoint="random")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert '"phrases": true' in json.dumps(manifest)
    records = _records(tmp_path / "r", "clip")
    assert len(records) == 4 and all(r["stats"] and not r["error"] for r in records)
