"""The file utilities dataset plugins share (`xbench_core.io.files`): compressed text files, split
lists in the formats the dataset plugins met (Kaggle, MedKLIP, NIH, ChestX-Det10, CheXlocalize,
VinDr, COVID rural), the image index of nested trees with DICOM UID names, and DICOM headers."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xbench_core import DataError, ImageReadError, testing
from xbench_core.io import (
    ImageIndex,
    dicom_header,
    find_file,
    id_from_value,
    open_text,
    read_id_list,
    split_image_name,
)

UID = "1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090"  # a SIIM ImageId (MD.ai SOP UID)


def read_all(path: Path) -> tuple[str, str]:
    with open_text(path) as (stream, where):
        return stream.read(), where


# ---- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, stem, suffix",
    [
        (f"{UID}.dcm", UID, ".dcm"),
        (UID, UID, None),  # a bare UID keeps its last component
        ("36204.PNG", "36204", ".png"),
        ("a.b.jpeg", "a.b", ".jpeg"),
        ("0005e8e3701dfb1dd93d53e2ff537b6e.dicom", "0005e8e3701dfb1dd93d53e2ff537b6e", ".dicom"),
        ("labels.csv", "labels.csv", None),
        (".png", ".png", None),  # nothing before the suffix: not an image name
    ],
)
def test_split_image_name(name, stem, suffix):
    assert split_image_name(name) == (stem, suffix)


@pytest.mark.parametrize(
    "value, expected",
    [
        (f" /data/dicom-images-train/a/b/{UID}.dcm ", UID),
        (f'"{UID}"', UID),
        ("C:\\nih\\images\\00000013_005.png", "00000013_005"),
        ("train/0005e8e3.dicom", "0005e8e3"),
        ("folder/", "folder"),
        ("36204", "36204"),
    ],
)
def test_id_from_value(value, expected):
    assert id_from_value(value) == expected


# ---- open_text -------------------------------------------------------------------------------------
TEXT = "\ufeffImageId,EncodedPixels\nä,-1\n"  # a byte-order mark, a non-ASCII character


def test_open_text_plain_gzip_and_zip(tmp_path):
    plain = tmp_path / "train-rle.csv"
    plain.write_text(TEXT, encoding="utf-8")
    packed = tmp_path / "train-rle.csv.gz"
    packed.write_bytes(gzip.compress(TEXT.encode("utf-8")))
    archive = tmp_path / "train-rle.csv.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("__MACOSX/._train-rle.csv", b"\x00\x05junk")  # macOS resource fork: ignored
        z.writestr("train-rle.csv", TEXT.encode("utf-8"))
    for path, where in (
        (plain, str(plain)),
        (packed, str(packed)),
        (archive, f"{archive}!train-rle.csv"),
    ):
        text, name = read_all(path)
        assert text == "ImageId,EncodedPixels\nä,-1\n"  # BOM gone, newlines kept
        assert name == where


def test_open_text_keeps_carriage_returns_for_the_csv_module(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"a,b\r\n1,2\r\n")
    assert read_all(path)[0] == "a,b\r\n1,2\r\n"


def test_open_text_zip_member_choice(tmp_path):
    named = tmp_path / "stage_2_train_labels.csv.zip"
    with zipfile.ZipFile(named, "w") as z:
        z.writestr("README.txt", "read me")
        z.writestr("stage_2_train_labels.csv", "patientId\n")
    assert read_all(named) == ("patientId\n", f"{named}!stage_2_train_labels.csv")
    several = tmp_path / "bundle.zip"
    with zipfile.ZipFile(several, "w") as z:
        z.writestr("a.csv", "x\n")
        z.writestr("b.csv", "y\n")
    with pytest.raises(DataError, match=r"several text files \(a.csv, b.csv\)"):
        read_all(several)
    images = tmp_path / "images.zip"
    with zipfile.ZipFile(images, "w") as z:
        z.writestr("1.png", b"\x89PNG")
    with pytest.raises(DataError, match=r"images.zip: the zip archive holds no \.csv"):
        read_all(images)


def test_open_text_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="cannot open .*missing.csv"):
        read_all(tmp_path / "missing.csv")
    truncated = tmp_path / "labels.csv.gz"
    truncated.write_bytes(gzip.compress(b"a,b\n" * 1000)[:-30])
    with pytest.raises(DataError, match=r"cannot read .*labels.csv.gz: EOFError"):
        read_all(truncated)
    not_zip = tmp_path / "labels.csv.zip"
    not_zip.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot open .*labels.csv.zip"):
        read_all(not_zip)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"cannot read .*latin.csv: UnicodeDecodeError"):
        read_all(latin)


# ---- find_file -------------------------------------------------------------------------------------
def test_find_file(tmp_path):
    (tmp_path / "siim").mkdir()
    (tmp_path / "siim" / "train-rle.csv").write_text("x")
    (tmp_path / "stage_2_train.csv.gz").write_text("x")
    names = ("stage_2_train.csv", "train-rle.csv", "stage_2_train.csv.gz")
    # in root first, whatever the order of names; then one folder down
    assert find_file(tmp_path, names) == tmp_path / "stage_2_train.csv.gz"
    assert find_file(tmp_path, ("train-rle.csv",)) == tmp_path / "siim" / "train-rle.csv"
    assert find_file(tmp_path, ("train-rle.csv",), max_subdirs=0) is None
    for k in range(3):
        (tmp_path / f"part{k}").mkdir()
    # an image tree (more subfolders than max_subdirs) is not searched
    assert find_file(tmp_path, ("train-rle.csv",), max_subdirs=3) is None
    assert find_file(tmp_path / "nowhere", names) is None


# ---- read_id_list ----------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_text_list_with_paths_comments_blank_lines_and_repeats(tmp_path):
    # RSNA/SIIM/VinDr style lists: ids, file names and paths; UIDs keep their dots
    path = write(
        tmp_path / "ids.txt",
        f"# published test split\n{UID}\n\n/data/png/{UID}.png\n"
        "train/0005e8e3701dfb1dd93d53e2ff537b6e.dicom\n  36204.png  \n",
    )
    listed = read_id_list(path)
    assert list(listed) == [(UID, 2), ("0005e8e3701dfb1dd93d53e2ff537b6e", 5), ("36204", 6)]
    assert listed.repeats == ((UID, 4),) and listed.source == str(path) and len(listed) == 3


def test_a_list_without_digits_keeps_its_first_id(tmp_path):
    # no header is guessed in a list: only a column name makes the first line a header
    path = write(tmp_path / "ids.txt", "bbbbbbbb.dicom\naaaaaaaa\n")
    assert read_id_list(path).ids == ["bbbbbbbb", "aaaaaaaa"]
    named = write(tmp_path / "named.txt", "patientId\nffff-1\n")
    assert read_id_list(named, id_columns=("patientid",)).ids == ["ffff-1"]


def test_csv_with_an_id_column_and_a_path_column(tmp_path):
    # MedKLIP's RSNA test.csv: ID,img_path,boxes,classes
    path = write(
        tmp_path / "test.csv",
        f"ID,img_path,boxes,classes\np-1,/mnt/RSNA/1.2.3/1.2.4/{UID}.dcm,1;2;3;4,1\np-2,,nan,0\n",
    )
    listed = read_id_list(path, path_columns=("img_path",))
    assert list(listed) == [("p-1", 2), ("p-2", 3)]
    assert listed.paths == {"p-1": f"/mnt/RSNA/1.2.3/1.2.4/{UID}.dcm"}
    assert id_from_value(listed.paths["p-1"]) == UID


@pytest.mark.parametrize(
    "text, columns, expected",
    [
        # SIIM: ImageId, ids with .dcm
        (f"ImageId,label\n{UID}.dcm,1\n9.9.9,0\n", None, [(UID, 2), ("9.9.9", 3)]),
        # NIH Data_Entry-like: `Image Index` (a space in the name), the id column not first
        ("Finding Labels,Image Index\nMass,00000013_005.png\n", None, [("00000013_005", 2)]),
        # ChestX-Det10: file_name
        ("fold,file_name\n1,36346.png\n2,36199.png\n", None, [("36346", 2), ("36199", 3)]),
        # VinDr: image_id before id
        ("id,image_id\n7,abc123\n", None, [("abc123", 2)]),
        # no column named like an id, no digit in the header: a header, the first column
        ("name,fold\n36204.png,1\n", None, [("36204", 2)]),
        # headerless CSV: the first row holds digits, so it is data (RSNA `pid,1` rows)
        ("p-1,1\np-2,0\n", None, [("p-1", 1), ("p-2", 2)]),
        # a TSV and quoted values
        ('"image_id"\t"fold"\n"a1"\t1\n', None, [("a1", 2)]),
        # the plugin's own id columns: RSNA prefers patientId over id
        ("id,patientId\nx1,p-1\n", ("patientid", "id"), [("p-1", 2)]),
    ],
)
def test_csv_forms(tmp_path, text, columns, expected):
    path = write(tmp_path / "split.csv", text)
    kwargs = {"id_columns": columns} if columns else {}
    assert list(read_id_list(path, **kwargs)) == expected


def test_custom_normalize_sees_the_whole_value(tmp_path):
    # CheXlocalize: the id is made of the last three path parts
    def cxr_id(value: str) -> str:
        parts = value.split("/")
        return "_".join(parts[-3:])[: -len(".jpg")] if "/" in value else value

    path = write(
        tmp_path / "ids.csv",
        "Path,fold\nCheXpert-v1.0/valid/patient64601/study2/view1_frontal.jpg,1\n"
        "patient64600_study1_view2_lateral,1\n",
    )
    assert read_id_list(path, cxr_id).ids == [
        "patient64601_study2_view1_frontal",
        "patient64600_study1_view2_lateral",
    ]


def test_compressed_split_files(tmp_path):
    packed = tmp_path / "test_list.txt.gz"
    packed.write_bytes(gzip.compress(b"00000013_005.png\n00000001_000.png\n"))
    assert read_id_list(packed).ids == ["00000013_005", "00000001_000"]
    archive = tmp_path / "split.csv.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("split.csv", "image_id\nabc1\n")
    listed = read_id_list(archive)
    assert listed.ids == ["abc1"] and listed.source == f"{archive}!split.csv"


def test_select_reports_unknown_repeated_and_empty_rows_in_line_order(tmp_path):
    path = write(tmp_path / "split.csv", "image_id,fold\nk1,1\nu1,1\n,2\nk1,2\nk2,2\n")
    listed = read_id_list(path)
    kept, problems = listed.select({"k1", "k2", "k3"}, lambda i: f"{i} is not in labels.csv")
    assert kept == ["k1", "k2"]
    assert [(p.line, p.sample, p.file) for p in problems] == [
        (3, "u1", str(path)),
        (4, None, str(path)),
        (5, "k1", str(path)),
    ]
    assert problems[0].message == "u1 is not in labels.csv"
    assert "first on line 2" in problems[2].message and "no image id" in problems[1].message
    _, default = listed.select(set())
    assert default[0].message == "id 'k1' is not in the dataset; skipped"


def test_split_file_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="split_file not found: .*nope.txt"):
        read_id_list(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="empty.txt lists no image id"):
        read_id_list(write(tmp_path / "empty.txt", "\n# only a comment\n\n"))
    with pytest.raises(DataError, match=r"header.csv lists no image id \(only a header\)"):
        read_id_list(write(tmp_path / "header.csv", "image_id,fold\n"))


# ---- ImageIndex ------------------------------------------------------------------------------------
def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_image_index_nested_tree_with_uid_names(tmp_path):
    # SIIM's dicom-images-train/<Study>/<Series>/<SOP>.dcm, one folder per series
    study, series = UID.replace(".4.", ".2.", 1), UID.replace(".4.", ".3.", 1)
    deep = touch(tmp_path / "dicom-images-train" / study / series / f"{UID}.dcm")
    other = touch(tmp_path / "dicom-images-test" / "x" / "y" / "1.2.3.4.dcm")
    touch(tmp_path / "labels.csv")
    touch(tmp_path / ".cache" / "hidden.dcm")  # hidden folders are skipped
    touch(tmp_path / "dicom-images-test" / "._1.2.3.4.dcm")  # macOS resource fork
    index = ImageIndex(tmp_path)
    assert not index.built  # nothing walked until a path is asked for
    assert index.get(UID) == str(deep) and index.built
    assert dict(index.paths()) == {UID: str(deep), "1.2.3.4": str(other)}
    assert "1.2.3" not in index and "1.2.3.4" in index and index.duplicates == {}


def test_image_index_prefers_dicom_then_png_then_jpeg_and_reports_duplicates(tmp_path):
    jpg = touch(tmp_path / "a" / "p1.jpg")
    png = touch(tmp_path / "b" / "p1.png")
    dcm = touch(tmp_path / "z" / "deep" / "p1.dcm")
    second = touch(tmp_path / "a" / "p2.png")
    first = touch(tmp_path / "0" / "p2.png")  # same suffix: the smaller path
    index = ImageIndex(tmp_path)
    assert index.get("p1") == str(dcm) and index.get("p2") == str(first)
    assert index.duplicates == {
        "p1": (str(dcm), str(png), str(jpg)),
        "p2": (str(first), str(second)),
    }
    only_png = ImageIndex(tmp_path, suffixes=(".png",))
    assert only_png.get("p1") == str(png) and set(only_png.paths()) == {"p1", "p2"}


def test_image_index_preferred_folders_win(tmp_path):
    # ChestX-Det10 / NIH: the split's folder first, copies elsewhere below root second
    wanted = touch(tmp_path / "test_data" / "36204.png")
    touch(tmp_path / "aaa_resized" / "36204.png")
    fallback = touch(tmp_path / "aaa_resized" / "36205.png")
    index = ImageIndex(
        tmp_path, suffixes=(".png",), preferred=[tmp_path / "test_data", tmp_path / "missing"]
    )
    assert index.get("36204") == str(wanted) and index.get("36205") == str(fallback)
    assert index.duplicates["36204"][0] == str(wanted)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_image_index_follows_links_each_real_folder_once(tmp_path):
    data = tmp_path / "elsewhere" / "images"
    image = touch(data / "00000001_000.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(data, target_is_directory=True)
    (root / "again").symlink_to(data, target_is_directory=True)
    (data / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    index = ImageIndex(root)
    found = index.get("00000001_000")
    assert found is not None and Path(found).resolve() == image.resolve()
    assert index.duplicates == {}  # the folder was walked once, through one of its links


def test_image_index_pickles_and_missing_root_is_empty(tmp_path):
    touch(tmp_path / "x" / "1.png")
    index = ImageIndex(tmp_path)
    again = pickle.loads(pickle.dumps(index))
    assert again.get("1") == str(tmp_path / "x" / "1.png")
    assert ImageIndex(tmp_path / "nowhere").get("1") is None


# ---- DICOM headers ---------------------------------------------------------------------------------
def write_dicom(path: Path, **elements: object) -> Path:
    pixels = np.zeros((30, 40), np.uint8)
    return testing.write_dicom(
        path, pixels, photometric="MONOCHROME1", SOPInstanceUID=UID, **elements
    )


def test_dicom_header_fields(tmp_path):
    path = write_dicom(
        tmp_path / f"{UID}.dcm",
        PatientID="p-17",
        PatientAge="058Y",
        PatientSex="F",
        ViewPosition="AP",
        PixelSpacing=[0.139, 0.143],
        Modality="CR",
    )
    header = dicom_header(path)
    assert header.size == (30, 40) and (header.rows, header.columns) == (30, 40)
    assert header.meta() == {
        "view": "AP",
        "age": 58,
        "sex": "F",
        "patient_id": "p-17",
        "pixel_spacing": 0.139,
    }
    assert header.modality == "CR" and header.photometric == "MONOCHROME1"
    assert header.path == str(path)


def test_dicom_header_missing_fields_and_ages_in_months(tmp_path):
    header = dicom_header(write_dicom(tmp_path / "a.dcm", PatientAge="006M"))
    assert header.age is None and header.view is None and header.meta() == {}


def test_dicom_header_stops_before_the_pixels(tmp_path):
    # the pixel data is cut off: the image cannot be decoded, the header still reads
    path = write_dicom(tmp_path / "cut.dcm", ViewPosition="PA")
    data = path.read_bytes()
    path.write_bytes(data[:-600])
    assert dicom_header(path).size == (30, 40) and dicom_header(path).view == "PA"


def test_dicom_header_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.dcm"
    with pytest.raises(ImageReadError, match="missing.dcm: cannot read the DICOM header"):
        dicom_header(missing)


def test_importing_the_core_reads_no_dicom_library():
    code = "import sys, xbench_core; print('pydicom' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_require_file_takes_only_the_kind_asked_for(tmp_path: Path) -> None:
    """A folder where a file belongs (an archive unpacked under the file's name) is not taken for
    it, nor a file for a folder; both name the path and show the layout."""
    from xbench_core.dataset import require_file

    (tmp_path / "labels.csv").write_text("id\n")
    (tmp_path / "boxes.csv").mkdir()
    assert require_file(tmp_path / "labels.csv", "label file", "LAYOUT") == tmp_path / "labels.csv"
    assert require_file(tmp_path, "root folder", "LAYOUT", folder=True) == tmp_path
    for path, folder, state in [(tmp_path / "gone.csv", False, "not found"),
                                (tmp_path / "boxes.csv", False, "is not a file"),
                                (tmp_path / "labels.csv", True, "is not a folder")]:
        with pytest.raises(DataError, match=rf"(?s)^thing {state}: {path}\nExpected layout:\nLAYOUT$"):
            require_file(path, "thing", "LAYOUT", folder=folder)
