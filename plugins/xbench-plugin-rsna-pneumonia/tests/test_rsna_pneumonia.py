"""Tests of the rsna-pneumonia dataset plugin: synthetic downloads in the real Kaggle and MD.ai
layouts (DICOMs written with pydicom), the real label excerpt, and the complete label file."""

from __future__ import annotations

import collections
import csv
import io
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xbench_core import ConfigError, DataError, ImageReadError, Region, get_registry, testing
from xbench_core.inspect import inspect_dataset
from xbench_core.testing import DatasetPluginTests, realdata

HEADER = "patientId,x,y,width,height,Target\n"
# Three positives (one box, two boxes) and two negatives, as in the Kaggle file: float box values,
# empty fields on Target 0 rows, rows of one image adjacent but images not sorted.
PIDS = {
    "pos1": "0ebc8268-df3d-45d8-8ee7-b34880c62830",
    "pos2": "15f49c72-0702-472d-aff2-4582682392f2",
    "neg1": "15588680-1e41-4ba7-b785-b7e053d39adc",
    "neg2": "00436515-870c-4b36-a041-de91049b9ab4",
}
BOXES = {
    "pos1": [(225.0, 536.0, 225.0, 133.0), (691.0, 505.0, 191.0, 209.0)],
    "pos2": [(578.0, 607.0, 199.0, 239.0)],
}


def label_text() -> str:
    rows = [HEADER]
    for x, y, w, h in BOXES["pos1"]:
        rows.append(f"{PIDS['pos1']},{x},{y},{w},{h},1\n")
    rows.append(f"{PIDS['neg1']},,,,,0\n")
    rows.append(f"{PIDS['pos2']},{','.join(map(str, BOXES['pos2'][0]))},1\n")
    rows.append(f"{PIDS['neg2']},,,,,0\n")
    return "".join(rows)


def write_dicom(path: Path, pixels: np.ndarray, *, patient_id: str = "", **options) -> Path:  # noqa: ANN003
    """A CR DICOM as the MD.ai export writes them (uncompressed here)."""
    options = {"ViewPosition": "PA", **options}
    return testing.write_dicom(
        path, pixels, PatientID=patient_id, PatientAge="051Y", PatientSex="F", **options
    )


def ramp(dtype: type, top: int) -> np.ndarray:
    """A 1024x1024 image whose value grows along x: easy to check after decoding."""
    row = np.linspace(0, top, 1024).round().astype(dtype)
    return np.tile(row, (1024, 1))


