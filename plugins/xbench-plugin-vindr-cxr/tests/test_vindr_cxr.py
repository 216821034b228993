"""Tests of the vindr-cxr plugin: synthetic PhysioNet and Kaggle layouts written here (DICOMs through
pydicom, CSVs with the real headers and quirks), the real Kaggle excerpt, and the complete Kaggle
train.csv against its published counts."""

from __future__ import annotations

import csv
import gzip
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from xbench_plugin_vindr_cxr.labels import ALL_FINDINGS, GLOBAL_LABELS, LOCAL_LABELS, finding_of
from xbench_plugin_vindr_cxr.readers import vote_boxes

from xbench_core import DataError, ImageReadError, Region, get_registry, testing
from xbench_core.inspect import inspect_dataset
from xbench_core.testing import DatasetPluginTests, realdata

ANN_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
KAGGLE_HEADER = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
# PhysioNet image_labels column order: 22 local labels, then 6 global labels.
LABEL_COLUMNS = [
    *LOCAL_LABELS,
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
]

# Three train images: A abnormal (3 readers disagreeing), B normal, C abnormal 16-bit.
A, B, C = "a" * 32, "b" * 32, "c" * 32
T1, T2, T3 = "d" * 32, "e" * 32, "f" * 32  # test split


def build(**options):
    return get_registry().datasets["vindr-cxr"].build(**options)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    bits: int,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
) -> Path:
    """A minimal uncompressed DX DICOM as VinDr ships them (16-bit words, `bits` stored)."""
    digital_xray = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage, for presentation
    window = {"WindowCenter": window[0], "WindowWidth": window[1]} if window else {}
    return testing.write_dicom(
        path, pixels, bits_allocated=16, bits_stored=bits, photometric=photometric,
        SOPClassUID=digital_xray, Modality="DX", PatientID="", **window,
    )  # fmt: skip


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def ramp(h: int, w: int, top: int) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * top // (h * w - 1)).astype(np.uint16)


