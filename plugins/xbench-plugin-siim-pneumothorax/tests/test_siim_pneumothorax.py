"""Tests of the siim-pneumothorax dataset plugin: synthetic downloads in the stage-1 and stage-2
layouts (DICOMs written with pydicom, RLEs written by an encoder of the official format), the real
label excerpt, the real JPEG Baseline DICOM, and the complete stage-2 label set."""

from __future__ import annotations

import collections
import csv
import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xbench_core import ConfigError, DataError, ImageReadError, Region, get_registry, testing
from xbench_core.inspect import inspect_dataset
from xbench_core.io import decode_relative_rle
from xbench_core.testing import DatasetPluginTests, realdata

H = W = 1024
STAGE1_HEADER = "ImageId, EncodedPixels\n"  # the space is in the real file
STAGE2_HEADER = "ImageId,EncodedPixels\n"


def uid(k: int) -> str:
    """An MD.ai-style SOP UID (Study and Series follow from it, as in the real export)."""
    return f"1.2.276.0.7230010.3.1.4.8323329.{4000 + k}.1517875181.{343700 + k}"


def uid_folders(sop: str) -> str:
    head, rest = sop.split(".3.1.4.", 1)
    middle, last = rest.rsplit(".", 1)
    n = int(last)
    return f"{head}.3.1.2.{middle}.{n - 1}/{head}.3.1.3.{middle}.{n - 2}"


# -- encoders of the two formats, written from their definitions (reference/datasets.md s. 2) --
def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.asarray(mask, bool).T.reshape(-1).astype(np.int8)  # column-major: x * H + y
    change = np.diff(np.concatenate([[0], flat, [0]]))
    return np.flatnonzero(change == 1), np.flatnonzero(change == -1)


def relative_rle(mask: np.ndarray) -> str:
    """The official mask2rle: gap since the end of the previous run, run length."""
    out, previous = [], 0
    for start, end in zip(*_runs(mask)):
        out += [start - previous, end - start]
        previous = end
    return " ".join(map(str, out))


def absolute_rle(mask: np.ndarray) -> str:
    """Kaggle's standard RLE: 1-based start, run length."""
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(*_runs(mask)))


def reference_decode(rle: str, h: int = H, w: int = W) -> np.ndarray:
    """The decoder of reference/datasets.md section 9, as written there."""
    m = np.zeros(h * w, np.uint8)
    if rle.strip() == "-1":
        return m.reshape(h, w)
    v = np.asarray(rle.split(), dtype=np.int64)
    pos = 0
    for off, ln in zip(v[0::2], v[1::2]):
        pos += off
        m[pos : pos + ln] = 1
        pos += ln
    return m.reshape(w, h).T


def blob(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


MASKS = {
    # apical pneumothorax on both sides: two annotation rows for one image
    "multi": [blob(40, 300, 100, 180), blob(60, 200, 800, 900)],
    "single": [blob(500, 520, 0, 3) | blob(700, 710, 1020, 1024)],  # touches the right border
}
IDS = {"multi": uid(1), "single": uid(2), "neg": uid(3), "odd": "1.2.840.99.7.1"}


def write_dicom(path: Path, pixels: np.ndarray, *, sop_uid: str = "1.2.3", **options) -> Path:  # noqa: ANN003
    return testing.write_dicom(
        path, pixels, SOPInstanceUID=sop_uid, PatientID=f"patient-{sop_uid[-4:]}",
        ViewPosition="PA", PatientAge="038Y", PatientSex="M", **options,
    )  # fmt: skip


def ramp(dtype: type, top: int) -> np.ndarray:
    column = np.linspace(0, top, H).round().astype(dtype)
    return np.tile(column[:, None], (1, W))  # grows along y


def stage1_rows() -> str:
    rows = [STAGE1_HEADER]
    rows += [f"{IDS['multi']},{relative_rle(m)}\n" for m in MASKS["multi"]]
    rows.append(f"{IDS['neg']}, -1\n")  # some copies write ' -1'
    rows.append(f"{IDS['single']},{relative_rle(MASKS['single'][0])}\n")
    rows.append(f"{IDS['odd']},-1\n")
    return "".join(rows)


def write_stage1(root: Path) -> Path:
    """seesee/siim-train-test: siim/train-rle.csv and siim/dicom-images-train/<Study>/<Series>/."""
    siim = root / "siim"
    siim.mkdir(parents=True)
    (siim / "train-rle.csv").write_text(stage1_rows())
    train = siim / "dicom-images-train"
    for key in ("multi", "single", "neg"):
        sop = IDS[key]
        pixels = ramp(np.uint16, 4095) if key == "single" else ramp(np.uint8, 255)
        write_dicom(
            train / uid_folders(sop) / f"{sop}.dcm",
            pixels,
            photometric="MONOCHROME1" if key == "single" else "MONOCHROME2",
            bits_stored=12 if key == "single" else None,
            sop_uid=sop,
        )
    # a UID outside the MD.ai pattern: found by the stem index
    write_dicom(train / "a" / "b" / f"{IDS['odd']}.dcm", ramp(np.uint8, 255), sop_uid=IDS["odd"])
    return root


def build(**options):  # noqa: ANN003, ANN201
    return get_registry().datasets["siim-pneumothorax"].build(**options)


def index_of(ds, image_id: str) -> int:  # noqa: ANN001
    return ds.ids().index(image_id)


@pytest.fixture(scope="module")
def stage1_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stage1(tmp_path_factory.mktemp("siim"))


class TestSIIMConformance(DatasetPluginTests):
    name = "siim-pneumothorax"

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, stage1_root: Path):  # noqa: ANN201
        return build(root=str(stage1_root))


