"""Tests of the NIH ChestX-ray14 box loader: synthetic files in the real format (header quirk, gz,
Kaggle and flat image folders, RGBA and 16-bit PNGs), the real excerpt and the complete real files."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench_core import DataError, ImageReadError, get_registry
from xbench_core.inspect import inspect_dataset
from xbench_core.testing import DatasetPluginTests, realdata

N = 1024
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def build(**options):
    return get_registry().datasets["chestx-ray14-bbox"].build(**options)


def write_png(path: Path, mode: str = "L", size: tuple[int, int] = (N, N)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    ramp = (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)
    if mode == "L":
        Image.fromarray(ramp, mode="L").save(path)
    elif mode == "RGBA":  # a few NIH PNGs carry four channels
        rgba = np.stack([ramp, ramp, ramp, np.full_like(ramp, 255)], axis=-1)
        Image.fromarray(rgba, mode="RGBA").save(path)
    else:
        Image.fromarray(ramp.astype(np.uint16) * 100).save(path)


def write_root(root: Path, *, gz: bool = True, entry: bool = True) -> Path:
    rows = [
        "00000013_005.png,Infiltrate,5.4,12.8,27.3,21.6",
        "00000013_005.png,Effusion,600.5,500.25,200,300.5",
        "00000001_000.png,Cardiomegaly,300,400,400,300",
        "00000032_037.png,Nodule,100,100,20,20",
        "00000099_001.png,Pneumothorax,10,20,300,500",
    ]
    text = BBOX_HEADER + "\n".join(rows) + "\n"
    if gz:
        with gzip.open(root / "BBox_List_2017.csv.gz", "wt") as fh:
            fh.write(text)
    else:
        (root / "BBox_List_2017.csv").write_text(text)
    if entry:
        (root / "Data_Entry_2017_v2020.csv").write_text(
            ENTRY_HEADER
            + "00000001_000.png,Cardiomegaly|Emphysema,0,1,57,M,PA,2682,2749,0.143,0.143\n"
            + "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171\n"
            + "00000013_005.png,Effusion|Infiltration|Mass,5,13,60,M,AP,3056,2544,0.139,0.139\n"
            + "00000032_037.png,Nodule|Pneumonia,37,32,55,F,PA,2992,2991,0.143,0.143\n"
            + "00000099_001.png,Pneumothorax,1,99,48,F,AP,2048,2500,0.168,0.168\n"
        )
    write_png(root / "images_001" / "images" / "00000001_000.png", "L")
    write_png(root / "images_001" / "images" / "00000013_005.png", "RGBA")
    write_png(root / "images_002" / "images" / "00000032_037.png", "I;16")
    write_png(root / "images" / "00000099_001.png", "L")
    return root


class TestChestXray14BBox(DatasetPluginTests):
    name = "chestx-ray14-bbox"

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        return build(root=str(write_root(tmp_path_factory.mktemp("nih"))))

    def test_ids_labels_and_boxes(self, dataset):
        ids = [dataset.annotation(i).id for i in range(len(dataset))]
        assert ids == ["00000001_000", "00000013_005", "00000032_037", "00000099_001"]
        assert dataset.label_source == "data_entry" and dataset.problems == []
        s = dataset.annotation(1)
        # Data_Entry gives the negatives and the positives without a box (mass)
        assert {f for f, v in s.labels.items() if v} == {"infiltration", "pleural_effusion", "mass"}
        assert set(s.regions) == {"infiltration", "pleural_effusion"}
        mask = s.regions["infiltration"].rasterize()
        # half-open [5.4, 12.8, 32.7, 34.4]: columns 5..32, rows 12..34
        assert mask.sum() == 28 * 23 and mask[12, 5] and mask[34, 32] and not mask[35, 32]
        assert s.meta["view"] == "AP" and s.meta["age"] == 60 and s.meta["patient_id"] == "13"
        assert s.meta["original_size"] == (2544, 3056)
        assert dataset.annotation(2).labels["pneumonia"] == 1  # no box, labelled by Data_Entry

    def test_images_found_in_kaggle_and_flat_folders(self, dataset):
        rgba = dataset[1]
        assert rgba.meta["path"].endswith("images_001/images/00000013_005.png")
        assert rgba.image[0, 255] == pytest.approx(1.0)
        sixteen = dataset[2]
        assert sixteen.image[0, 100] == pytest.approx(100 * 100 / 65535)
        assert dataset[3].meta["path"].endswith("images/00000099_001.png")


def test_negatives_from_boxes_without_data_entry(tmp_path):
    ds = build(root=str(write_root(tmp_path, gz=False, entry=False)))
    assert ds.label_source == "boxes"
    s = ds.annotation(1)
    assert {f for f, v in s.labels.items() if v} == {"infiltration", "pleural_effusion"}
    assert s.labels["mass"] == 0 and len(s.labels) == 8
    other = tmp_path / "with_entry"
    other.mkdir()
    forced = build(root=str(write_root(other)), image_labels="boxes")
    assert forced.label_source == "boxes" and forced.annotation(1).labels["mass"] == 0
    assert forced.annotation(1).meta["view"] == "AP"  # Data_Entry still gives the meta
    with pytest.raises(DataError, match="image_labels=boxes"):
        build(root=str(tmp_path), image_labels="data_entry")


def test_old_data_entry_and_mismatches(tmp_path):
    write_root(tmp_path, entry=False)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        ENTRY_HEADER.rstrip("\n")
        + ",\n"
        + "00000001_000.png,Emphysema,0,1,057Y,M,PA,2682,2749,0.143,0.143,\n"
        + "00000013_005.png,Effusion|Infiltration,5,13,060Y,M,AP,3056,2544,0.139,0.139,\n"
    )
    ds = build(root=str(tmp_path))
    s = ds.annotation(0)
    assert s.meta["age"] == 57 and s.labels["cardiomegaly"] == 1  # the box wins, reported
    messages = [p.message for p in ds.problems]
    assert any("box of cardiomegaly" in m for m in messages)
    assert sum("no row here" in m for m in messages) == 2  # 00000032_037, 00000099_001
    assert ds.annotation(2).meta["label_source"] == "boxes"


def test_bad_rows(tmp_path):
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="BBox_List_2017.csv"):
        build(root=str(tmp_path))
    # a folder of that name (an archive unpacked under the file's name) is not the box list
    (tmp_path / "BBox_List_2017.csv").mkdir()
    with pytest.raises(
        DataError, match=r"(?s)BBox_List_2017\.csv is not a file: .*Expected layout"
    ):
        build(root=str(tmp_path))
    (tmp_path / "BBox_List_2017.csv").rmdir()
    (tmp_path / "BBox_List_2017.csv").write_text(
        BBOX_HEADER
        + "00000001_000.png,Hernia,1,2,3,4\n"
        + "00000002_000.png,Mass,1,2,3\n"
        + "00000003_000.png,Mass,a,2,3,4\n"
        + "00000004_000.png,Mass,1000,1000,100,10\n"
        + "00000005_000.png,Mass,2000,2000,10,10\n"
        + "00000006_000.png,Mass,10,10,-5,10\n"
        + "00000007_000.png,Nodule,10,10,5,10\n"
    )
    ds = build(root=str(tmp_path))
    assert [ds.annotation(i).id for i in range(len(ds))] == [
        "00000004_000",
        "00000005_000",
        "00000007_000",
    ]
    found = {(p.line, p.message.split(";")[0][:40]) for p in ds.problems}
    assert all(p.file == str(tmp_path / "BBox_List_2017.csv") for p in ds.problems)
    lines = sorted(p.line for p in ds.problems)
    assert lines == [2, 3, 4, 5, 6, 7], found
    assert any("unknown label 'Hernia'" in p.message for p in ds.problems)
    assert ds.annotation(0).regions["mass"].boxes.tolist() == [[1000, 1000, 1024, 1010]]
    outside = ds.annotation(1)
    assert outside.labels["mass"] == 1 and "mass" not in outside.regions
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "00000007_000.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="00000007_000.png"):
        ds[2]


def test_split_file(tmp_path):
    root = write_root(tmp_path)
    (tmp_path / "test_list.txt").write_text(
        "00000013_005.png\n00000404_000.png\n00000001_000.png\n"
    )
    ds = build(root=str(root), split_file=str(tmp_path / "test_list.txt"))
    assert [ds.annotation(i).id for i in range(len(ds))] == ["00000001_000", "00000013_005"]
    assert [(p.line, p.sample) for p in ds.problems] == [(2, "00000404_000")]


def test_resized_png(tmp_path):
    root = write_root(tmp_path)
    write_png(root / "images_001" / "images" / "00000001_000.png", size=(256, 256))
    s = build(root=str(root))[0]
    assert s.image.shape == (256, 256)
    assert s.regions["cardiomegaly"].boxes.tolist() == [[75.0, 100.0, 175.0, 175.0]]


# ---- real files -------------------------------------------------------------------------------
def test_real_excerpt(tmp_path):
    excerpt = realdata("nih-bbox", "BBox_List_2017.excerpt.csv")
    (tmp_path / "BBox_List_2017.csv").symlink_to(excerpt)
    ds = build(root=str(tmp_path))
    report = inspect_dataset(ds, skip_images=True)
    assert report["problems"] == []
    assert sum(r["instances"] for r in report["findings"].values()) == 120
    infiltrate = sum(1 for line in excerpt.read_text().splitlines() if ",Infiltrate," in line)
    assert infiltrate > 0 and report["findings"]["infiltration"]["instances"] == infiltrate
    s = ds.annotation(ds._ids.index("00016624_000"))
    box = s.regions["cardiomegaly"].boxes[0]
    np.testing.assert_allclose(
        box,
        [
            552.677966101695,
            347.932203389831,
            552.677966101695 + 368.813559322034,
            347.932203389831 + 330.847457627119,
        ],
    )


PUBLISHED = {  # datasets.md section 6: boxes (= images) per class
    "atelectasis": 180,
    "pleural_effusion": 153,
    "cardiomegaly": 146,
    "infiltration": 123,
    "pneumonia": 120,
    "pneumothorax": 98,
    "mass": 85,
    "nodule": 79,
}


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih-full")
    for name in ("BBox_List_2017.csv.gz", "Data_Entry_2017_v2020.csv.gz"):
        (root / name).symlink_to(realdata("full", "nih-bbox", name))
    return root


def test_real_full_counts_with_data_entry(full_root):
    ds = build(root=str(full_root))
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == 880 and report["problems"] == []
    rows = report["findings"]
    assert sum(r["instances"] for r in rows.values()) == 984
    assert {f: r["instances"] for f, r in rows.items()} == PUBLISHED
    assert {f: r["with_region"] for f, r in rows.items()} == PUBLISHED
    # Data_Entry adds positives without boxes and gives every image all eight labels
    assert all(rows[f]["positive"] >= PUBLISHED[f] for f in PUBLISHED)
    samples = [ds.annotation(i) for i in range(len(ds))]
    assert all(len(s.labels) == 8 for s in samples)
    assert sum(len(s.regions) > 1 for s in samples) == 93
    assert Counter(s.meta["view"] for s in samples) == {"PA": 478, "AP": 402}


def test_real_full_counts_without_data_entry(full_root, tmp_path):
    (tmp_path / "BBox_List_2017.csv.gz").symlink_to(full_root / "BBox_List_2017.csv.gz")
    report = inspect_dataset(build(root=str(tmp_path)), skip_images=True)
    assert report["images"] == 880 and report["problems"] == []
    assert {f: r["positive"] for f, r in report["findings"].items()} == PUBLISHED


def test_image_indices_that_leave_the_root_are_dropped(tmp_path: Path) -> None:
    """Issue 16 item 3: an `Image Index` that is a path out of the root is a problem with its line."""
    root = write_root(tmp_path, gz=False)
    with open(root / "BBox_List_2017.csv", "a") as fh:
        fh.write("../../outside/evil.png,Nodule,1,2,3,4\n/etc/passwd,Nodule,1,2,3,4\n")
    ds = build(root=str(root))
    assert not any("evil" in i or "passwd" in i for i in ds.ids())
    bad = [p for p in ds.problems if "dataset root" in p.message]
    assert [p.line for p in bad] == [7, 8]
