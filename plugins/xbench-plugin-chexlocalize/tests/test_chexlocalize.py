"""Tests of the CheXlocalize loader: synthetic files in the real formats (CheXpert CSV header, COCO
RLE text, polygons, JPEGs), the real excerpt (image, ground truth, labels) and the cheXlocalize
saliency files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from xbench_plugin_chexlocalize.saliency import read_saliency_map, read_segmentations

from xbench_core import DataError, ImageReadError, get_registry
from xbench_core.inspect import inspect_dataset
from xbench_core.io import coco_rle_area, decode_coco_rle, encode_coco_rle
from xbench_core.testing import DatasetPluginTests, import_test_dependency, realdata

CSV_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
CSV_LABELS = CSV_HEADER.split(",")[5:]
TASKS = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
    "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices",
]  # fmt: skip


def build(**options):
    return get_registry().datasets["chexlocalize"].build(**options)


def rle_text(mask: np.ndarray) -> dict:
    """A compressed COCO RLE as cocoapi writes it (`rleToString`), for the fixtures."""
    counts = encode_coco_rle(mask)["counts"]
    out = bytearray()
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append((c | (0x20 if more else 0)) + 48)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": out.decode("ascii")}


def fill(polygons: list[list[list[float]]], size: tuple[int, int]) -> np.ndarray:
    """cheXlocalize `annotation_to_segmentation.create_mask`, written from its description."""
    img = Image.new("1", (size[1], size[0]))
    for poly in polygons:
        ImageDraw.Draw(img).polygon([tuple(p) for p in poly], outline=1, fill=1)
    return np.asarray(img, dtype=bool)


def csv_row(path: str, positives: set[str], view: str = "Frontal", **values: str) -> str:
    labels = [values.get(name, "1.0" if name in positives else "0.0") for name in CSV_LABELS]
    return ",".join([path, "Female", "61", view, "AP" if view == "Frontal" else ""] + labels)


# id -> (image size (h, w), {task: polygons})
CXRS = {
    "patient64600_study1_view1_frontal": (
        (60, 80),
        {
            "Cardiomegaly": [[[20.5, 30.2], [60.1, 30.0], [55.0, 50.7], [25.3, 52.0]]],
            "Airspace Opacity": [[[5, 5], [15, 5], [15, 20]], [[60, 5], [75, 8], [70, 20]]],
        },
    ),
    "patient64600_study1_view2_lateral": ((70, 50), {"Pleural Effusion": [[[2, 40], [45, 44], [30, 66]]]}),
    "patient64601_study2_view1_frontal": ((50, 40), {"Support Devices": [[[10, 1], [12, 1], [12, 45], [10, 45]]]}),
}  # fmt: skip


def write_root(root: Path, *, nested: bool = True, split: str = "val") -> Path:
    images = root / (f"CheXpert/{split}" if nested else "CheXpert-v1.0/valid")
    gt = root / "CheXlocalize" if nested else root
    gt.mkdir(parents=True, exist_ok=True)
    rows, segs, anns = [CSV_HEADER], {}, {}
    for cid, (size, tasks) in CXRS.items():
        patient, study, view = cid.split("_", 2)
        jpg = images / patient / study / f"{view}.jpg"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        ramp = (np.add.outer(np.arange(size[0]), np.arange(size[1])) * 2 % 256).astype(np.uint8)
        Image.fromarray(ramp, mode="L").save(jpg, quality=95)
        csv_name = {"Airspace Opacity": "Lung Opacity"}
        rows.append(
            csv_row(
                f"CheXpert-v1.0/valid/{patient}/{study}/{view}.jpg",
                {csv_name.get(t, t) for t in tasks},
                view="Frontal" if "frontal" in view else "Lateral",
            )
        )
        segs[cid] = {t: rle_text(fill(tasks.get(t, []), size)) for t in TASKS}
        anns[cid] = {"img_size": list(size), **tasks}
    # a CXR with no positive task: in the CSV only, as in the real files (234 rows, 187 keys)
    rows.append(csv_row("CheXpert-v1.0/valid/patient64602/study1/view1_frontal.jpg", {"Fracture"}))
    jpg = images / "patient64602" / "study1" / "view1_frontal.jpg"
    jpg.parent.mkdir(parents=True)
    Image.fromarray(np.full((30, 30), 128, np.uint8), mode="L").save(jpg)
    (root / (f"CheXpert/{split}_labels.csv" if nested else "CheXpert-v1.0/valid.csv")).write_text(
        "\n".join(rows) + "\n"
    )
    (gt / f"gt_segmentations_{split}.json").write_text(json.dumps(segs))
    (gt / f"gt_annotations_{split}.json").write_text(json.dumps(anns))
    return root


class TestCheXlocalize(DatasetPluginTests):
    name = "chexlocalize"

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory):
        return build(root=str(write_root(tmp_path_factory.mktemp("cxl"))), split="val")

    def test_labels_and_regions(self, dataset):
        assert dataset.problems == []
        ids = [dataset.annotation(i).id for i in range(len(dataset))]
        assert ids == sorted(CXRS) + ["patient64602_study1_view1_frontal"]
        s = dataset.annotation(0)
        assert len(s.labels) == 14 and s.labels["lung_opacity"] == 1 and s.labels["edema"] == 0
        assert set(s.regions) == {"cardiomegaly", "lung_opacity"}
        assert s.meta["size"] == (60, 80) and s.meta["view"] == "frontal"
        expected = fill(CXRS[ids[0]][1]["Airspace Opacity"], (60, 80))
        assert np.array_equal(s.regions["lung_opacity"].rasterize(), expected)
        last = dataset.annotation(3)
        assert last.labels["fracture"] == 1 and not last.regions and "size" not in last.meta

    def test_polygons_reproduce_the_masks(self, dataset, tmp_path):
        polys = build(root=str(dataset.root), split="val", regions="polygons")
        assert polys.problems == []
        for i in range(len(dataset)):
            a, b = dataset.annotation(i), polys.annotation(i)
            assert a.labels == b.labels and set(a.regions) == set(b.regions)
            for f in a.regions:
                assert np.array_equal(a.regions[f].rasterize(), b.regions[f].rasterize())

    def test_image_decodes_at_label_size(self, dataset):
        s = dataset[1]
        assert s.image.shape == (70, 50) and s.regions["pleural_effusion"].size == (70, 50)


def test_old_layout_and_frontal_only(tmp_path):
    ds = build(root=str(write_root(tmp_path, nested=False)), split="val", frontal_only=True)
    assert ds.labels_csv.name == "valid.csv" and len(ds) == 3
    assert all(ds.annotation(i).meta["view"] == "frontal" for i in range(len(ds)))
    assert ds[0].image.shape == (60, 80)


def test_test_split_layout(tmp_path):
    root = write_root(tmp_path, split="test")
    ds = build(root=str(root))
    assert ds.split == "test" and len(ds) == 4 and not ds.problems
    assert ds.labels_csv == root / "CheXpert" / "test_labels.csv"
    assert ds.gt_file == root / "CheXlocalize" / "gt_segmentations_test.json"
    assert ds[0].meta["path"].startswith(str(root / "CheXpert" / "test"))
    with pytest.raises(DataError, match="val_labels.csv"):
        build(root=str(root), split="val")


def test_emptiness_is_decided_on_the_runs():
    # two empty masks of different sizes have different texts; a non-canonical empty RLE
    # has three runs; a mask whose first pixel is set starts with a zero-length run
    a = rle_text(np.zeros((2022, 2021), bool))
    b = rle_text(np.zeros((20, 21), bool))
    assert a["counts"] != b["counts"] and coco_rle_area(a) == 0 and coco_rle_area(b) == 0
    assert coco_rle_area({"size": [4, 5], "counts": [7, 0, 13]}) == 0
    first = np.zeros((9, 7), bool)
    first[0, 0] = first[8, 6] = True
    assert rle_text(first)["counts"] == "01m10"  # runs 0, 1, 61, 1 (the core's tests decode it)
    assert coco_rle_area(rle_text(first)) == 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((37, 23)) < rng.uniform(0.01, 0.9)
        text = rle_text(mask)
        assert coco_rle_area(text) == mask.sum()
        assert np.array_equal(decode_coco_rle(text), mask)
    with pytest.raises(ValueError, match="not 4 x 5"):
        coco_rle_area({"size": [4, 5], "counts": "5"})


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="Expected layout"):
        build(root=str(tmp_path / "missing"), split="val")
    with pytest.raises(DataError, match="val_labels.csv"):
        build(root=str(tmp_path), split="val")
    root = write_root(tmp_path)
    csv_file = root / "CheXpert" / "val_labels.csv"
    lines = csv_file.read_text().splitlines()
    lines += [
        "valid/not-a-chexpert-path.jpg,Male,50,Frontal,PA" + ",0.0" * 14,
        csv_row("x/patient64603/study1/view1_frontal.jpg", set(), **{"Edema": "-1.0"}),
        csv_row(
            "x/patient64604/study1/view1_frontal.jpg", set(), **{"Edema": "", "Fracture": "yes"}
        ),
        csv_row("x/patient64605/study1/view1_frontal.jpg", {"Pneumothorax"}),
    ]
    lines[0] += ",Extra Column"
    csv_file.write_text("\n".join(lines) + "\n")
    segs = json.loads((root / "CheXlocalize" / "gt_segmentations_val.json").read_text())
    cid = "patient64600_study1_view1_frontal"
    segs[cid]["Edema"] = segs[cid]["Cardiomegaly"]  # a mask on a CSV negative
    segs[cid]["Lung Lesion"] = {"size": [60, 80], "counts": "P"}  # ends inside a count
    segs[cid]["Pleural Effusion"] = {"size": [60, 80]}
    segs[cid]["Hernia"] = segs[cid]["Edema"]
    segs["patient65000_study1_view1_frontal"] = {}
    (root / "CheXlocalize" / "gt_segmentations_val.json").write_text(json.dumps(segs))
    ds = build(root=str(root), split="val")
    text = [str(p) for p in ds.problems]
    csv_problems = [p for p in ds.problems if p.file == str(csv_file)]
    assert {p.line for p in csv_problems} == {1, 6, 7, 8}
    assert any("'Extra Column' is not a CheXpert label" in t for t in text)
    assert any(":6:" in t and "not patient*/study*/view*.jpg" in t for t in text)
    assert any(":7 [patient64603" in t and "Edema is uncertain (-1)" in t for t in text)
    assert any(":8 [patient64604" in t and "Edema is blank" in t for t in text)
    assert any(":8 [patient64604" in t and "'yes' is not 0 or 1" in t for t in text)
    assert any("edema region on a CXR labelled negative" in t for t in text)
    assert any("Lung Lesion: not a COCO RLE" in t and "truncated" in t for t in text)
    assert any("Pleural Effusion: not a COCO RLE" in t for t in text)
    assert any("unknown task 'Hernia'" in t for t in text)
    assert any("patient65000" in t and "no row in val_labels.csv" in t for t in text)
    assert any(
        "patient64605" in t and "labelled pneumothorax but has no segmentation" in t for t in text
    )
    s = ds.annotation(ds._ids.index(cid))
    assert s.labels["edema"] == 0 and "edema" not in s.regions
    assert "edema" not in ds.annotation(ds._ids.index("patient64603_study1_view1_frontal")).labels
    with pytest.raises(ImageReadError, match="patient64605"):
        ds[ds._ids.index("patient64605_study1_view1_frontal")]


def test_polygon_outside_is_clipped(tmp_path):
    root = write_root(tmp_path)
    ann_file = root / "CheXlocalize" / "gt_annotations_val.json"
    anns = json.loads(ann_file.read_text())
    anns["patient64601_study2_view1_frontal"]["Support Devices"].append(
        [[30, 40], [90, 40], [30, 60]]
    )
    ann_file.write_text(json.dumps(anns))
    ds = build(root=str(root), split="val", regions="polygons")
    assert len(ds.problems) == 1 and "clipped" in ds.problems[0].message
    region = ds.annotation(2).regions["support_devices"]
    assert region.instances == 2 and region.polygons[1].max(axis=0).tolist() == [40, 50]


def test_split_file(tmp_path):
    root = write_root(tmp_path)
    listing = tmp_path / "ids.csv"
    listing.write_text(
        "Path,fold\n"
        "CheXpert-v1.0/valid/patient64601/study2/view1_frontal.jpg,1\n"
        "patient64600_study1_view2_lateral,1\n"
        "patient99999_study1_view1_frontal,2\n"
    )
    ds = build(root=str(root), split="val", split_file=str(listing))
    assert [ds.annotation(i).id for i in range(len(ds))] == [
        "patient64600_study1_view2_lateral",
        "patient64601_study2_view1_frontal",
    ]
    assert [(p.line, p.sample) for p in ds.problems] == [(4, "patient99999_study1_view1_frontal")]


def test_small_images_resample_the_masks(tmp_path):
    root = write_root(tmp_path)
    jpg = root / "CheXpert/val/patient64600/study1/view1_frontal.jpg"
    Image.fromarray(np.zeros((30, 40), np.uint8), mode="L").save(jpg)
    s = build(root=str(root), split="val")[0]
    assert s.meta["label_size"] == (60, 80) and s.meta["size"] == (30, 40)
    full = fill(CXRS["patient64600_study1_view1_frontal"][1]["Cardiomegaly"], (60, 80))
    assert np.array_equal(s.regions["cardiomegaly"].rasterize(), full[1::2, 1::2])


# ---- real files -------------------------------------------------------------------------------
REAL = "patient64541_study1_view1_frontal"


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """The official layout, built of links to the real files (nothing is copied)."""
    root = tmp_path_factory.mktemp("cxl-real")
    image = root / "CheXpert" / "val" / "patient64541" / "study1" / "view1_frontal.jpg"
    image.parent.mkdir(parents=True)
    image.symlink_to(realdata("chexlocalize", "p64541.jpg"))
    (root / "CheXpert" / "val_labels.csv").symlink_to(realdata("chexlocalize", "valid.csv"))
    (root / "CheXlocalize").mkdir()
    for name in ("gt_segmentations_val.json", "gt_annotations_val.json"):
        (root / "CheXlocalize" / name).symlink_to(realdata("chexlocalize", name))
    return root


def test_real_inspect_counts(real_root):
    for regions in ("segmentations", "polygons"):
        report = inspect_dataset(
            build(root=str(real_root), split="val", regions=regions), skip_images=True
        )
        assert report["images"] == 2 and report["problems"] == []
        rows = report["findings"]
        positive = {f for f, r in rows.items() if r["positive"]}
        assert positive == {
            "enlarged_cardiomediastinum",
            "cardiomegaly",
            "lung_opacity",
            "support_devices",
        }
        assert all(rows[f]["with_region"] == 1 for f in positive)
        # two contours for enlarged cardiomediastinum in the annotations, one mask in the RLE file
        assert rows["enlarged_cardiomediastinum"]["instances"] == (
            2 if regions == "polygons" else 1
        )


def test_real_polygons_match_the_rle_masks(real_root):
    """Filling gt_annotations_val.json reproduces gt_segmentations_val.json pixel for pixel."""
    seg = build(root=str(real_root), split="val")
    pol = build(root=str(real_root), split="val", regions="polygons")
    agreement = {}
    for i in range(len(seg)):
        a, b = seg.annotation(i), pol.annotation(i)
        assert set(a.regions) == set(b.regions)
        for f in a.regions:
            ma, mb = a.regions[f].rasterize(), b.regions[f].rasterize()
            iou = (ma & mb).sum() / (ma | mb).sum()
            agreement[(a.id, f)] = (float(iou), int((ma ^ mb).sum()), int(ma.sum()))
    assert len(agreement) == 4
    assert all(iou == 1.0 and diff == 0 for iou, diff, _ in agreement.values()), agreement
    assert agreement[(REAL, "cardiomegaly")][2] == 867107


def test_real_image_decodes(real_root):
    ds = build(root=str(real_root), split="val")
    s = ds[0]
    assert s.id == REAL and s.image.shape == (2320, 2828) and s.image.dtype == np.float32
    assert Path(s.meta["path"]).resolve() == realdata("chexlocalize", "p64541.jpg").resolve()
    assert all(r.size == (2320, 2828) for r in s.regions.values())
    assert s.regions["cardiomegaly"].rasterize().sum() == 867107
    assert 0.0 <= s.image.min() < s.image.max() <= 1.0
    with pytest.raises(ImageReadError, match="patient64542"):
        ds[1]  # the second image is not in the excerpt


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools and numpy 2
def test_core_decoder_matches_pycocotools():
    mask_api = import_test_dependency("pycocotools.mask")
    checked = 0
    for name in ("gt_segmentations_val.json", "gradcam_segmentations_val_sample.json"):
        data = json.loads(realdata("chexlocalize", name).read_text())
        for tasks in data.values():
            for rle in tasks.values():
                ours = decode_coco_rle(rle)
                theirs = mask_api.decode({"size": rle["size"], "counts": rle["counts"].encode()})
                assert np.array_equal(ours, theirs.astype(bool))
                assert coco_rle_area(rle) == int(theirs.sum())
                checked += 1
    assert checked == 40


def test_real_saliency_pickle(tmp_path):
    path = realdata("chexlocalize", "gradcam_map_cardiomegaly_p64541.pkl")
    m = read_saliency_map(path)
    assert m.map.shape == (1, 1, 320, 320) and m.map.dtype == np.float32
    assert m.heatmap.shape == (320, 320) and float(m.heatmap.max()) > 0
    assert m.prob == pytest.approx(0.1537875697016716)
    assert m.task == "Cardiomegaly" and m.finding == "cardiomegaly" and m.gt == 1
    assert m.cxr_dims == (2828, 2320) and m.original_size == (2320, 2828)
    assert m.cxr_id is None
    named = tmp_path / f"{REAL}_Cardiomegaly_map.pkl"
    named.symlink_to(path)
    assert read_saliency_map(named).cxr_id == REAL
    with pytest.raises(DataError, match="not found"):
        read_saliency_map(tmp_path / "nothing.pkl")


def test_real_predicted_segmentations():
    regions = read_segmentations(realdata("chexlocalize", "gradcam_segmentations_val_sample.json"))
    assert set(regions) == {REAL, "patient64542_study1_view1_frontal"}
    assert all(len(r) == 10 for r in regions.values())
    assert regions[REAL]["cardiomegaly"].size == (2320, 2828)
    assert regions["patient64542_study1_view1_frontal"]["edema"].rasterize().sum() == 69275


def test_published_chexpert_test_list_format(tmp_path):
    """MAVL's chexpertv1/filter_test_labels.csv (`Path,<14 labels>`, 500 CheXpert test images) is
    accepted as a split_file: its `Path` values become CheXlocalize ids."""
    from xbench_plugin_chexlocalize.dataset import cxr_id

    from xbench_core.io import read_id_list

    listing = read_id_list(realdata("splits", "mavl-chexpertv1-filter_test_labels.csv"),
                           normalize=lambda v: cxr_id(v) or v.strip())
    assert len(listing.ids) == 500 and not listing.repeats and not listing.empty_lines
    assert listing.ids[0] == "patient64741_study1_view1_frontal"
    assert all(cxr_id(i) == i for i in listing.ids)