# -- labels and regions ------------------------------------------------------------------------
def test_rows_are_kept_and_or_ed(stage1_root: Path) -> None:
    ds = build(root=str(stage1_root))
    assert ds.problems == [] and ds.rle_encoding == "relative"
    assert ds.label_file == str(stage1_root / "siim" / "train-rle.csv")
    assert ds.ids() == sorted(IDS.values())
    multi = ds.annotation(index_of(ds, IDS["multi"]))
    region = multi.regions["pneumothorax"]
    assert region.size == (H, W) and region.instances == 2
    assert region.relative_rles == tuple(relative_rle(m) for m in MASKS["multi"])
    np.testing.assert_array_equal(region.rasterize(), MASKS["multi"][0] | MASKS["multi"][1])
    single = ds.annotation(index_of(ds, IDS["single"])).regions["pneumothorax"]
    np.testing.assert_array_equal(single.rasterize(), MASKS["single"][0])
    for key in ("neg", "odd"):
        s = ds.annotation(index_of(ds, IDS[key]))
        assert s.labels == {"pneumothorax": 0} and s.regions == {}


def test_images_nested_guess_and_index(stage1_root: Path) -> None:
    ds = build(root=str(stage1_root))
    train = stage1_root / "siim" / "dicom-images-train"
    s = ds.annotation(index_of(ds, IDS["multi"]))
    expected = train / uid_folders(IDS["multi"]) / f"{IDS['multi']}.dcm"
    assert s.meta["path"] == str(expected)  # known without any folder scan
    loaded = ds[index_of(ds, IDS["multi"])]
    assert loaded.meta["path"] == str(expected) and not ds._index.built
    np.testing.assert_allclose(loaded.image[:, 7], np.linspace(0, 255, H).round() / 255, atol=1e-6)
    assert loaded.meta["view"] == "PA" and loaded.meta["age"] == 38 and loaded.meta["sex"] == "M"
    mono1 = ds[index_of(ds, IDS["single"])]  # 12 of 16 bits, MONOCHROME1
    np.testing.assert_allclose(
        mono1.image[:, 0], 1 - np.linspace(0, 4095, H).round() / 4095, atol=1e-6
    )
    odd = ds[index_of(ds, IDS["odd"])]
    assert odd.meta["path"] == str(train / "a" / "b" / f"{IDS['odd']}.dcm") and ds._index.built


def test_stage2_layout_and_label_choice(tmp_path: Path) -> None:
    root = tmp_path / "siim-acr-pneumothorax-segmentation"
    write_dicom(
        root / "dicom-images-test" / uid_folders(IDS["neg"]) / f"{IDS['neg']}.dcm",
        ramp(np.uint8, 255),
        sop_uid=IDS["neg"],
    )
    (root / "stage_2_train.csv").write_text(
        STAGE2_HEADER + f"{IDS['neg']},-1\n{IDS['single']},{relative_rle(MASKS['single'][0])}\n"
    )
    (root / "train-rle.csv").write_text(STAGE1_HEADER + f"{IDS['single']},-1\n")
    ds = build(root=str(root))
    assert ds.label_file.endswith("stage_2_train.csv") and len(ds) == 2
    assert ds[index_of(ds, IDS["neg"])].meta["path"].startswith(str(root / "dicom-images-test"))
    stage1 = build(root=str(root), label_file="train-rle.csv")
    assert stage1.ids() == [IDS["single"]] and stage1.annotation(0).labels == {"pneumothorax": 0}