def write_kaggle(root: Path) -> Path:
    """The Kaggle layout: labels CSV + stage_2_train_images/<patientId>.dcm, mixed pixel formats."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(label_text())
    images = root / "stage_2_train_images"
    write_dicom(images / f"{PIDS['pos1']}.dcm", ramp(np.uint8, 255), patient_id=PIDS["pos1"])
    # 16-bit storage with 12 bits used, MONOCHROME1 (inverted)
    write_dicom(
        images / f"{PIDS['pos2']}.dcm",
        ramp(np.uint16, 4095),
        photometric="MONOCHROME1",
        bits_stored=12,
        patient_id=PIDS["pos2"],
        ViewPosition="AP",
    )
    write_dicom(images / f"{PIDS['neg1']}.dcm", ramp(np.uint16, 65535), patient_id=PIDS["neg1"])
    write_dicom(images / f"{PIDS['neg2']}.dcm", ramp(np.uint8, 255), patient_id=PIDS["neg2"])
    return root


def build(**options):  # noqa: ANN003, ANN201
    return get_registry().datasets["rsna-pneumonia"].build(**options)


def index_of(ds, pid: str) -> int:  # noqa: ANN001
    return ds.ids().index(pid)


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kaggle(tmp_path_factory.mktemp("rsna") / "rsna-pneumonia-detection-challenge")


class TestRSNAConformance(DatasetPluginTests):
    name = "rsna-pneumonia"

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, kaggle_root: Path):  # noqa: ANN201
        return build(root=str(kaggle_root))


# -- labels and regions ------------------------------------------------------------------------
def test_labels_boxes_and_order(kaggle_root: Path) -> None:
    ds = build(root=str(kaggle_root))
    assert ds.layout == "kaggle" and ds.problems == []
    assert ds.ids() == sorted(PIDS.values())
    for key, pid in PIDS.items():
        s = ds.annotation(index_of(ds, pid))
        assert s.id == pid and s.meta["patient_id"] == pid
        assert s.labels == {"pneumonia": int(key.startswith("pos"))}
        assert s.meta["path"] == str(kaggle_root / "stage_2_train_images" / f"{pid}.dcm")
        if key.startswith("neg"):
            assert s.regions == {}
            continue
        region = s.regions["pneumonia"]
        assert region.size == (1024, 1024) and region.instances == len(BOXES[key])
        expected = [[x, y, x + w, y + h] for x, y, w, h in BOXES[key]]
        np.testing.assert_array_equal(region.boxes, expected)
        # MedKLIP's seg_map: mask[y:y+h, x:x+w] = 1 per box, union over boxes, at 1024x1024
        mask = np.zeros((1024, 1024), bool)
        for x, y, w, h in BOXES[key]:
            mask[int(y) : int(y) + int(h), int(x) : int(x) + int(w)] = True
        np.testing.assert_array_equal(region.rasterize(), mask)


def test_dicom_decoding_monochrome1_and_16_bit(kaggle_root: Path) -> None:
    ds = build(root=str(kaggle_root))
    s8 = ds[index_of(ds, PIDS["pos1"])]
    np.testing.assert_allclose(s8.image[0], np.linspace(0, 255, 1024).round() / 255, atol=1e-6)
    s12 = ds[index_of(ds, PIDS["pos2"])]
    # MONOCHROME1: inverted, scaled by the 12 stored bits (not the 16 allocated)
    np.testing.assert_allclose(
        s12.image[5], 1 - np.linspace(0, 4095, 1024).round() / 4095, atol=1e-6
    )
    s16 = ds[index_of(ds, PIDS["neg1"])]
    assert s16.image.dtype == np.float32 and s16.image[0, -1] == 1.0 and s16.image[0, 0] == 0.0
    # view, age and sex come from the DICOM header when no headers CSV is there
    assert s12.meta["view"] == "AP" and s8.meta["view"] == "PA" and s8.meta["age"] == 51
    assert s8.meta["path"].endswith(f"{PIDS['pos1']}.dcm")


def test_dataset_pickles_for_loader_workers(kaggle_root: Path) -> None:
    ds = build(root=str(kaggle_root))
    again = pickle.loads(pickle.dumps(ds))
    assert again.ids() == ds.ids()
    np.testing.assert_array_equal(
        again[0].regions.get("pneumonia", Region((1024, 1024))).boxes,
        ds[0].regions.get("pneumonia", Region((1024, 1024))).boxes,
    )


def test_companion_files_add_meta_and_views(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(label_text())
    classes = ["patientId,class"] + [
        f"{PIDS['pos1']},Lung Opacity",
        f"{PIDS['pos1']},Lung Opacity",
        f"{PIDS['neg1']},Normal",
        f"{PIDS['pos2']},Lung Opacity",
        f"{PIDS['neg2']},No Lung Opacity / Not Normal",
    ]
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")
    headers = [
        ",BodyPartExamined,Filename,PatientAge,PatientID,PatientSex,PixelSpacing,ViewPosition"
    ]
    for k, (key, pid) in enumerate(PIDS.items()):
        view = "AP" if key in ("pos2", "neg2") else "PA"
        headers.append(f"{k},CHEST,{pid}.dcm,{40 + k},{pid},M,0.168,{view}")
    (root / "stage_2_train_images_dicom_headers.csv").write_text("\n".join(headers) + "\n")
    ds = build(root=str(root))
    s = ds.annotation(index_of(ds, PIDS["neg2"]))
    assert s.meta["class"] == "No Lung Opacity / Not Normal"
    assert s.meta["view"] == "AP" and s.meta["sex"] == "M" and s.meta["pixel_spacing"] == 0.168
    ap = build(root=str(root), views="ap")
    assert ap.ids() == sorted([PIDS["pos2"], PIDS["neg2"]])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "stage_2_train_labels.csv").write_text(label_text())
    with pytest.raises(ConfigError, match="headers_file"):
        build(root=str(bare), views=["PA"])


# -- layouts -----------------------------------------------------------------------------------
def _nested_uids(k: int) -> tuple[str, str, str]:
    head, middle = "1.2.276.0.7230010.3.1", f"8323329.{1000 + k}.1517874352"
    return (
        f"{head}.2.{middle}.{30 + k}",
        f"{head}.3.{middle}.{20 + k}",
        f"{head}.4.{middle}.{40 + k}",
    )


def write_mdai(root: Path) -> dict[str, Path]:
    """The MD.ai export: <Study>/<Series>/<SOP>.dcm, file names unrelated to the patientId."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(label_text())
    paths = {}
    top = root / "mdai_rsna_project_x9N20BZa_images_2018-07-20-153330"
    for k, pid in enumerate(sorted(PIDS.values())):
        study, series, sop = _nested_uids(k)
        paths[pid] = write_dicom(
            top / study / series / f"{sop}.dcm",
            ramp(np.uint8, 255),
            patient_id=pid,
            SOPInstanceUID=sop,
        )
    return paths