def write_physionet(root: Path, images: bool = True) -> Path:
    """PhysioNet v1.0.0 layout. Image A (60x80, MONOCHROME1, 12-bit): R8 and R9 mark Cardiomegaly
    with overlapping boxes, R10 says No finding; R8 marks a Nodule/Mass alone; R9's image labels
    add Pneumonia (global). B: three readers, No finding. C (50x40, 16-bit): all three readers box
    Pleural effusion, two of them also Aortic enlargement; one box reaches beyond the image."""
    ann = [
        [A, "R8", "Cardiomegaly", 10, 20, 50, 40],
        [A, "R9", "Cardiomegaly", 30, 25, 70, 45],
        [A, "R8", "Nodule/Mass", 5, 5, 9, 8],
        [A, "R10", "No finding", "", "", "", ""],
        [B, "R1", "No finding", "", "", "", ""],
        [B, "R2", "No finding", "", "", "", ""],
        [B, "R3", "No finding", "", "", "", ""],
        [C, "R1", "Pleural effusion", 0, 30, 20, 50],
        [C, "R2", "Pleural effusion", 5, 28, 25, 49],
        [C, "R3", "Pleural effusion", 2, 35, 18, 60],  # y_max 60 > 50 rows: clipped
        [C, "R1", "Aortic enlargement", 20, 5, 30, 15],
        [C, "R3", "Aortic enlargement", 24, 8, 34, 18],
    ]
    write_csv(root / "annotations" / "annotations_train.csv", ANN_HEADER, ann)

    def label_row(image_id: str, rad: str, *names: str) -> list[object]:
        return [image_id, rad, *[int(n in names) for n in LABEL_COLUMNS]]

    write_csv(
        root / "annotations" / "image_labels_train.csv",
        ["image_id", "rad_id", *LABEL_COLUMNS],
        [
            label_row(A, "R8", "Cardiomegaly", "Nodule/Mass"),
            label_row(A, "R9", "Cardiomegaly", "Pneumonia"),
            label_row(A, "R10", "No finding"),
            *[label_row(B, r, "No finding") for r in ("R1", "R2", "R3")],
            label_row(C, "R1", "Pleural effusion", "Aortic enlargement"),
            label_row(C, "R2", "Pleural effusion"),
            label_row(C, "R3", "Pleural effusion", "Aortic enlargement"),
        ],
    )
    # Test split: 5-reader consensus, no rad_id column; "Other disease" (singular) in the labels.
    write_csv(
        root / "annotations" / "annotations_test.csv",
        [h for h in ANN_HEADER if h != "rad_id"],
        [
            [T1, "Lung Opacity", 10, 10, 30, 30],
            [T1, "Lung Opacity", 40, 10, 60, 30],
            [T1, "Enlarged PA", 30, 30, 40, 40],
            [T2, "No finding", "", "", "", ""],
            [T3, "Pulmonary fibrosis", 3, 4, 12, 14],
            [T3, "ILD", 0, 0, 20, 20],
        ],
    )
    test_columns = [c if c != "Other diseases" else "Other disease" for c in LABEL_COLUMNS]
    write_csv(
        root / "annotations" / "image_labels_test.csv",
        ["image_id", *test_columns],
        [
            [
                T1,
                *[int(c in ("Lung Opacity", "Enlarged PA", "Other disease")) for c in test_columns],
            ],
            [T2, *[int(c == "No finding") for c in test_columns]],
            [T3, *[int(c in ("Pulmonary fibrosis", "ILD", "Tuberculosis")) for c in test_columns]],
        ],
    )
    if images:
        write_dicom(root / "train" / f"{A}.dicom", ramp(60, 80, 4095), 12, "MONOCHROME1")
        write_dicom(root / "train" / f"{B}.dicom", ramp(64, 64, 1023), 10)
        write_dicom(root / "train" / f"{C}.dicom", ramp(50, 40, 65535), 16)
        write_dicom(root / "test" / f"{T1}.dicom", ramp(70, 70, 4095), 12, window=(2048, 4096))
        write_dicom(root / "test" / f"{T2}.dicom", ramp(48, 48, 1023), 10, "MONOCHROME1")
        write_dicom(root / "test" / f"{T3}.dicom", ramp(40, 30, 65535), 16)
    return root


def write_kaggle(root: Path) -> Path:
    """Kaggle VinBigData layout: train.csv (class_id, three readers) and train/<id>.dicom."""
    rows = [
        [A, "Cardiomegaly", 3, "R9", 10.0, 20.0, 50.0, 40.0],
        [A, "Cardiomegaly", 3, "R10", 12.0, 22.0, 48.0, 42.0],
        [A, "Other lesion", 9, "R8", 60.0, 5.0, 75.0, 15.0],
        [A, "Cardiomegaly", 3, "R8", 30.0, 25.0, 60.0, 45.0],
        [B, "No finding", 14, "R9", "", "", "", ""],
        [B, "No finding", 14, "R10", "", "", "", ""],
        [B, "No finding", 14, "R8", "", "", "", ""],
    ]
    write_csv(root / "train.csv", KAGGLE_HEADER, rows)
    write_dicom(root / "train" / f"{A}.dicom", ramp(60, 80, 4095), 12, "MONOCHROME1")
    write_dicom(root / "train" / f"{B}.dicom", ramp(64, 64, 1023), 10)
    return root


@pytest.fixture(scope="module")
def physionet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_physionet(tmp_path_factory.mktemp("vindr-physionet"))


# ---------------------------------------------------------------------------------------------
class TestVinDr(DatasetPluginTests):
    name = "vindr-cxr"

    @pytest.fixture(scope="class", params=["physionet-test", "physionet-train-majority", "kaggle"])
    @classmethod
    def dataset(cls, request, physionet: Path, tmp_path_factory: pytest.TempPathFactory):
        if request.param == "kaggle":
            return build(root=str(write_kaggle(tmp_path_factory.mktemp("vindr-kaggle"))), split="train")
        if request.param == "physionet-test":
            return build(root=str(physionet), split="test")
        return build(root=str(physionet), split="train", readers="majority")