def test_absolute_encoding_is_detected_and_converted(tmp_path: Path) -> None:
    rows = [STAGE2_HEADER]
    rows += [f"{IDS['multi']},{absolute_rle(m)}\n" for m in MASKS["multi"]]
    rows.append(f"{IDS['single']},{absolute_rle(MASKS['single'][0])}\n")
    rows.append(f"{IDS['neg']},-1\n")
    (tmp_path / "stage_2_train.csv").write_text("".join(rows))
    ds = build(root=str(tmp_path))
    assert ds.rle_encoding == "absolute" and ds.problems == []
    multi = ds.annotation(index_of(ds, IDS["multi"])).regions["pneumothorax"]
    assert multi.instances == 2
    np.testing.assert_array_equal(multi.rasterize(), MASKS["multi"][0] | MASKS["multi"][1])
    np.testing.assert_array_equal(
        ds.annotation(index_of(ds, IDS["single"])).regions["pneumothorax"].rasterize(),
        MASKS["single"][0],
    )
    forced = build(root=str(tmp_path), rle_encoding="relative")  # absolute rows overrun as relative
    assert forced.rle_encoding == "relative"
    assert {p.line for p in forced.problems} == {2, 3, 4}
    assert all("beyond" in p.message for p in forced.problems)
    with pytest.raises(ConfigError, match="rle_encoding"):
        build(root=str(tmp_path), rle_encoding="coco")


def test_relative_file_forced_absolute_is_reported(stage1_root: Path) -> None:
    ds = build(root=str(stage1_root), rle_encoding="absolute")
    # every positive row has runs in several columns: read as absolute starts, they go backwards
    assert {p.line for p in ds.problems} == {2, 3, 5}
    assert all("not a valid absolute RLE" in p.message for p in ds.problems)
    assert ds.ids() == sorted([IDS["neg"], IDS["odd"]])


# -- bad input ---------------------------------------------------------------------------------
def test_malformed_rows(tmp_path: Path) -> None:
    good = relative_rle(MASKS["multi"][0])
    text = (
        STAGE1_HEADER
        + f"{uid(10)},{good}\n"  # line 2: fine
        + f"{uid(11)}\n"  # line 3: no EncodedPixels field
        + f"{uid(12)},1 2 3\n"  # line 4: odd number of values
        + f"{uid(13)},12 ab 4 5\n"  # line 5: not numbers
        + f"{uid(14)},1048570 10\n"  # line 6: runs past the 1024x1024 image
        + f"{uid(15)},\n"  # line 7: empty
        + f"{uid(16)},-1\n"
        + f"{uid(16)},{good}\n"  # line 9: -1 and an RLE for one image
        + f",{good}\n"  # line 10: no ImageId
        + f"{uid(17)},5 -3\n"  # line 11: negative value
    )
    (tmp_path / "train-rle.csv").write_text(text)
    ds = build(root=str(tmp_path))
    assert ds.ids() == [uid(10), uid(16)]
    lines = {p.line for p in ds.problems if p.line is not None}
    assert lines == {3, 4, 5, 6, 7, 10, 11}
    assert all(p.file == str(tmp_path / "train-rle.csv") for p in ds.problems)
    assert any(p.sample == uid(16) and "treated as positive" in p.message for p in ds.problems)
    assert ds.annotation(1).labels == {"pneumothorax": 1}


def test_nothing_parseable_or_wrong_header_fails(tmp_path: Path) -> None:
    path = tmp_path / "train-rle.csv"
    path.write_text(STAGE1_HEADER + f"{uid(1)},1 2 3\n")
    with pytest.raises(DataError, match="no parseable row"):
        build(root=str(tmp_path))
    path.write_text("patientId,x,y,width,height,Target\na,,,,,0\n")
    with pytest.raises(DataError, match="ImageId"):
        build(root=str(tmp_path))


