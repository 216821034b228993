"""Tests of the covid-rural plugin on LabelMe 4.5.6 files written here in the layout and with the
quirks of the released `covid_rural_annot/` folder (JSONs in `jpgs/jsons/`, the `groud_glass_opacity`
typo, lung-field polygons, base64 `imageData`, float vertices)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from xbench_core import ConfigError, DataError, ImageReadError, get_registry
from xbench_core.inspect import inspect_dataset
from xbench_core.testing import DatasetPluginTests

H, W = 90, 70
RIGHT_LUNG = [[8.5, 10.0], [30.0, 8.0], [32.0, 80.0], [6.0, 78.5]]
LEFT_LUNG = [[40.0, 9.0], [62.5, 12.0], [64.0, 79.0], [38.0, 81.0]]
GGO_1 = [[10.3333, 40.0], [25.6667, 38.5], [27.0, 60.25], [12.0, 62.0]]
GGO_2 = [[45.0, 20.0], [58.0, 22.0], [52.5, 35.0]]
CONS = [[44.0, 55.0], [60.0, 52.0], [61.0, 70.0], [43.5, 71.0], [50.0, 63.0]]

STEM_A = "COVID-19-AR-16406488_01-17-2012-XR"  # lungs, two GGO, one consolidation
STEM_B = "COVID-19-AR-16406488_01-15-2012-XR"  # lungs only: negative
STEM_C = "COVID-19-AR-16406531_01-01-2012-XR"  # consolidation only
STEM_D = "COVID-19-AR-16406542_02-02-2012-XR"  # an unknown label and a rectangle


def shape(label: str, points: list[list[float]], shape_type: str = "polygon") -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": None,
        "shape_type": shape_type,
        "flags": {},
    }


def write_case(
    folder: Path, json_dir: Path, stem: str, shapes: list[dict], size: tuple[int, int] = (H, W)
) -> None:
    """A JPEG and its LabelMe file, as labelme 4.5.6 writes them (imageData = the JPEG, base64)."""
    h, w = size
    img = Image.fromarray((np.arange(h * w).reshape(h, w) % 251).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.jpg").write_bytes(buf.getvalue())
    json_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": "4.5.6",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"{stem}.jpg",
        "imageData": base64.b64encode(buf.getvalue()).decode("ascii"),
        "imageHeight": h,
        "imageWidth": w,
    }
    (json_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2))


def write_repository(root: Path, sibling_jsons: bool = False) -> Path:
    base = root / "covid_rural_annot"
    jpgs = base / "jpgs"
    jsons = base / "jsons" if sibling_jsons else jpgs / "jsons"
    lungs = [shape("right_lung", RIGHT_LUNG), shape("left_lung", LEFT_LUNG)]
    write_case(
        jpgs,
        jsons,
        STEM_A,
        [
            *lungs,
            shape("groud_glass_opacity", GGO_1),
            shape("groud_glass_opacity", GGO_2),
            shape("consolidation", CONS),
        ],
    )
    write_case(jpgs, jsons, STEM_B, lungs)
    write_case(jpgs, jsons, STEM_C, [*lungs, shape("consolidation", CONS)])
    write_case(
        jpgs,
        jsons,
        STEM_D,
        [
            *lungs,
            shape("pleural_effusion", GGO_1),
            shape("consolidation", [[5, 5], [20.5, 15]], "rectangle"),
        ],
    )
    return root


def build(**options):
    return get_registry().datasets["covid-rural"].build(**options)


def pil_union(polygons: list[list[list[float]]], boxes: tuple = ()) -> np.ndarray:
    """The reference rasterization: cheXlocalize's PIL polygon fill, boxes half-open."""
    img = Image.new("1", (W, H))
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        draw.polygon([tuple(p) for p in poly], outline=1, fill=1)
    mask = np.asarray(img, dtype=bool).copy()
    for x1, y1, x2, y2 in boxes:
        mask[int(np.floor(y1)) : int(np.ceil(y2)), int(np.floor(x1)) : int(np.ceil(x2))] = True
    return mask


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("covid-rural"))