# ---------------------------------------------------------------------------------------------
def test_label_names_map_to_canonical_findings() -> None:
    from xbench_core import FINDINGS

    ids = {f.id for f in FINDINGS}
    assert len(LOCAL_LABELS) == 22 and set(ALL_FINDINGS) <= ids
    expected = {
        "Nodule/Mass": "nodule_mass",
        "Pulmonary fibrosis": "fibrosis",
        "Lung Opacity": "lung_opacity",
        "Other lesion": "other_lesion",
        "ILD": "ild",
        "Enlarged PA": "enlarged_pa",
        "Other disease": "other_diseases",
        "Other diseases": "other_diseases",
        "No finding": "no_finding",
        "Aortic enlargement": "aortic_enlargement",
        "Pleural effusion": "pleural_effusion",
    }
    for name, finding in expected.items():
        assert finding_of(name) == finding
        assert finding_of(f" {name.upper()} ") == finding
    assert set(GLOBAL_LABELS.values()) == {
        "copd",
        "lung_tumor",
        "pneumonia",
        "tuberculosis",
        "other_diseases",
    }
    assert finding_of("Effusion") is None  # no substring matching (torchxrayvision's pitfall)


def test_physionet_train_union_labels_and_regions(physionet: Path) -> None:
    ds = build(root=str(physionet), split="train")
    assert ds.layout == "physionet" and len(ds) == 3 and ds.problems == []
    assert [ds.annotation(i).id for i in range(3)] == [A, B, C]
    assert len(ds.findings) == 22 + 5 + 1 and ds.findings[-1] == "no_finding"
    a = ds.annotation(0)
    pos = {f for f, v in a.labels.items() if v}
    assert pos == {
        "cardiomegaly",
        "nodule_mass",
        "pneumonia",
    }  # union of readers; global from image labels
    assert set(a.labels) == set(
        ds.findings
    )  # every vocabulary finding labelled: negatives explicit
    assert a.meta["readers"] == ["R10", "R8", "R9"] and a.meta["reader_rule"] == "union"
    assert a.meta["size"] == (60, 80)  # from the DICOM header, without decoding pixels
    assert set(a.regions) == {"cardiomegaly", "nodule_mass"}  # pneumonia is image-level only
    np.testing.assert_array_equal(
        a.regions["cardiomegaly"].boxes, [[10, 20, 50, 40], [30, 25, 70, 45]]
    )
    mask = a.regions["cardiomegaly"].rasterize()
    assert mask.shape == (60, 80) and mask.sum() == 40 * 20 + 40 * 20 - 20 * 15
    b = ds.annotation(1)
    assert b.labels["no_finding"] == 1 and sum(b.labels.values()) == 1 and not b.regions
    c = ds.annotation(2)
    assert c.regions["pleural_effusion"].boxes[:, 3].max() == 50  # clipped to the 50 rows
    clipped = [p for p in ds.problems if p.sample == C]
    assert len(clipped) == 1 and "beyond the 40x50 image" in clipped[0].message
    assert clipped[0].line == 11 and clipped[0].file.endswith("annotations_train.csv")


def test_physionet_train_majority(physionet: Path) -> None:
    ds = build(root=str(physionet), split="train", readers="majority")
    a = ds.annotation(0)
    # cardiomegaly: R8 and R9 (2 of 3); nodule_mass: R8 only; pneumonia: R9 only.
    assert {f for f, v in a.labels.items() if v} == {"cardiomegaly"}
    np.testing.assert_array_equal(
        a.regions["cardiomegaly"].boxes, [[30, 25, 50, 40]]
    )  # the overlap
    assert a.meta["reader_rule"] == "majority"
    c = ds.annotation(2)
    assert c.labels["pleural_effusion"] == 1 and c.labels["aortic_enlargement"] == 1
    # The 2-of-3 vote region equals a per-pixel vote of the three readers' masks.
    for finding in ("pleural_effusion", "aortic_enlargement"):
        votes = np.zeros((50, 40), int)
        for rad in ("R1", "R2", "R3"):
            boxes = [r[1:5] for r in ds._images[2].boxes[finding] if r[0] == rad]
            if boxes:
                votes += Region.from_boxes((50, 40), boxes).rasterize()
        np.testing.assert_array_equal(c.regions[finding].rasterize(), votes >= 2)