def test_missing_root_and_labels_show_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm"):
        build(root=str(tmp_path))


def test_missing_and_undecodable_images(tmp_path: Path) -> None:
    (tmp_path / "train-rle.csv").write_text(stage1_rows())
    broken = tmp_path / "dicom-images-train" / "s" / "r" / f"{IDS['neg']}.dcm"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 50)
    ds = build(root=str(tmp_path))
    report = inspect_dataset(ds, skip_images=True)
    assert report["problems"] == [] and report["images"] == 4  # labels alone are enough
    with pytest.raises(ImageReadError, match=IDS["neg"]):
        ds[index_of(ds, IDS["neg"])]
    with pytest.raises(ImageReadError, match="no image for ImageId"):
        ds[index_of(ds, IDS["multi"])]
    assert {p["sample"] for p in inspect_dataset(ds)["problems"]} == set(IDS.values())
    checked = build(root=str(tmp_path), check_images=True)
    assert {p.sample for p in checked.problems} == {IDS["multi"], IDS["single"], IDS["odd"]}


def test_split_files(tmp_path: Path, stage1_root: Path) -> None:
    listing = tmp_path / "test_ids.csv"
    listing.write_text(f"ImageId,label\n{IDS['single']},1\n{IDS['neg']}.dcm,0\n9.9.9,0\n")
    ds = build(root=str(stage1_root), split="test", split_file=str(listing))
    assert ds.split == "test" and ds.ids() == sorted([IDS["single"], IDS["neg"]])
    assert [(p.line, p.sample) for p in ds.problems] == [(4, "9.9.9")]
    paths = tmp_path / "paths.txt"
    paths.write_text(f"/data/png/{IDS['multi']}.png\n")  # a path: the id is its stem, dots kept
    assert build(root=str(stage1_root), split_file=str(paths)).ids() == [IDS["multi"]]
    with pytest.raises(ConfigError, match="split_file"):
        build(root=str(stage1_root), split="test")


def test_resized_png_conversion_resamples_masks(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "train-rle.csv").write_text(stage1_rows())
    (tmp_path / "png").mkdir()
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(tmp_path / "png" / f"{IDS['multi']}.png")
    ds = build(root=str(tmp_path))
    s = ds[index_of(ds, IDS["multi"])]
    region = s.regions["pneumothorax"]
    assert s.image.shape == (256, 256) and region.size == (256, 256) and region.instances == 2
    full = MASKS["multi"][0] | MASKS["multi"][1]
    np.testing.assert_array_equal(region.rasterize(), full[2::4, 2::4])  # pixel centres


def test_dataset_pickles_for_loader_workers(stage1_root: Path) -> None:
    ds = build(root=str(stage1_root))
    again = pickle.loads(pickle.dumps(ds))
    assert again.ids() == ds.ids()
    assert again.annotation(0).regions.keys() == ds.annotation(0).regions.keys()