def test_mdai_nested_layout_by_patient_id_tag(tmp_path: Path) -> None:
    paths = write_mdai(tmp_path / "mdai")
    ds = build(root=str(tmp_path / "mdai"))
    assert ds.layout == "nested"
    assert not ds._index.built  # nothing indexed until an image is needed
    report = inspect_dataset(ds, skip_images=True)
    assert not ds._index.built and report["problems"] == []
    for pid, path in paths.items():
        s = ds[index_of(ds, pid)]
        assert s.meta["path"] == str(path) and s.image.shape == (1024, 1024)
    assert ds._index.built


def test_images_dir_flat_or_nested(tmp_path: Path) -> None:
    paths = write_mdai(tmp_path / "mdai")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "stage_2_train_labels.csv").write_text(label_text())
    nested = build(root=str(labels), images_dir=str(tmp_path / "mdai"))
    assert nested.layout == "nested"
    assert nested[index_of(nested, PIDS["neg2"])].meta["path"] == str(paths[PIDS["neg2"]])
    flat = tmp_path / "flat"
    write_dicom(flat / f"{PIDS['neg2']}.dcm", ramp(np.uint8, 255))
    ds = build(root=str(labels), images_dir=str(flat))
    assert ds.layout == "kaggle"
    assert ds.annotation(index_of(ds, PIDS["neg2"])).meta["path"] == str(
        flat / f"{PIDS['neg2']}.dcm"
    )


def test_mdai_nested_layout_with_medklip_split_file(tmp_path: Path) -> None:
    paths = write_mdai(tmp_path / "mdai")
    # MedKLIP's Sample_Zero-Shot_Grounding_RSNA/data_sample/test.csv: ID,img_path,boxes,classes
    lines = ["ID,img_path,boxes,classes"]
    for key in ("pos1", "neg1"):
        pid = PIDS[key]
        boxes = "|".join(";".join(map(str, b)) for b in BOXES.get(key, [])) or "nan"
        lines.append(
            f"{pid},/mnt/DATA/RSNA-2018/{paths[pid].relative_to(tmp_path / 'mdai')},{boxes},{int(key == 'pos1')}"
        )
    lines.append("ffffffff-0000-0000-0000-000000000000,/mnt/x.dcm,nan,0")
    split = tmp_path / "medklip_test.csv"
    split.write_text("\n".join(lines) + "\n")
    ds = build(root=str(tmp_path / "mdai"), split="test", split_file=str(split))
    assert ds.split == "test" and ds.ids() == sorted([PIDS["pos1"], PIDS["neg1"]])
    [problem] = ds.problems
    assert (
        problem.line == 4 and problem.sample.startswith("ffffffff") and str(split) in problem.file
    )
    s = ds[index_of(ds, PIDS["pos1"])]
    assert s.meta["path"] == str(paths[PIDS["pos1"]])
    assert ds._by_header is None  # found through the split file's path, no header was read


def test_nested_layout_found_by_stem(tmp_path: Path) -> None:
    root = tmp_path / "nested"
    root.mkdir()
    (root / "labels").mkdir()
    (root / "labels" / "stage_2_train_labels.csv").write_text(label_text())
    for k, pid in enumerate(PIDS.values()):
        write_dicom(root / "images" / f"part{k % 2}" / f"{pid}.dcm", ramp(np.uint8, 255))
    ds = build(root=str(root))  # label file one folder down, images two
    assert ds.label_file == str(root / "labels" / "stage_2_train_labels.csv")
    for pid in PIDS.values():
        assert ds[index_of(ds, pid)].meta["path"].endswith(f"{pid}.dcm")


