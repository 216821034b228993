"""Tests of xbench_core.io.layout: what dataset plugins share around parsing their files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbench_core import ConfigError, DataError, ImageReadError, Region, Sample
from xbench_core.io.layout import (
    LabelTableDataset,
    clip_box,
    fit_regions_to_image,
    group_label_rows,
    image_index,
    read_json,
    require_choice,
    select_listed,
    under_root,
)


def test_fit_regions_to_image() -> None:
    region = Region.from_boxes((1024, 1024), [[100, 200, 300, 400]])
    sample = Sample("d", "a", np.zeros((256, 512), np.float32), {"x": 1}, {"x": region})
    sample.meta["size"] = (1024, 1024)
    assert fit_regions_to_image(sample) is sample
    assert sample.meta == {"size": (256, 512), "label_size": (1024, 1024)}
    assert sample.regions["x"].size == (256, 512)
    np.testing.assert_array_equal(sample.regions["x"].boxes, [[50, 50, 150, 100]])
    same = Sample("d", "b", np.zeros((32, 32)), {}, {"x": Region((32, 32))}, {"size": (32, 32)})
    unknown = Sample("d", "c", np.zeros((32, 32)), {}, {"x": Region((64, 64))}, {})
    for untouched in (same, unknown):
        meta, region = dict(untouched.meta), untouched.regions["x"]
        fit_regions_to_image(untouched)
        assert untouched.meta == meta and untouched.regions["x"] is region
    # issue 16 item 4: an image of another shape, or a 1x1 placeholder, is not stretched to fit
    for shape in ((128, 1024), (1, 1)):
        other = Sample("d", "e", np.zeros(shape, np.float32), {"x": 1}, {"x": region}, {"size": (1024, 1024)})
        with pytest.raises(DataError, match="not a copy of the same image|more than 32 times larger"):
            fit_regions_to_image(other)


def test_clip_box() -> None:
    assert clip_box([1.0, 2.0, 3.0, 4.0], (10, 20)) == ([1.0, 2.0, 3.0, 4.0], "inside")
    assert clip_box([-5.0, 2.0, 30.0, 4.0], (10, 20)) == ([0.0, 2.0, 20, 4.0], "clipped")
    assert clip_box([25.0, 2.0, 30.0, 4.0], (10, 20))[1] == "outside"
    assert clip_box([5.0, -4.0, 6.0, 0.0], (10, 20))[1] == "outside"


def test_paths_and_image_index(tmp_path: Path) -> None:
    assert under_root(tmp_path, "a/b.csv") == tmp_path / "a" / "b.csv"
    assert under_root(tmp_path, "/x/y") == Path("/x/y")
    for folder in ("images", "other/deep"):
        (tmp_path / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "other" / "deep" / "7.png")
    preferred = [tmp_path / "missing", tmp_path / "images"]
    index, default = image_index(tmp_path, None, preferred, option="d.image_dir", layout="L")
    assert default == tmp_path / "images" and index.get("7") == str(tmp_path / "other/deep/7.png")
    index, default = image_index(tmp_path, "other", preferred, option="d.image_dir", layout="L")
    assert default == tmp_path / "other" and index.get("7") is not None
    with pytest.raises(DataError, match="d.image_dir not found: .*nope\nExpected layout:\nL"):
        image_index(tmp_path, "nope", preferred, option="d.image_dir", layout="L")


def test_read_json(tmp_path: Path) -> None:
    import gzip

    with gzip.open(tmp_path / "a.json.gz", "wt") as fh:
        fh.write('{"x": [1, 2]}')
    assert read_json(tmp_path / "a.json.gz", "get it again") == {"x": [1, 2]}
    (tmp_path / "b.json").write_text('{"x": [1, 2}')
    with pytest.raises(
        DataError, match=r"b.json: not valid JSON \(line 1, column 12: .*get it again$"
    ):
        read_json(tmp_path / "b.json", "get it again")


def test_select_listed(tmp_path: Path) -> None:
    listing = tmp_path / "split.txt"
    listing.write_text("c\nzz\na.png\nc\n")
    problems: list = []
    ids = select_listed(listing, {"a", "b", "c"}, problems, lambda i: f"{i} unknown")
    assert ids == ["a", "c"]
    assert [(p.line, p.message.split(" ")[0]) for p in problems] == [(2, "zz"), (4, "id")]


def test_group_label_rows_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    row_ids = [f"i{k}" for k in rng.integers(0, 20, 200)]
    row_targets = rng.integers(0, 2, 200).tolist()
    keep = rng.random(200) < 0.8
    part_rows = [r for r in range(200) if row_targets[r] and keep[r]]
    for mask in (None, keep):
        kept = [r for r in range(200) if mask is None or mask[r]]
        got = group_label_rows(row_ids, row_targets, part_rows, mask)
        ids = sorted({row_ids[r] for r in kept})
        assert got.ids.tolist() == ids
        for k, image in enumerate(ids):
            rows = [r for r in kept if row_ids[r] == image]
            assert got.targets[k] == max(row_targets[r] for r in rows)
            parts = [p for p, r in enumerate(part_rows) if row_ids[r] == image]
            assert got.order[got.offsets[k] : got.offsets[k + 1]].tolist() == parts
            mixed = {row_targets[r] for r in rows} == {0, 1}
            assert (k in got.mixed) == mixed


def test_require_choice() -> None:
    require_choice("d.split", "test", ("train", "test"))
    with pytest.raises(ConfigError, match=r"^d.mode must be a, b or c, got 'x'$"):
        require_choice("d.mode", "x", ("a", "b", "c"))


class _Table(LabelTableDataset):
    """A label table of ids; an image <id>.png in the root when it exists."""

    name = "table"

    def __init__(self, root: str, split: str = "test", label_file: str | None = None) -> None:
        super().__init__(root, split, ("test",), "LAYOUT")
        self.label_file = self._find_label_file(label_file, ("labels.csv",), "LAYOUT")
        self._ids = np.asarray(sorted(self.label_file.read_text().split()))
        self._rows = np.arange(len(self._ids))
        self._images_root = self._find_images_root(None)
        self._check_images()

    def annotation(self, index: int) -> Sample:
        image_id = self.ids()[index]
        region = Region.from_boxes((8, 8), [[0, 0, 4, 4]])
        meta = {"path": self._expected_path(image_id), "size": (8, 8)}
        return Sample(self.name, image_id, None, {"x": 1}, {"x": region}, meta)

    def _expected_path(self, image_id: str) -> str:
        return str(self._images_root / f"{image_id}.png")

    def _resolve(self, image_id: str) -> str:
        if not Path(self._expected_path(image_id)).is_file():
            raise ImageReadError(f"no image {image_id}")
        return self._expected_path(image_id)


def test_label_table_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="table: root .* is not a folder. Expected layout:\nLAYOUT"):
        _Table(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="table: split must be one of test; got 'train'"):
        _Table(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"a label file \(labels.csv\) not found"):
        _Table(str(tmp_path))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.csv").write_text("b\na\n")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    ds = _Table(str(tmp_path))
    assert ds.label_file == tmp_path / "sub" / "labels.csv" and ds.ids() == ["a", "b"]
    assert [(p.sample, p.message) for p in ds.problems] == [("b", "image file missing")]
    assert _Table(str(tmp_path), label_file="sub/labels.csv").label_file == ds.label_file
    sample = ds[0]
    assert sample.image.shape == (4, 4) and sample.meta["label_size"] == (8, 8)
    np.testing.assert_array_equal(sample.regions["x"].boxes, [[0, 0, 2, 2]])
    with pytest.raises(ImageReadError, match="no image b"):
        ds[1]


def test_image_fit_problem() -> None:
    """Issue 16 item 4: an image that cannot carry its regions (a 1x1 placeholder for a 1024x1024
    release image, another shape) is a problem; resized copies of the same image are not."""
    from xbench_core.io.layout import image_fit_problem

    def sample(shape: tuple[int, int], frame: tuple[int, int]) -> Sample:
        region = Region.from_boxes(frame, [[10, 10, 50, 50]])
        return Sample("d", "x", np.zeros(shape, np.float32), {"pneumonia": 1}, {"pneumonia": region}, {})

    for shape, frame in [((1024, 1024), (1024, 1024)), ((512, 512), (1024, 1024)), ((320, 390), (2320, 2828)),
                         ((32, 32), (1024, 1024)), ((2544, 3056), (2544, 3056)), ((40, 50), (40, 50)),
                         ((1024, 1024), (2048, 2500)), ((40, 60), (96, 96))]:  # squashed copies are fine
        assert image_fit_problem(sample(shape, frame)) is None, (shape, frame)
    assert "1x1 pixels, smaller than the minimum side of 16" in image_fit_problem(sample((1, 1), (1024, 1024)))
    assert "more than 32 times larger" in image_fit_problem(sample((20, 20), (1024, 1024)))
    assert "more than 32 times larger" in image_fit_problem(sample((1024, 20), (1024, 1024)))
    assert "not a copy of the same image" in image_fit_problem(sample((1024, 200), (1024, 1024)))


def test_label_name_problem() -> None:
    """Issue 16 item 3: names read from label files may not reach outside the dataset's folders."""
    from xbench_core.io.layout import label_name_problem

    for ok in ("00000001_000.png", "patient1_study2_view1_frontal", "1.2.840.10008.5", "a/b/c.png", "x..y"):
        assert label_name_problem(ok) is None, ok
    for bad, why in [("../../../outside/evil", "climbs out"), ("a/../../b", "climbs out"), ("..", "climbs out"),
                     ("/etc/passwd", "absolute"), ("\\\\server\\share", "absolute"), ("C:\\x.png", "absolute"),
                     ("~/x.png", "absolute"), ("a\0b", "absolute"), ("", "empty")]:
        assert why in (label_name_problem(bad) or ""), bad