class TestCovidRural(DatasetPluginTests):
    name = "covid-rural"

    @pytest.fixture(scope="class", params=["combined", "separate"])
    @classmethod
    def dataset(cls, request, repo: Path):
        if request.param == "separate":
            return build(root=str(repo), findings="separate")
        return build(root=str(repo / "covid_rural_annot"))


def test_covid19_is_the_union_of_opacity_polygons(repo: Path) -> None:
    ds = build(root=str(repo))
    assert ds.findings == ("covid19",)
    ids = [ds.annotation(i).id for i in range(len(ds))]
    assert ids == sorted([STEM_A, STEM_B, STEM_C, STEM_D])
    by_id = {s.id: s for s in map(ds.annotation, range(len(ds)))}
    a, b, d = by_id[STEM_A], by_id[STEM_B], by_id[STEM_D]
    assert a.labels == {"covid19": 1} and b.labels == {"covid19": 0} and not b.regions
    assert a.regions["covid19"].size == (H, W) and a.regions["covid19"].instances == 3
    np.testing.assert_array_equal(a.regions["covid19"].rasterize(), pil_union([GGO_1, GGO_2, CONS]))
    # The lung fields are never part of the region.
    assert not a.regions["covid19"].rasterize()[10, 15] and pil_union([RIGHT_LUNG])[10, 15]
    # An unknown non-lung label counts in covid19 (and is reported); a rectangle is a box.
    np.testing.assert_array_equal(
        d.regions["covid19"].rasterize(), pil_union([GGO_1], [(5, 5, 20.5, 15)])
    )
    assert [p.sample for p in ds.problems] == [
        STEM_D
    ] and "unknown label 'pleural_effusion'" in ds.problems[0].message
    assert a.meta["patient_id"] == "COVID-19-AR-16406488" and a.meta["study_date"] == "01-17-2012"
    assert a.meta["lung_polygons"] == 2 and a.meta["path"].endswith(f"jpgs/{STEM_A}.jpg")


def test_separate_and_all_findings(repo: Path) -> None:
    ds = build(root=str(repo), findings="separate")
    assert ds.findings == ("ground_glass_opacity", "consolidation")
    by_id = {s.id: s for s in map(ds.annotation, range(len(ds)))}
    a, c, d = by_id[STEM_A], by_id[STEM_C], by_id[STEM_D]
    assert a.labels == {"ground_glass_opacity": 1, "consolidation": 1}
    assert c.labels == {"ground_glass_opacity": 0, "consolidation": 1} and set(c.regions) == {
        "consolidation"
    }
    np.testing.assert_array_equal(
        a.regions["ground_glass_opacity"].rasterize(), pil_union([GGO_1, GGO_2])
    )
    np.testing.assert_array_equal(a.regions["consolidation"].rasterize(), pil_union([CONS]))
    # the unknown label is in no separate finding
    assert d.labels == {"ground_glass_opacity": 0, "consolidation": 1}
    both = build(root=str(repo), findings="all")
    assert both.findings == ("covid19", "ground_glass_opacity", "consolidation")
    report = inspect_dataset(both, skip_images=True)
    assert report["images"] == 4
    assert report["findings"] == {
        "covid19": {"positive": 3, "with_region": 3, "instances": 3 + 1 + 2},
        "ground_glass_opacity": {"positive": 1, "with_region": 1, "instances": 2},
        "consolidation": {"positive": 3, "with_region": 3, "instances": 3},
    }


def test_items_decode_at_the_json_size(repo: Path) -> None:
    ds = build(root=str(repo))
    s = ds[0]
    assert s.image.shape == (H, W) and s.image.dtype == np.float32
    # the JPEG of the fixture holds (i % 251) / 255 gray levels, lossy but close
    expected = (np.arange(H * W).reshape(H, W) % 251) / 255.0
    assert np.abs(s.image - expected).mean() < 0.02