def test_registration_is_light() -> None:
    code = (
        "import sys, xbench_plugin_siim_pneumothorax as m; "
        "assert m.SPEC.name == 'siim-pneumothorax'; "
        "bad = [k for k in ('torch', 'pydicom', 'xbench_plugin_siim_pneumothorax.dataset') if k in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- real files --------------------------------------------------------------------------------
def test_real_dicom_through_the_plugin(tmp_path: Path) -> None:
    import pydicom

    dicom = realdata("siim", "siim_test.dcm")
    header = pydicom.dcmread(dicom, stop_before_pixels=True)
    sop = str(header.SOPInstanceUID)
    # the MD.ai folder names follow from the SOP UID: the plugin's first guess is right
    assert uid_folders(sop) == f"{header.StudyInstanceUID}/{header.SeriesInstanceUID}"
    place = tmp_path / "dicom-images-train" / uid_folders(sop) / f"{sop}.dcm"
    place.parent.mkdir(parents=True)
    place.symlink_to(dicom)
    (tmp_path / "train-rle.csv").write_text(STAGE1_HEADER + f"{sop},-1\n")
    ds = build(root=str(tmp_path))
    s = ds[0]
    assert str(header.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"  # JPEG Baseline
    assert s.image.shape == (1024, 1024) and s.image.dtype == np.float32
    assert 0.0 <= s.image.min() < 0.1 and 0.9 < s.image.max() <= 1.0
    raw = pydicom.dcmread(dicom).pixel_array
    if "WindowCenter" not in header:  # 8-bit MONOCHROME2, no window: value / 255
        np.testing.assert_allclose(s.image, raw / 255.0, atol=1e-6)
    assert s.meta["view"] == "PA" and s.meta["age"] == 62 and s.meta["sex"] == "M"
    assert s.meta["patient_id"] == str(header.PatientID) and s.meta["path"] == str(place)


def test_real_excerpt_counts_and_decoding() -> None:
    path = realdata("siim", "train-rle.excerpt.csv")
    ds = build(root=str(path.parent), label_file=str(path))
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == 60 and report["problems"] == []
    assert report["findings"]["pneumothorax"] == {
        "positive": 30,
        "with_region": 30,
        "instances": 45,
    }
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    by_image = collections.defaultdict(list)
    for image_id, rle in rows:
        by_image[image_id].append(rle)
    multi = [k for k, v in by_image.items() if len(v) > 1]
    assert len(multi) == 10
    # the core's decoder, through the plugin's regions, against the section-9 reference decoder
    for image_id, rles in by_image.items():
        if rles == ["-1"]:
            continue
        expected = np.zeros((H, W), bool)
        for rle in rles:
            expected |= reference_decode(rle).astype(bool)
        region = ds.annotation(index_of(ds, image_id)).regions["pneumothorax"]
        np.testing.assert_array_equal(region.rasterize(), expected)


def _full_file() -> Path:
    return realdata("full", "siim", "train-rle.stage2-images.csv.gz")


def test_real_full_label_file_counts(tmp_path: Path) -> None:
    ds = build(root=str(tmp_path), label_file=str(_full_file()))  # read from the .gz directly
    report = inspect_dataset(ds, skip_images=True)
    assert report["images"] == 12047 and report["problems"] == [] and ds.rle_encoding == "relative"
    assert report["findings"]["pneumothorax"] == {
        "positive": 2669,
        "with_region": 2669,
        "instances": 3576,
    }
    per_image = collections.Counter(int(n) for n in np.diff(ds._offsets) if n)
    assert per_image == {1: 2045, 2: 447, 3: 112, 4: 40, 5: 18, 6: 3, 7: 1, 8: 2, 10: 1}


def _upper_half_share(ds, every: int) -> float:  # noqa: ANN001
    """Share of RLE rows (every `every`-th) whose mask centroid lies in the upper half."""
    texts = [
        t
        for i in range(len(ds))
        for t in ds.annotation(i).regions.get("pneumothorax", Region((H, W))).relative_rles
    ]
    upper = [np.nonzero(decode_relative_rle(t, H, W))[0].mean() < H / 2 for t in texts[::every]]
    return float(np.mean(upper))


def test_real_full_masks_are_transposed(tmp_path: Path) -> None:
    # Pneumothorax is mostly apical: with the column-major transpose 78% of the RLE rows have their
    # centroid in the upper half of the image, without it 58-59% (reference/datasets.md s. 2).
    ds = build(root=str(tmp_path), label_file=str(_full_file()))
    assert _upper_half_share(ds, every=10) > 0.72


@pytest.mark.slow
def test_real_full_masks_all_decode_and_centroids(tmp_path: Path) -> None:
    ds = build(root=str(tmp_path), label_file=str(_full_file()))
    assert abs(_upper_half_share(ds, every=1) - 0.783) < 0.005


def test_gzip_label_file_in_root_is_found(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "train-rle.csv.gz", "wt") as fh:
        fh.write(stage1_rows())
    assert len(build(root=str(tmp_path))) == 4


def test_image_ids_that_leave_the_root_are_dropped(tmp_path: Path) -> None:
    """Issue 16 item 3: an ImageId that is a path out of the root is a problem with its line."""
    root = write_stage1(tmp_path)
    with open(root / "siim" / "train-rle.csv", "a") as fh:
        fh.write("../../../../outside/evil,-1\n/etc/passwd,-1\n")
    ds = build(root=str(root))
    assert not any("evil" in i or "passwd" in i for i in ds.ids()) and len(ds) == 4
    bad = [p for p in ds.problems if "dataset root" in p.message]
    assert len(bad) == 2 and bad[1].line == bad[0].line + 1