def test_majority_without_overlap_is_a_positive_without_region(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "train.csv",
        KAGGLE_HEADER,
        [
            [A, "Nodule/Mass", 8, "R1", 0, 0, 10, 10],
            [A, "Nodule/Mass", 8, "R2", 20, 20, 30, 30],
            [A, "No finding", 14, "R3", "", "", "", ""],
        ],
    )
    s = build(root=str(tmp_path), split="train", readers="majority").annotation(0)
    assert s.labels["nodule_mass"] == 1 and not s.regions
    assert s.meta["positive_without_region"] == ["nodule_mass"]


@pytest.mark.parametrize("seed", range(3))
def test_vote_boxes_equal_a_naive_pixel_vote(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 37, 53
    for _ in range(60):
        readers = []
        for _r in range(int(rng.integers(2, 6))):
            n = int(rng.integers(0, 4))
            xy = rng.uniform(-3, 60, size=(n, 2))
            wh = rng.uniform(0, 25, size=(n, 2))
            if rng.random() < 0.5:
                xy, wh = np.round(xy), np.round(wh)
            readers.append([(x, y, x + bw, y + bh) for (x, y), (bw, bh) in zip(xy, wh)])
        k = int(rng.integers(1, len(readers) + 1))
        votes = np.zeros((h, w), int)
        for boxes in readers:
            if boxes:
                votes += Region.from_boxes((h, w), boxes).rasterize()
        got = vote_boxes(readers, k)
        region = Region.from_boxes((h, w), got) if got else None
        mask = region.rasterize() if region is not None else np.zeros((h, w), bool)
        np.testing.assert_array_equal(mask, votes >= k)


def test_physionet_test_split_is_a_consensus(physionet: Path) -> None:
    ds = build(root=str(physionet), split="test", readers="majority")
    assert [s.id for s in map(ds.annotation, range(len(ds)))] == [T1, T2, T3]
    t1 = ds.annotation(0)
    assert t1.meta["readers"] == ["consensus"] and t1.meta["reader_rule"] == "consensus"
    assert {f for f, v in t1.labels.items() if v} == {
        "lung_opacity",
        "enlarged_pa",
        "other_diseases",
    }
    assert t1.regions["lung_opacity"].instances == 2  # a single reader: boxes kept as they are
    assert ds.annotation(1).labels["no_finding"] == 1
    t3 = ds.annotation(2)
    assert {f for f, v in t3.labels.items() if v} == {"fibrosis", "ild", "tuberculosis"}
    assert not ds.problems


def test_dicom_decoding_through_the_dataset(physionet: Path) -> None:
    ds = build(root=str(physionet), split="train")
    a, b, c = ds[0], ds[1], ds[2]
    # A is MONOCHROME1 12-bit: the raw ramp 0..4095 is inverted, so the first pixel is white.
    assert (
        a.image.shape == (60, 80)
        and a.image[0, 0] == pytest.approx(1.0)
        and a.image[-1, -1] == pytest.approx(0.0)
    )
    assert b.image[-1, -1] == pytest.approx(1.0) and b.image[0, 0] == pytest.approx(0.0)  # 10-bit
    assert (
        c.image.shape == (50, 40)
        and c.image.dtype == np.float32
        and c.image[-1, -1] == pytest.approx(1.0)
    )
    assert c.regions["pleural_effusion"].size == (50, 40)


def test_sizes_without_headers_and_inspect_without_images(
    physionet: Path, tmp_path: Path, monkeypatch
) -> None:
    import pydicom

    opened: list[str] = []
    real = pydicom.dcmread
    monkeypatch.setattr(
        pydicom, "dcmread", lambda *a, **k: opened.append(str(a[0])) or real(*a, **k)
    )
    ds = build(root=str(physionet), split="train", read_headers=False)
    report = inspect_dataset(ds, skip_images=True)
    assert opened == []  # skip_images with read_headers off opens no image file at all
    assert report["images"] == 3 and report["findings"]["cardiomegaly"] == {
        "positive": 1,
        "with_region": 1,
        "instances": 2,
    }
    s = ds.annotation(0)
    assert s.meta["size"] is None and s.regions["cardiomegaly"].size == (0, 0)
    s = ds[0]  # the engine's entry point: decoded, then regions rebuilt at the decoded size
    assert s.meta["size"] == s.image.shape == (60, 80) and s.regions["cardiomegaly"].size == (60, 80)
    # Before the images are downloaded: labels alone, no size, same counts.
    bare = write_physionet(tmp_path, images=False)
    report2 = inspect_dataset(build(root=str(bare), split="train"), skip_images=True)
    assert report2["findings"] == report["findings"] and report2["problems"] == []


def test_size_table_clips_and_reports_at_construction(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "train.csv",
        KAGGLE_HEADER,
        [
            [A, "Cardiomegaly", 3, "R1", 10, 20, 90, 40],  # beyond the 80 columns
            [A, "Pneumothorax", 12, "R2", 85, 5, 95, 15],  # entirely outside
            [A, "ILD", 5, "R3", 0, 0, 5, 5],
        ],
    )
    write_csv(tmp_path / "train_meta.csv", ["image_id", "dim0", "dim1"], [[A, 60, 80]])
    ds = build(root=str(tmp_path), split="train")
    assert [(p.sample, p.line) for p in ds.problems] == [(A, 2), (A, 3)]
    s = ds.annotation(0)
    assert s.meta["size"] == (60, 80)
    np.testing.assert_array_equal(s.regions["cardiomegaly"].boxes, [[10, 20, 80, 40]])
    assert "pneumothorax" not in s.regions and s.labels["pneumothorax"] == 1


def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "train.csv",
        KAGGLE_HEADER,
        [
            [A, "Cardiomegaly", 3, "R1", 10, 20, 50, 40],  # line 2: fine
            [A, "Cardiomegaly", 3, "R2", 10, 20],  # line 3: too few fields
            [A, "Cardiomegaly", 3, "R3", 50, 20, 10, 40],  # line 4: x_max < x_min
            [A, "Cardiomegaly", 3, "R3", "ten", 20, 50, 40],  # line 5: not a number
            [A, "Pleural Plaque", 15, "R3", 1, 2, 3, 4],  # line 6: unknown label
            [A, "Atelectasis", 5, "R3", -4, 2, 10, 12],  # line 7: class_id wrong, x < 0
            [B, "No finding", 14, "R1", "", "", "", ""],
            [B, "Pleural Plaque", 15, "R2", 1, 2, 3, 4],  # line 9: unknown again
        ],
    )
    ds = build(root=str(tmp_path), split="train")
    by_line = defaultdict(list)
    for p in ds.problems:
        assert p.file == str(path)
        by_line[p.line].append(p.message)
    assert "malformed row" in by_line[3][0]
    assert "x_min <= x_max" in by_line[4][0]
    assert "malformed box" in by_line[5][0]
    assert "unknown label 'Pleural Plaque' on 2 row(s)" in by_line[6][0]
    assert any("class_id '5'" in m for m in by_line[7]) and any(
        "clipped at 0" in m for m in by_line[7]
    )
    s = ds.annotation(0)
    assert s.regions["cardiomegaly"].instances == 1  # only line 2 survived
    np.testing.assert_array_equal(s.regions["atelectasis"].boxes, [[0, 2, 10, 12]])
    assert len(ds) == 2 and ds.annotation(1).labels["no_finding"] == 1


