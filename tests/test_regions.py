"""Regions: the box edge convention by hand, polygons, mask resampling, union, COCO RLE against
pycocotools, and SIIM relative RLE against a naive decoder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xbench_core.io.regions import (
    Region,
    coco_counts_from_string,
    coco_rle_area,
    decode_coco_rle,
    decode_relative_rle,
    encode_coco_rle,
    resample_mask,
)
from xbench_core.testing import import_test_dependency, realdata

# pycocotools 2.0 under numpy 2 warns about the `copy` keyword: not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def box_mask(size: tuple[int, int], rows: range, cols: range) -> np.ndarray:
    m = np.zeros(size, bool)
    m[rows.start : rows.stop, cols.start : cols.stop] = True
    return m


# ---- boxes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "box, rows, cols",
    [
        ([2, 3, 5, 7], range(3, 7), range(2, 5)),  # integer: half-open
        ([1.2, 2.5, 3.0, 4.01], range(2, 5), range(1, 3)),  # fractional: every pixel it overlaps
        ([0.9, 0.1, 1.1, 0.2], range(0, 1), range(0, 2)),  # straddles a pixel edge
        ([4, 4, 4, 4], range(4, 5), range(4, 5)),  # zero width and height: the pixel it touches
        ([4.5, 2, 4.5, 6], range(2, 6), range(4, 5)),  # zero width, fractional position
        ([-3, -2, 2, 3], range(0, 3), range(0, 2)),  # clipped at the top left
        ([7, 8, 50, 60], range(8, 10), range(7, 12)),  # clipped at the bottom right
        ([0, 0, 12, 10], range(0, 10), range(0, 12)),  # the whole image
    ],
)
def test_box_edge_convention(box, rows, cols):
    size = (10, 12)
    got = Region.from_boxes(size, [box]).rasterize()
    np.testing.assert_array_equal(got, box_mask(size, rows, cols))


@pytest.mark.parametrize(
    "box",
    [[-5, 2, -1, 6], [2, -9, 6, -3], [12, 2, 20, 6], [2, 10, 6, 15], [-5, -5, -5, -5], [12, 10, 12, 10]],
)
def test_box_entirely_outside_covers_nothing(box):
    assert not Region.from_boxes((10, 12), [box]).rasterize().any()


def test_box_in_a_scaled_frame():
    region = Region.from_boxes((100, 200), [[10, 20, 30, 40]])
    # frame (50, 50): y scaled by 0.5, x by 0.25 -> x [2.5, 7.5), y [10, 20)
    np.testing.assert_array_equal(
        region.rasterize((50, 50)), box_mask((50, 50), range(10, 20), range(2, 8))
    )
    # a larger frame: x2 scale
    np.testing.assert_array_equal(
        region.rasterize((200, 400)), box_mask((200, 400), range(40, 80), range(20, 60))
    )
    # a box shrinking below one pixel still covers the pixel it touches
    tiny = Region.from_boxes((1000, 1000), [[503, 507, 504, 508]]).rasterize((10, 10))
    np.testing.assert_array_equal(tiny, box_mask((10, 10), range(5, 6), range(5, 6)))


@settings(max_examples=300, deadline=None)
@given(
    x1=st.floats(-20, 40), y1=st.floats(-20, 40), w=st.floats(0, 30), h=st.floats(0, 30),
    fh=st.integers(1, 40), fw=st.integers(1, 40),
)
def test_box_against_a_pixel_overlap_loop(x1, y1, w, h, fh, fw):
    """Each pixel is in the box iff its cell [j, j+1) x [i, i+1) overlaps the scaled box, or, for
    a degenerate box, contains its position."""
    size = (25, 30)
    x2, y2 = x1 + w, y1 + h
    got = Region.from_boxes(size, [[x1, y1, x2, y2]]).rasterize((fh, fw))
    sy, sx = fh / size[0], fw / size[1]
    bx1, bx2, by1, by2 = x1 * sx, x2 * sx, y1 * sy, y2 * sy

    def covered(lo: float, hi: float, n: int) -> np.ndarray:
        j = np.arange(n)
        if hi > lo:
            return (j < hi) & (j + 1 > lo)
        return (j <= lo) & (j + 1 > lo)  # a zero extent covers the pixel containing it

    expect = covered(by1, by2, fh)[:, None] & covered(bx1, bx2, fw)[None, :]
    np.testing.assert_array_equal(got, expect)


def test_several_boxes_are_a_union():
    region = Region.from_boxes((10, 10), [[0, 0, 2, 2], [5, 5, 7, 8]])
    assert region.instances == 2
    expect = box_mask((10, 10), range(0, 2), range(0, 2)) | box_mask((10, 10), range(5, 8), range(5, 7))
    np.testing.assert_array_equal(region.rasterize(), expect)


# ---- polygons and masks ------------------------------------------------------------------------
def _pil_polygon(size, polys):
    from PIL import Image, ImageDraw

    img = Image.new("1", (size[1], size[0]))
    for poly in polys:
        ImageDraw.Draw(img).polygon([tuple(p) for p in poly], outline=1, fill=1)
    return np.array(img, dtype=bool)


def test_polygon_square_by_hand():
    square = np.array([[2, 2], [6, 2], [6, 6], [2, 6]], float)
    got = Region((10, 10), polygons=(square,)).rasterize()
    # Pillow's outline includes the vertices' pixels: rows and columns 2..6 (as cheXlocalize)
    np.testing.assert_array_equal(got, box_mask((10, 10), range(2, 7), range(2, 7)))


def test_polygons_match_chexlocalize_drawing_and_scale():
    rng = np.random.default_rng(0)
    polys = tuple(rng.uniform(0, 60, size=(7, 2)) for _ in range(3))
    region = Region((60, 80), polygons=polys)
    np.testing.assert_array_equal(region.rasterize(), _pil_polygon((60, 80), polys))
    # in a frame of half the size the vertices are scaled, then drawn
    half = [p * (40 / 80, 30 / 60) for p in polys]
    np.testing.assert_array_equal(region.rasterize((30, 40)), _pil_polygon((30, 40), half))


def test_real_chexlocalize_polygons_draw_like_the_reference():
    path = realdata("chexlocalize", "gt_annotations_val.json")
    data = json.loads(path.read_text())
    checked = 0
    for _image, tasks in data.items():
        size = tuple(tasks["img_size"])
        for task, polys in tasks.items():
            if task == "img_size":
                continue
            arrays = tuple(np.asarray(p, float) for p in polys)
            got = Region(size, polygons=arrays).rasterize()
            assert np.array_equal(got, _pil_polygon(size, polys)), task
            assert got.any()
            checked += 1
    assert checked > 0


def test_resample_mask_nearest_at_pixel_centers():
    m = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(resample_mask(m, (8, 8)), np.kron(m, np.ones((2, 2), bool)))
    big = np.kron(m, np.ones((2, 2), bool))
    np.testing.assert_array_equal(resample_mask(big, (4, 4)), m)
    # downsampling by 2 takes the pixel whose center is nearest: rows/cols 1, 3, 5, 7
    r = np.random.default_rng(1).random((8, 8)) < 0.5
    np.testing.assert_array_equal(resample_mask(r, (4, 4)), r[1::2, 1::2])
    # non-integer factors: 3 -> 5 picks floor((i + 0.5) * 3 / 5) = 0, 0, 1, 2, 2
    col = np.array([[True, False, True]])
    np.testing.assert_array_equal(resample_mask(col, (1, 5)), [[True, True, False, True, True]])
    assert resample_mask(m, (4, 4)) is m


def test_region_masks_are_resampled_to_the_frame():
    m = np.zeros((4, 4), bool)
    m[1, 2] = True
    region = Region((4, 4), masks=(m,))
    np.testing.assert_array_equal(region.rasterize(), m)
    np.testing.assert_array_equal(region.rasterize((8, 8)), np.kron(m, np.ones((2, 2), bool)))
    # a mask given at another size than the image (a low-resolution annotation)
    low = Region((8, 8), masks=(m,))
    np.testing.assert_array_equal(low.rasterize(), np.kron(m, np.ones((2, 2), bool)))


def test_union_of_every_kind_of_part():
    size = (12, 12)
    m = np.zeros(size, bool)
    m[0, 11] = True
    rle_mask = np.zeros(size, bool)
    rle_mask[11, 0] = True
    siim_mask = np.zeros(size, bool)
    siim_mask[5, 5] = True
    a = Region.from_boxes(size, [[0, 0, 2, 2]])
    b = Region(size, polygons=(np.array([[8, 8], [10, 8], [10, 10], [8, 10]], float),), masks=(m,))
    c = Region(size, coco_rles=(encode_coco_rle(rle_mask),), relative_rles=(f"{5 * 12 + 5} 1",))
    u = a.union(b).union(c)
    assert u.instances == 5
    expect = box_mask(size, range(0, 2), range(0, 2)) | box_mask(size, range(8, 11), range(8, 11))
    expect |= m | rle_mask | siim_mask
    np.testing.assert_array_equal(u.rasterize(), expect)
    with pytest.raises(ValueError, match="sizes"):
        a.union(Region.from_boxes((12, 13), [[0, 0, 1, 1]]))


def test_empty_region_is_empty():
    r = Region((5, 6))
    assert r.instances == 0 and not r.rasterize().any() and r.rasterize((3, 3)).shape == (3, 3)


# ---- COCO RLE ----------------------------------------------------------------------------------
def _random_masks(rng: np.random.Generator):
    yield np.zeros((7, 9), bool)
    yield np.ones((7, 9), bool)
    one = np.zeros((5, 6), bool)
    one[4, 5] = True
    yield one
    first = np.zeros((5, 6), bool)
    first[0, 0] = True
    yield first
    for _ in range(30):
        h, w = rng.integers(1, 120, size=2)
        kind = rng.integers(0, 3)
        if kind == 0:
            m = rng.random((h, w)) < rng.uniform(0.01, 0.99)
        else:  # blobs: long runs, large and varying counts (multi-character, negative deltas)
            m = np.zeros((h, w), bool)
            for _ in range(rng.integers(1, 5)):
                y0, x0 = rng.integers(0, h), rng.integers(0, w)
                m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        yield m
    big = np.zeros((600, 700), bool)
    big[100:500, 50:650] = True
    big[300, :] = False
    yield big


def test_coco_rle_against_pycocotools_random():
    mask_util = import_test_dependency("pycocotools.mask")
    rng = np.random.default_rng(0)
    for m in _random_masks(rng):
        enc = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert isinstance(enc["counts"], bytes)
        # bytes and str both decode, equal to pycocotools' own decoding
        for counts in (enc["counts"], enc["counts"].decode("ascii")):
            got = decode_coco_rle({"size": enc["size"], "counts": counts})
            assert got.dtype == bool and got.shape == m.shape
            np.testing.assert_array_equal(got, m)
            np.testing.assert_array_equal(got, mask_util.decode(enc).astype(bool))
        # the run lengths of the string are the uncompressed counts of the mask
        ours = encode_coco_rle(m)
        assert coco_counts_from_string(enc["counts"].decode()) == ours["counts"]
        # and pycocotools compresses our uncompressed counts to the very same string
        assert mask_util.frPyObjects(ours, *ours["size"])["counts"] == enc["counts"]
        np.testing.assert_array_equal(decode_coco_rle(ours), m)


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 30), w=st.integers(1, 30), seed=st.integers(0, 2**31), p=st.floats(0, 1)
)
def test_encode_coco_rle_round_trip(h, w, seed, p):
    m = np.random.default_rng(seed).random((h, w)) < p
    rle = encode_coco_rle(m)
    assert rle["size"] == [h, w] and sum(rle["counts"]) == h * w
    assert all(c > 0 for c in rle["counts"][1:]) and rle["counts"][0] >= 0
    np.testing.assert_array_equal(decode_coco_rle(rle), m)


def test_coco_rle_column_major_by_hand():
    # 2 x 3 mask, column-major: [0 0 | 1 0 | 1 1] -> runs 2 zeros, 1 one, 1 zero, 2 ones
    got = decode_coco_rle({"size": [2, 3], "counts": [2, 1, 1, 2]})
    np.testing.assert_array_equal(got, [[False, True, True], [False, False, True]])


def test_coco_rle_errors():
    with pytest.raises(ValueError, match="add up"):
        decode_coco_rle({"size": [2, 3], "counts": [2, 1, 1]})
    with pytest.raises(ValueError, match="truncated"):
        coco_counts_from_string("1k")  # 'k' has the continuation bit and nothing follows
    with pytest.raises(ValueError, match="' '"):
        coco_counts_from_string("12 3")  # a space is below '0': not cocoapi's alphabet
    with pytest.raises(ValueError, match="negative run"):
        decode_coco_rle({"size": [2, 3], "counts": [4, -1, 3]})
    assert coco_counts_from_string("") == []


def test_coco_counts_by_hand():
    # cocoapi's text of a 9 x 7 mask with its first and last pixels set: runs 0, 1, 61, 1.
    # '0' = 0; '1' = 1; 61 = 0b1_11101 -> groups 11101 (+0x20 more) then 1: 'm', '1';
    # the fourth count is a difference to the second: 1 - 1 = 0 -> '0'
    assert coco_counts_from_string("01m10") == [0, 1, 61, 1]
    # a negative difference: runs 5, 7, 3, 2 -> 5, 7, 3, 2 - 7 = -5 (0b11011 with the sign bit)
    assert coco_counts_from_string("57" + "3" + chr(48 + (-5 & 0x1F))) == [5, 7, 3, 2]


@pytest.mark.parametrize("seed", range(5))
def test_coco_rle_area_counts_the_foreground(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((rng.integers(1, 60), rng.integers(1, 60))) < rng.uniform(0, 1)
    rle = encode_coco_rle(m)
    assert coco_rle_area(rle) == m.sum()
    mask_util = import_test_dependency("pycocotools.mask")
    text = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    assert coco_rle_area({"size": text["size"], "counts": text["counts"].decode()}) == m.sum()


def test_coco_rle_area_of_empty_and_non_canonical_masks():
    assert coco_rle_area({"size": [4, 5], "counts": [20]}) == 0
    assert coco_rle_area({"size": [4, 5], "counts": [7, 0, 13]}) == 0  # a zero-length run
    assert coco_rle_area({"size": [4, 5], "counts": [0, 20]}) == 20
    with pytest.raises(ValueError, match="not 4 x 5 = 20"):
        coco_rle_area({"size": [4, 5], "counts": "5"})


def test_region_resized_scales_coordinates_and_keeps_rles_exact():
    size = (8, 12)
    siim = np.zeros(size, bool)
    siim[2:4, 5] = True
    text = naive_relative_encode(siim)
    region = Region(
        size,
        boxes=np.array([[2.0, 2.0, 6.0, 4.0]]),
        polygons=(np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]),),
        relative_rles=(text,),
    )
    half = region.resized((4, 6))
    assert half.size == (4, 6) and half.instances == 3 and half.relative_rles == ()
    np.testing.assert_array_equal(half.boxes, [[1.0, 1.0, 3.0, 2.0]])
    np.testing.assert_array_equal(half.polygons[0], [[0, 0], [2, 0], [2, 2]])
    # the SIIM text was read at the original size, then became a mask resampled to the frame
    np.testing.assert_array_equal(half.masks[0], siim)
    # resizing first and rasterizing in a frame of that size draw the same pixels
    assert half.rasterize().any()
    np.testing.assert_array_equal(half.rasterize(), region.rasterize((4, 6)))
    np.testing.assert_array_equal(half.resized(size).rasterize(), region.rasterize())


def test_real_chexlocalize_segmentations_against_pycocotools():
    mask_util = import_test_dependency("pycocotools.mask")
    data = json.loads(realdata("chexlocalize", "gt_segmentations_val.json").read_text())
    positives = 0
    for _image, tasks in data.items():
        for task, rle in tasks.items():
            got = decode_coco_rle(rle)
            ref = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert got.shape == tuple(rle["size"])
            # np.array_equal: assert_array_equal is slow on 6.5 M pixels
            assert np.array_equal(got, ref.astype(bool)), task
            positives += bool(got.any())
            region = Region(tuple(rle["size"]), coco_rles=(rle,))
            assert np.array_equal(region.rasterize(), got), task
    assert positives > 0


# ---- SIIM relative RLE -------------------------------------------------------------------------
def naive_relative_decode(text: str, h: int, w: int) -> np.ndarray:
    """The relative column-major format of SIIM's mask_functions.rle2mask, pixel by pixel."""
    flat = np.zeros(h * w, bool)
    text = text.strip()
    if text == "-1":
        return flat.reshape(w, h).T
    values = [int(v) for v in text.split()]
    pos = 0
    for off, length in zip(values[0::2], values[1::2]):
        pos += off
        for k in range(length):
            flat[pos + k] = True
        pos += length
    return flat.reshape(w, h).T