def test_resized_png_conversion_scales_boxes(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "png"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(label_text())
    for pid in PIDS.values():
        (root / "stage_2_train_images_png").mkdir(exist_ok=True)
        Image.fromarray(np.full((256, 256), 128, np.uint8)).save(
            root / "stage_2_train_images_png" / f"{pid}.png"
        )
    ds = build(root=str(root))
    s = ds[index_of(ds, PIDS["pos2"])]
    assert s.image.shape == (256, 256) and s.meta["label_size"] == (1024, 1024)
    region = s.regions["pneumonia"]
    assert region.size == (256, 256)
    x, y, w, h = BOXES["pos2"][0]
    np.testing.assert_allclose(region.boxes, [[x / 4, y / 4, (x + w) / 4, (y + h) / 4]])


# -- bad input ---------------------------------------------------------------------------------
def test_missing_root_and_label_file_show_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="stage_2_train_images/<patientId>.dcm"):
        build(root=str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        build(root=str(tmp_path), label_file="missing.csv")
    with pytest.raises(ConfigError, match="required"):
        get_registry().datasets["rsna-pneumonia"].build()
    with pytest.raises(ConfigError, match="split_file"):
        build(root=str(tmp_path), split_fil="x")


def test_malformed_rows_are_problems_with_file_and_line(tmp_path: Path) -> None:
    text = (
        HEADER
        + "a0,100.0,100.0,50.0,60.0,1\n"  # line 2: fine
        + "a1,100.0,100.0\n"  # line 3: short row
        + "a2,,,,,2\n"  # line 4: Target 2
        + "a3,ten,100.0,50.0,60.0,1\n"  # line 5: not a number
        + "a4,,,,,1\n"  # line 6: Target 1 without a box
        + "a5,100.0,100.0,-5.0,60.0,1\n"  # line 7: negative width
        + "a6,1000.0,-10.0,50.0,60.0,1\n"  # line 8: outside: clipped
        + "a7,1100.0,10.0,50.0,60.0,1\n"  # line 9: wholly outside: dropped, image positive
        + "a8,5.0,5.0,5.0,5.0,0\n"  # line 10: Target 0 with a box: box ignored
        + "a9,,,,,0\n"
        + "a9,1.0,2.0,3.0,4.0,1\n"  # line 12: a9 has Target 0 and 1 rows
    )
    (tmp_path / "stage_2_train_labels.csv").write_text(text)
    ds = build(root=str(tmp_path))
    assert ds.ids() == ["a0", "a6", "a7", "a8", "a9"]
    lines = {p.line: p for p in ds.problems if p.line is not None}
    assert set(lines) == {3, 4, 5, 6, 7, 8, 9, 10}
    assert all(p.file == str(tmp_path / "stage_2_train_labels.csv") for p in ds.problems)
    assert "clipped" in lines[8].message and "dropped" in lines[9].message
    assert any(p.sample == "a9" and "both" in p.message for p in ds.problems)
    clipped = ds.annotation(1)
    np.testing.assert_array_equal(clipped.regions["pneumonia"].boxes, [[1000, 0, 1024, 50]])
    outside = ds.annotation(2)
    assert outside.labels == {"pneumonia": 1} and outside.regions == {}
    assert ds.annotation(3).labels == {"pneumonia": 0} and ds.annotation(3).regions == {}
    assert ds.annotation(4).labels == {"pneumonia": 1}


def test_nothing_parseable_or_wrong_header_fails(tmp_path: Path) -> None:
    bad = tmp_path / "stage_2_train_labels.csv"
    bad.write_text(HEADER + "a1,1,2\n")
    with pytest.raises(DataError, match="no parseable row"):
        build(root=str(tmp_path))
    bad.write_text("ImageId, EncodedPixels\nx,-1\n")
    with pytest.raises(DataError, match="patientId,x,y,width,height,Target"):
        build(root=str(tmp_path))
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        build(root=str(tmp_path))


def test_missing_and_undecodable_images(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text(label_text())
    images = root / "stage_2_train_images"
    write_dicom(images / f"{PIDS['pos1']}.dcm", ramp(np.uint8, 255))
    (images / f"{PIDS['neg1']}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    ds = build(root=str(root))
    assert ds.problems == []  # nothing is checked until images are opened
    with pytest.raises(ImageReadError, match=PIDS["pos2"]):
        ds[index_of(ds, PIDS["pos2"])]
    with pytest.raises(ImageReadError, match=f"{PIDS['neg1']}.dcm"):
        ds[index_of(ds, PIDS["neg1"])]
    report = inspect_dataset(ds)
    assert {p["sample"] for p in report["problems"]} == {PIDS["pos2"], PIDS["neg1"], PIDS["neg2"]}
    checked = build(root=str(root), check_images=True)
    assert {p.sample for p in checked.problems} == {PIDS["pos2"], PIDS["neg2"]}
    assert all("missing" in p.message for p in checked.problems)


def test_split_files(tmp_path: Path, kaggle_root: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_text(f"{PIDS['neg2']}\n\n{PIDS['pos1']}.dcm\nnot-an-id-1\n{PIDS['pos1']}\n")
    ds = build(root=str(kaggle_root), split_file=str(listing))
    assert ds.ids() == sorted([PIDS["neg2"], PIDS["pos1"]])
    assert [(p.line, p.sample) for p in ds.problems] == [(4, "not-an-id-1"), (5, PIDS["pos1"])]
    headerless = tmp_path / "rows.csv"
    headerless.write_text(f"{PIDS['pos2']},1\n{PIDS['neg1']},0\n")
    assert build(root=str(kaggle_root), split="test", split_file=str(headerless)).ids() == sorted(
        [PIDS["pos2"], PIDS["neg1"]]
    )
    with pytest.raises(ConfigError, match="split_file"):
        build(root=str(kaggle_root), split="test")
    nothing = tmp_path / "nothing.txt"
    nothing.write_text("patientId\nunknown-1\n")
    with pytest.raises(DataError, match="no image of split_file"):
        build(root=str(kaggle_root), split_file=str(nothing))


def test_registration_is_light() -> None:
    code = (
        "import sys, xbench_plugin_rsna_pneumonia as m; "
        "assert m.SPEC.name == 'rsna-pneumonia'; "
        "bad = [k for k in ('torch', 'pydicom', 'xbench_plugin_rsna_pneumonia.dataset') if k in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- real files --------------------------------------------------------------------------------
def test_real_excerpt() -> None:
    path = realdata("rsna", "stage_2_train_labels.excerpt.csv")
    ds = build(root=str(path.parent), label_file=str(path))
    report = inspect_dataset(ds, skip_images=True)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    boxes = sum(r["Target"] == "1" for r in rows)
    assert report["images"] == 120 and report["problems"] == []
    assert report["findings"]["pneumonia"] == {
        "positive": 40,
        "with_region": 40,
        "instances": boxes,
    }
    s = ds.annotation(index_of(ds, "0ebc8268-df3d-45d8-8ee7-b34880c62830"))
    np.testing.assert_array_equal(
        s.regions["pneumonia"].boxes, [[225, 536, 450, 669], [691, 505, 882, 714]]
    )


def test_real_full_label_file_counts() -> None:
    folder = realdata("full", "rsna")
    start = time.process_time()
    ds = build(root=str(folder))  # finds stage_2_train_labels.csv.zip and the headers .csv.gz
    elapsed = time.process_time() - start
    assert ds.label_file.endswith("stage_2_train_labels.csv.zip") and elapsed < 3.0
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == 26684 and report["problems"] == []
    assert report["findings"]["pneumonia"] == {
        "positive": 6012,
        "with_region": 6012,
        "instances": 9555,
    }
    per_image = collections.Counter(int(n) for n in np.diff(ds._offsets) if n)
    assert per_image == {1: 2614, 2: 3266, 3: 119, 4: 13}
    assert ds._boxes[:, 2].max() == 1024 and ds._boxes[:, 3].max() == 1024
    # published per-view counts (reference/datasets.md section 1)
    pa = inspect_dataset(build(root=str(folder), views=["PA"]), skip_images=True)
    ap = inspect_dataset(build(root=str(folder), views=["AP"]), skip_images=True)
    assert (pa["images"], pa["findings"]["pneumonia"]["positive"]) == (14511, 1348)
    assert (ap["images"], ap["findings"]["pneumonia"]["positive"]) == (12173, 4664)


def test_real_full_label_file_zip_read_directly(tmp_path: Path) -> None:
    import zipfile

    archive = realdata("full", "rsna", "stage_2_train_labels.csv.zip")
    ds = build(root=str(tmp_path), label_file=str(archive))
    # the headers CSV is found next to the label file, wherever the root is
    assert len(ds) == 26684 and ds.annotation(0).meta["view"] in ("PA", "AP")
    with zipfile.ZipFile(archive) as zf:
        first = next(csv.DictReader(io.TextIOWrapper(zf.open("stage_2_train_labels.csv"))))
    s = ds.annotation(index_of(ds, first["patientId"]))
    assert s.labels["pneumonia"] == int(first["Target"])


def test_ids_that_leave_the_root_are_dropped(tmp_path: Path) -> None:
    """Issue 16 item 3: a patientId that is a path out of the root (or an absolute path) would have
    the dataset open a file outside it: a problem naming the file and line, the row dropped."""
    root = tmp_path / "a" / "b"
    (root / "stage_2_train_images").mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text(
        HEADER + "../../../outside/evil,,,,,0\n/etc/passwd,1,2,30,40,1\nplain,,,,,0\n"
    )
    ds = build(root=str(root))
    assert ds.ids() == ["plain"]
    bad = [p for p in ds.problems if "dataset root" in p.message]
    assert [p.line for p in bad] == [2, 3] and all(p.file.endswith("labels.csv") for p in bad)