def test_missing_root_and_label_files_show_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="annotations/annotations_test.csv"):
        build(root=str(tmp_path))
    with pytest.raises(DataError, match="annotation_file not found"):
        build(root=str(tmp_path), annotation_file="missing.csv")
    write_csv(tmp_path / "train.csv", KAGGLE_HEADER, [])
    with pytest.raises(DataError, match="split=train"):
        build(root=str(tmp_path), split="test")
    write_csv(tmp_path / "other.csv", ["image_id", "label"], [[A, "x"]])
    with pytest.raises(DataError, match="lacks class_name"):
        build(root=str(tmp_path), annotation_file="other.csv", split="train")
    from xbench_core import ConfigError

    with pytest.raises(ConfigError, match="readers"):
        build(root=str(tmp_path), readers="mean")


def test_split_file_csv_and_text(physionet: Path, tmp_path: Path) -> None:
    csv_file = write_csv(
        tmp_path / "split.csv", ["image_id", "fold"], [[C, 1], ["0" * 32, 1], [A, 1]]
    )
    ds = build(root=str(physionet), split="train", split_file=str(csv_file))
    assert [ds.annotation(i).id for i in range(len(ds))] == [A, C]
    assert [(p.file, p.line, p.sample) for p in ds.problems if "not in" in p.message] == [
        (str(csv_file), 3, "0" * 32)
    ]
    txt = tmp_path / "split.txt"
    txt.write_text(f"# published test ids\n{B}.dicom\n\ntrain/{A}.dicom\n")
    ds = build(root=str(physionet), split="train", split_file=str(txt))
    assert [ds.annotation(i).id for i in range(len(ds))] == [A, B]


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    write_kaggle(tmp_path)
    broken = tmp_path / "train" / f"{B}.dicom"
    broken.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)
    ds = build(root=str(tmp_path), split="train")
    with pytest.raises(ImageReadError, match=str(broken)):
        ds[1]
    report = inspect_dataset(ds)
    assert [p["sample"] for p in report["problems"]] == [B]
    assert str(broken) in report["problems"][0]["file"]