def naive_relative_encode(mask: np.ndarray) -> str:
    """SIIM's mask2rle: column-major (x outer), offsets from the end of the previous run."""
    flat = np.concatenate([[False], mask.T.reshape(-1), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    parts, pos = [], 0
    for s, e in zip(starts.tolist(), ends.tolist()):
        parts += [str(s - pos), str(e - s)]
        pos = e
    return " ".join(parts) if parts else "-1"


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**31), p=st.floats(0, 1)
)
def test_relative_rle_random_masks(h, w, seed, p):
    m = np.random.default_rng(seed).random((h, w)) < p
    text = naive_relative_encode(m)
    got = decode_relative_rle(text, h, w)
    assert got.shape == (h, w) and got.dtype == bool
    np.testing.assert_array_equal(got, m)
    np.testing.assert_array_equal(got, naive_relative_decode(text, h, w))


def test_relative_rle_by_hand_is_column_major():
    # 3 x 4 image; flat index = x * H + y. "1 2 3 1": pixels 1, 2, then 2 + 1 + 3 = 6
    got = decode_relative_rle("1 2 3 1", 3, 4)
    expect = np.zeros((3, 4), bool)
    expect[1, 0] = expect[2, 0] = True  # flat 1, 2 -> x 0, y 1 and 2
    expect[0, 2] = True  # flat 6 -> x 2, y 0
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("text", ["-1", " -1", "-1 ", ""])
def test_relative_rle_empty(text):
    got = decode_relative_rle(text, 5, 7)
    assert got.shape == (5, 7) and not got.any()


