"""Tests of the ChestX-Det10 loader: synthetic files in the real format, the real excerpts and the
complete real label files (published counts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench_core import ConfigError, DataError, ImageReadError, get_registry
from xbench_core.inspect import inspect_dataset
from xbench_core.testing import DatasetPluginTests, realdata

N = 1024


def build(**options):
    return get_registry().datasets["chestx-det10"].build(**options)


def write_png(path: Path, bits: int = 8, size: tuple[int, int] = (N, N), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    ramp = np.add.outer(np.arange(h), np.arange(w)) % 256
    if bits == 8:
        Image.fromarray(((ramp + value) % 256).astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray((ramp * 200).astype(np.uint16)).save(path)


# The official layout: test.json at the root, PNGs in test_data/ (from test_data.zip).
ENTRIES = [
    {"file_name": "36302.png", "syms": ["Effusion"], "boxes": [[799, 666, 937, 761]]},
    {"file_name": "36199.png", "syms": [], "boxes": []},
    {
        "file_name": "36346.png",
        "syms": ["Effusion", "Fibrosis", "Consolidation", "Consolidation"],
        "boxes": [
            [90, 668, 217, 788],
            [699, 307, 774, 417],
            [133, 411, 329, 683],
            [10, 10, 20, 30],
        ],
    },
    {"file_name": "36331.png", "syms": ["Nodule"], "boxes": [[339, 575, 386, 625]]},
]


def write_root(root: Path) -> Path:
    (root / "test.json").write_text(json.dumps(ENTRIES))
    write_png(root / "test_data" / "36302.png", bits=8)
    write_png(root / "test_data" / "36199.png", bits=16)
    write_png(root / "test_data" / "36346.png", bits=8, value=7)
    # one image elsewhere under root: found by name
    write_png(root / "extra" / "nested" / "36331.png", bits=8)
    return root


class TestChestXDet10(DatasetPluginTests):
    name = "chestx-det10"

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        return build(root=str(write_root(tmp_path_factory.mktemp("det10"))))

    def test_labels_regions_and_order(self, dataset):
        assert dataset.findings[3] == "pleural_effusion" and len(dataset.findings) == 10
        assert [dataset.annotation(i).id for i in range(len(dataset))] == [
            "36199",
            "36302",
            "36331",
            "36346",
        ]
        empty = dataset.annotation(0)
        assert empty.labels == {f: 0 for f in dataset.findings} and not empty.regions
        s = dataset.annotation(3)
        assert {f for f, v in s.labels.items() if v} == {
            "pleural_effusion",
            "fibrosis",
            "consolidation",
        }
        assert s.labels["nodule"] == 0
        assert s.regions["consolidation"].instances == 2
        # inclusive corners (official eval.py): [90, 668, 217, 788] covers 128 x 121 pixels
        mask = s.regions["pleural_effusion"].rasterize()
        assert mask.sum() == 128 * 121
        assert mask[668, 90] and mask[788, 217] and not mask[789, 217] and not mask[788, 218]
        assert s.meta["size"] == (N, N) and s.meta["variant"] == "chestx-det10"

    def test_image_found_by_name_and_bit_depths(self, dataset):
        nested = dataset[2]
        assert nested.meta["path"].endswith("extra/nested/36331.png")
        sixteen = dataset[0]
        assert sixteen.image.shape == (N, N)
        assert sixteen.image[0, 255] == pytest.approx(255 * 200 / 65535)
        eight = dataset[1]
        assert eight.image[0, 255] == pytest.approx(1.0)

    def test_no_problems(self, dataset):
        assert dataset.problems == []


def test_half_open_convention(tmp_path):
    ds = build(root=str(write_root(tmp_path)), box_convention="half_open")
    s = ds.annotation(3)
    assert s.regions["pleural_effusion"].rasterize().sum() == 127 * 120


def test_split_file_csv_and_text(tmp_path):
    root = write_root(tmp_path)
    csv_file = tmp_path / "split.csv"
    csv_file.write_text("file_name,fold\n36346.png,1\n99999.png,1\n36199.png,2\n")
    ds = build(root=str(root), split_file=str(csv_file))
    assert [ds.annotation(i).id for i in range(len(ds))] == ["36199", "36346"]
    assert len(ds.problems) == 1
    p = ds.problems[0]
    assert p.file == str(csv_file) and p.line == 3 and "99999" in p.message
    txt = tmp_path / "split.txt"
    txt.write_text("# ids\n36302\n\n36331.png\n")
    ds = build(root=str(root), split_file=str(txt))
    assert [ds.annotation(i).id for i in range(len(ds))] == ["36302", "36331"] and not ds.problems


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="test.json"):
        build(root=str(tmp_path))
    (tmp_path / "test.json").write_text('[{"file_name": "1.png", "syms": [')
    with pytest.raises(DataError, match="line 1"):
        build(root=str(tmp_path))
    entries = [
        {"file_name": "1.png", "syms": ["Mass"], "boxes": [[1000, 1000, 1030, 1010]]},
        {
            "file_name": "2.png",
            "syms": ["Nodule", "Pneumonia"],
            "boxes": [[1, 2, 3, 4], [5, 6, 7, 8]],
        },
        {"file_name": "3.png", "syms": ["Nodule"], "boxes": []},
        {"syms": [], "boxes": []},
        {"file_name": "4.png", "syms": ["Mass"], "boxes": [[50, 50, 10, 60]]},
        {"file_name": "5.png", "syms": ["Mass"], "boxes": [[2000, 2000, 2010, 2010]]},
    ]
    (tmp_path / "test.json").write_text(json.dumps(entries))
    ds = build(root=str(tmp_path))
    assert [ds.annotation(i).id for i in range(len(ds))] == ["1", "2", "4", "5"]
    text = [str(p) for p in ds.problems]
    assert all(p.file == str(tmp_path / "test.json") for p in ds.problems)
    assert any("entry 0 (1.png)" in t and "clipped" in t for t in text)
    assert any("entry 1 (2.png) sym 1" in t and "unknown label 'Pneumonia'" in t for t in text)
    assert any("entry 2 (3.png)" in t and "same length" in t for t in text)
    assert any("entry 3:" in t and "file_name" in t for t in text)
    assert any("entry 4 (4.png)" in t and "not [left, top, right, bottom]" in t for t in text)
    assert any("entry 5 (5.png)" in t and "outside" in t for t in text)
    clipped = ds.annotation(0).regions["mass"]
    assert clipped.boxes.tolist() == [[1000, 1000, 1024, 1011]]
    # a finding listed with a malformed box stays positive, without a region
    assert ds.annotation(2).labels["mass"] == 1 and "mass" not in ds.annotation(2).regions
    # an undecodable image names the file
    (tmp_path / "test_data").mkdir()
    (tmp_path / "test_data" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageReadError, match="1.png"):
        ds[0]
    report = inspect_dataset(ds)
    assert any(p["sample"] == "2" and "2.png" in p["file"] for p in report["problems"])


def test_polygons_need_chestx_det_files(tmp_path):
    with pytest.raises(ConfigError, match="ChestX_Det_test.json"):
        build(root=str(write_root(tmp_path)), regions="polygons")


def test_resized_images_move_the_regions(tmp_path):
    (tmp_path / "test.json").write_text(json.dumps(ENTRIES[:1]))
    write_png(tmp_path / "test_data" / "36302.png", size=(512, 512))
    s = build(root=str(tmp_path))[0]
    assert s.image.shape == (512, 512) and s.meta["label_size"] == (N, N)
    assert s.regions["pleural_effusion"].size == (512, 512)
    assert s.regions["pleural_effusion"].boxes.tolist() == [[399.5, 333.0, 469.0, 381.0]]


# ---- real files -------------------------------------------------------------------------------
def linked_root(tmp_path: Path, *files: Path, names: tuple[str, ...] = ()) -> Path:
    for k, f in enumerate(files):
        (tmp_path / (names[k] if names else f.name)).symlink_to(f)
    return tmp_path


def test_real_excerpt(tmp_path):
    excerpt = realdata("chestx-det10", "test.excerpt.json")
    ds = build(root=str(linked_root(tmp_path, excerpt, names=("test.json",))))
    assert len(ds) == 80 and not ds.problems
    s = ds.annotation(ds._ids.index("36365"))
    assert s.regions["emphysema"].instances == 2
    assert {f for f, v in s.labels.items() if v} == {
        "fibrosis",
        "emphysema",
        "mass",
        "consolidation",
        "fracture",
    }
    assert sum(ds.annotation(i).labels == dict.fromkeys(ds.findings, 0) for i in range(80)) > 0


def test_real_polygons_excerpt(tmp_path):
    excerpt = realdata("chestx-det10", "chestx-det-with-polygons.excerpt.json")
    root = linked_root(tmp_path, excerpt, names=("ChestX_Det_test.json",))
    boxes = build(root=str(root))
    polys = build(root=str(root), regions="polygons")
    assert boxes.variant == "chestx-det" and len(boxes.findings) == 13 and len(polys) == 20
    checked = 0
    for i in range(len(polys)):
        b, p = boxes.annotation(i), polys.annotation(i)
        assert b.labels == p.labels and set(b.regions) == set(p.regions)
        for f in p.regions:
            assert p.regions[f].instances == b.regions[f].instances
            poly_mask = p.regions[f].rasterize()
            # every contour lies inside its box (inclusive corners)
            assert poly_mask.any() and not (poly_mask & ~b.regions[f].rasterize()).any()
            checked += 1
    assert checked > 20


PUBLISHED = {  # datasets.md section 4: boxes / images per class
    "train": {
        "atelectasis": (289, 249),
        "calcification": (280, 163),
        "consolidation": (2091, 1340),
        "pleural_effusion": (1720, 1176),
        "emphysema": (232, 137),
        "fibrosis": (618, 417),
        "fracture": (546, 313),
        "mass": (129, 112),
        "nodule": (789, 307),
        "pneumothorax": (169, 154),
    },
    "test": {
        "atelectasis": (51, 48),
        "calcification": (67, 38),
        "consolidation": (446, 289),
        "pleural_effusion": (372, 252),
        "emphysema": (66, 39),
        "fibrosis": (120, 82),
        "fracture": (115, 76),
        "mass": (31, 30),
        "nodule": (166, 77),
        "pneumothorax": (42, 35),
    },
}


@pytest.mark.parametrize(
    "split,images,boxes,negatives", [("train", 3001, 6863, 681), ("test", 542, 1476, 83)]
)
def test_real_full_det10_counts(tmp_path, split, images, boxes, negatives):
    full = realdata("full", "chestx-det10", f"{split}.json")
    ds = build(root=str(linked_root(tmp_path, full)), split=split)
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == images and report["problems"] == []
    rows = report["findings"]
    assert sum(r["instances"] for r in rows.values()) == boxes
    assert {f: (r["instances"], r["with_region"]) for f, r in rows.items()} == PUBLISHED[split]
    assert all(r["positive"] == r["with_region"] for r in rows.values())
    no_finding = sum(not any(ds.annotation(i).labels.values()) for i in range(len(ds)))
    assert no_finding == negatives


@pytest.mark.parametrize(
    "split,images,boxes,negatives,extra",
    [
        (
            "train",
            3025,
            7905,
            547,
            {"cardiomegaly": 223, "diffuse_nodule": 227, "pleural_thickening": 526},
        ),
        (
            "test",
            553,
            1734,
            64,
            {"cardiomegaly": 70, "diffuse_nodule": 63, "pleural_thickening": 105},
        ),
    ],
)
def test_real_full_chestx_det_counts(tmp_path, split, images, boxes, negatives, extra):
    full = realdata("full", "chestx-det", f"{split}.json")
    root = linked_root(tmp_path, full, names=(f"ChestX_Det_{split}.json",))
    ds = build(root=str(root), split=split, regions="polygons")
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == images and report["problems"] == []
    rows = report["findings"]
    assert sum(r["instances"] for r in rows.values()) == boxes  # one polygon per box
    assert {f: rows[f]["instances"] for f in extra} == extra
    assert sum(not any(ds.annotation(i).labels.values()) for i in range(len(ds))) == negatives


def test_file_names_that_leave_the_root_are_dropped(tmp_path: Path) -> None:
    """Issue 16 item 3: `file_name: /etc/passwd` (or ../..) must not be opened: a problem, entry dropped."""
    root = write_root(tmp_path)
    entries = json.loads((root / "test.json").read_text())
    entries += [{"file_name": "/etc/passwd", "syms": [], "boxes": []},
                {"file_name": "../../outside/evil.png", "syms": [], "boxes": []}]
    (root / "test.json").write_text(json.dumps(entries))
    ds = build(root=str(root))
    assert len(ds) == len(ENTRIES) and "passwd" not in ds.ids() and "evil" not in ds.ids()
    bad = [p for p in ds.problems if "dataset root" in p.message]
    assert [p.message.split(":")[0] for p in bad] == [f"entry {len(ENTRIES)} (/etc/passwd)",
                                                      f"entry {len(ENTRIES) + 1} (../../outside/evil.png)"]