# ------------------------------------------------------------------- real files
def naive_counts(path: Path) -> dict[str, tuple[int, int, int]]:
    """Per class: boxes, images with a box, images where >= 2 readers put a box (independent)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    boxes = Counter(r["class_name"] for r in rows if r["x_min"])
    readers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        if r["x_min"]:
            readers[(r["class_name"], r["image_id"])].add(r["rad_id"])
    images = Counter(c for c, _ in readers)
    agree = Counter(c for (c, _), rads in readers.items() if len(rads) >= 2)
    return {c: (boxes[c], images[c], agree[c]) for c in boxes}


def test_real_excerpt() -> None:
    path = realdata("vindr", "vinbigdata-train.excerpt.csv")
    ds = build(root=str(path.parent), annotation_file=path.name, split="train")
    assert ds.layout == "kaggle" and not ds.problems
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == 80 and report["problems"] == []
    assert report["findings"]["no_finding"]["positive"] == 30
    assert all(len(ds.annotation(i).meta["readers"]) == 3 for i in range(len(ds)))
    majority = inspect_dataset(
        build(root=str(path.parent), annotation_file=path.name, split="train", readers="majority"),
        skip_images=True,
    )
    for name, (boxes, images, agree) in naive_counts(path).items():
        row = report["findings"][finding_of(name)]
        assert (row["instances"], row["with_region"], row["positive"]) == (boxes, images, images), (
            name
        )
        assert majority["findings"][finding_of(name)]["positive"] == agree, name
    assert report["findings"]["cardiomegaly"] == {
        "positive": 27,
        "with_region": 27,
        "instances": 64,
    }
    # Majority regions of the real boxes equal a per-pixel vote at native resolution.
    checked = 0
    mds = build(root=str(path.parent), annotation_file=path.name, split="train", readers="majority")
    for i in range(len(mds)):
        s = mds.annotation(i)
        for finding, region in s.regions.items():
            rows = mds._images[i].boxes[finding]
            h = int(max(r[4] for r in rows)) + 2
            w = int(max(r[3] for r in rows)) + 2
            votes = np.zeros((h, w), int)
            for rad in {r[0] for r in rows}:
                votes += Region.from_boxes(
                    (h, w), [r[1:5] for r in rows if r[0] == rad]
                ).rasterize()
            got = Region((h, w), boxes=region.boxes).rasterize()
            np.testing.assert_array_equal(got, votes >= 2)
            checked += 1
            if checked >= 12:
                return


class TestFullKaggleTrainFile:
    """The complete Kaggle VinBigData train.csv (67,914 rows), read gzipped in place."""

    @pytest.fixture(scope="class")
    @classmethod
    def path(cls) -> Path:
        return realdata("full", "vindr", "vinbigdata-train.csv.gz")

    @pytest.fixture(scope="class")
    @classmethod
    def union(cls, path: Path):
        return build(root=str(path.parent), annotation_file=path.name, split="train")

    def test_published_counts(self, union, path: Path) -> None:
        report = inspect_dataset(union, skip_images=True)
        assert report["images"] == 15_000 and report["problems"] == []
        findings = report["findings"]
        assert findings["no_finding"]["positive"] == 10_606  # 15,000 - 4,394 with findings
        assert sum(1 for i in range(len(union)) if union.annotation(i).regions) == 4_394
        assert sum(row["instances"] for row in findings.values()) == 36_096
        published = {  # reference/datasets.md section 7 (boxes, images)
            "aortic_enlargement": (7162, 3067),
            "cardiomegaly": (5427, 2300),
            "pleural_thickening": (4842, 1981),
            "fibrosis": (4655, 1617),
            "nodule_mass": (2580, 826),
            "lung_opacity": (2483, 1322),
            "pleural_effusion": (2476, 1032),
            "other_lesion": (2203, 1134),
            "infiltration": (1247, 613),
            "ild": (1000, 386),
            "calcification": (960, 452),
            "consolidation": (556, 353),
            "atelectasis": (279, 186),
            "pneumothorax": (226, 96),
        }
        for finding, (boxes, images) in published.items():
            assert findings[finding] == {
                "positive": images,
                "with_region": images,
                "instances": boxes,
            }

    def test_majority_counts(self, path: Path) -> None:
        ds = build(
            root=str(path.parent), annotation_file=path.name, split="train", readers="majority"
        )
        findings = inspect_dataset(ds, skip_images=True)["findings"]
        agree = {  # images where >= 2 readers marked the class, reference/datasets.md section 7
            "aortic_enlargement": 2346,
            "cardiomegaly": 1817,
            "pleural_thickening": 882,
            "fibrosis": 1017,
            "nodule_mass": 405,
            "lung_opacity": 547,
            "pleural_effusion": 634,
            "other_lesion": 362,
            "infiltration": 245,
            "ild": 152,
            "calcification": 177,
            "consolidation": 121,
            "atelectasis": 62,
            "pneumothorax": 58,
        }
        assert {f: findings[f]["positive"] for f in agree} == agree
        # pairs agreed by 2 or 3 readers: 3,559 + 5,266 (published)
        assert sum(agree.values()) == 3_559 + 5_266
        assert all(findings[f]["with_region"] <= n for f, n in agree.items())


def test_image_ids_that_leave_the_root_are_dropped(tmp_path: Path) -> None:
    """Issue 16 item 3: an image_id that is a path out of the root is a problem with its line."""
    root = write_kaggle(tmp_path)
    with open(root / "train.csv", "a") as fh:
        fh.write("../../outside/evil,No finding,14,R9,,,,\n/etc/passwd,No finding,14,R9,,,,\n")
    ds = build(root=str(root), split="train")
    assert sorted(ds.ids()) == sorted([A, B])
    bad = [p for p in ds.problems if "dataset root" in p.message]
    assert [p.line for p in bad] == [9, 10]