def test_relative_rle_rejects_an_absolute_encoding():
    """Only the relative format is decoded: an absolute (start, length) text is an error, never
    silently reinterpreted (the SIIM plugin converts absolute label files to relative text)."""
    h = w = 32  # 1024 pixels
    # 0-based absolute (start, length) pairs; read as relative gaps they overrun the image
    with pytest.raises(ValueError, match=r"end at pixel 2218, beyond the 32x32 image"):
        decode_relative_rle("600 5 700 10 900 3", h, w)
    # the same pixels as relative text decode as expected
    got = decode_relative_rle("600 5 95 10 190 3", h, w)
    flat = np.zeros(h * w, bool)
    flat[600:605] = flat[700:710] = flat[900:903] = True
    np.testing.assert_array_equal(got, flat.reshape(w, h).T)


def test_relative_rle_may_end_on_the_last_pixel():
    got = decode_relative_rle("1020 4", 32, 32)
    assert got.sum() == 4 and got[28:, 31].all()
    with pytest.raises(ValueError, match="beyond"):
        decode_relative_rle("1020 5", 32, 32)


@pytest.mark.parametrize(
    "text, message",
    [
        ("10 5 7", "odd number of values"),
        ("1000 30", "beyond the 32x31 image"),
        ("900 20 80 20", "beyond"),  # overruns as relative (it would fit as absolute pairs)
        ("-5 10", "negative value"),
        ("3 -2", "negative value"),
        ("5 x", "'x' is not an integer"),
        ("5 2.0", "'2.0' is not an integer"),
    ],
)
def test_relative_rle_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        decode_relative_rle(text, 32, 31)


def test_real_siim_excerpt_against_the_naive_decoder():
    path = realdata("siim", "train-rle.excerpt.csv")
    with open(path, newline="") as fh:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(fh)]
    assert rows and set(rows[0]) == {"ImageId", "EncodedPixels"}
    positives = 0
    for r in rows:
        got = decode_relative_rle(r["EncodedPixels"], 1024, 1024)
        assert np.array_equal(got, naive_relative_decode(r["EncodedPixels"], 1024, 1024))
        if r["EncodedPixels"] != "-1":
            assert got.any()
            positives += 1
            # the encoding is relative: our naive encoder reproduces the text exactly
            assert naive_relative_encode(got) == " ".join(r["EncodedPixels"].split())
    assert positives > 0