def test_sibling_jsons_layout_and_split_file(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", sibling_jsons=True)
    split = tmp_path / "ids.txt"
    split.write_text(f"{STEM_C}.jpg\nCOVID-19-AR-00000000_01-01-2012-XR\n{STEM_A}\n")
    ds = build(root=str(root / "covid_rural_annot"), split_file=str(split))
    assert [ds.annotation(i).id for i in range(len(ds))] == sorted([STEM_A, STEM_C])
    missing = [p for p in ds.problems if "no annotation" in p.message]
    assert [(p.file, p.line) for p in missing] == [(str(split), 2)]
    assert ds[0].image.shape == (H, W)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="jpgs/jsons"):
        build(root=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="findings"):
        build(root=str(tmp_path), findings="opacity")
    root = write_repository(tmp_path / "repo")
    jsons = root / "covid_rural_annot" / "jpgs" / "jsons"
    (jsons / "COVID-19-AR-1_01-01-2012-XR.json").write_text('{"version": "4.5.6", "shapes": [')
    write_case(
        jsons.parent,
        jsons,
        "COVID-19-AR-2_01-01-2012-XR",
        [
            shape("consolidation", [[1, 1], [5, 5]]),  # a line, not an area
            shape("groud_glass_opacity", [[50, 60], [95, 60], [60, 100]]),  # beyond the 70x90 image
            shape("consolidation", [[1, 1], [5, 5], [1, 9]], "circle"),
        ],
    )
    (jsons.parent / "COVID-19-AR-2_01-01-2012-XR.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ds = build(root=str(root))
    messages = {(Path(p.file).name, p.message.split(":")[0]) for p in ds.problems}
    assert (
        "COVID-19-AR-1_01-01-2012-XR.json",
        "not a readable LabelMe file (JSONDecodeError",
    ) in messages
    problems_2 = [p.message for p in ds.problems if p.sample == "COVID-19-AR-2_01-01-2012-XR"]
    assert len(problems_2) == 3
    assert "polygon with 2 point(s) is not an area" in problems_2[0]
    assert "extends beyond the 70x90 image" in problems_2[1]
    assert "circle" in problems_2[2]
    assert len(ds) == 5  # the unreadable JSON is left out, the others kept
    i = [ds.annotation(k).id for k in range(len(ds))].index("COVID-19-AR-2_01-01-2012-XR")
    s = ds.annotation(i)
    assert s.labels == {"covid19": 1} and s.regions["covid19"].rasterize()[60:, 50:].any()
    with pytest.raises(ImageReadError, match="COVID-19-AR-2_01-01-2012-XR.jpg"):
        ds[i]


def test_missing_size_is_taken_from_the_image(tmp_path: Path) -> None:
    root = write_repository(tmp_path)
    path = root / "covid_rural_annot" / "jpgs" / "jsons" / f"{STEM_C}.json"
    doc = json.loads(path.read_text())
    del doc["imageHeight"], doc["imageWidth"]
    path.write_text(json.dumps(doc))
    ds = build(root=str(root))
    i = [ds.annotation(k).id for k in range(len(ds))].index(STEM_C)
    assert ds.annotation(i).meta["size"] is None and any(p.sample == STEM_C for p in ds.problems)
    s = ds[i]
    assert s.meta["size"] == (H, W) and s.regions["covid19"].size == (H, W)
    np.testing.assert_array_equal(s.regions["covid19"].rasterize(), pil_union([CONS]))


def test_published_mavl_split_file(tmp_path: Path) -> None:
    """MAVL's covid_rural test.csv as published: a `filepath` column of 45 image stems. The
    annotated stems it lists are kept (two written here, and STEM_B, which it lists too), the
    others are reported."""
    from xbench_core.testing import realdata

    split = realdata("splits", "mavl-covid_rural-test.csv")
    stems = [line.strip() for line in split.read_text().splitlines()[1:] if line.strip()]
    assert len(stems) == 45
    root = write_repository(tmp_path / "repo")
    jpgs = root / "covid_rural_annot" / "jpgs"
    lungs = [shape("right_lung", RIGHT_LUNG), shape("left_lung", LEFT_LUNG)]
    for stem in stems[:2]:
        write_case(jpgs, jpgs / "jsons", stem, [*lungs, shape("consolidation", CONS)])
    ds = build(root=str(root / "covid_rural_annot"), split_file=str(split))
    kept = sorted(set(stems) & {*stems[:2], STEM_A, STEM_B, STEM_C, STEM_D})
    assert STEM_B in kept and len(kept) == 3
    assert [ds.annotation(i).id for i in range(len(ds))] == kept
    assert len([p for p in ds.problems if "no annotation" in p.message]) == 42
