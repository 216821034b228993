"""Geometries: forward and inverse maps, hand-computed cases, agreement with torchvision's Resize +
CenterCrop, the image helpers placing content where their Geometry says, and `sampling_grid`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xbench_core.geometry import (
    Geometry,
    letterbox_crop,
    resize,
    shortest_side_crop,
    squash,
)

sizes = st.tuples(st.integers(1, 3000), st.integers(1, 3000))
small_sizes = st.tuples(st.integers(8, 120), st.integers(8, 120))


def all_geometries(size: tuple[int, int]) -> list[Geometry]:
    return [
        Geometry.identity(size),
        Geometry.squash(size, (224, 224)),
        Geometry.squash(size, (512, 320)),
        Geometry.shortest_side_crop(size, 224, 224),
        Geometry.shortest_side_crop(size, 256, 224),
        Geometry.letterbox_crop(size, 256, 224),
        Geometry.letterbox_crop(size, 512, 480),
    ]


# ---- forward / inverse -------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(size=sizes, fy=st.floats(-0.5, 1.5), fx=st.floats(-0.5, 1.5))
def test_round_trips(size, fy, fx):
    h, w = size
    y, x = fy * h, fx * w
    for g in all_geometries(size):
        iy, ix = g.to_input(y, x)
        oy, ox = g.to_original(iy, ix)
        assert oy == pytest.approx(y, abs=1e-6 * max(h, 1)) and ox == pytest.approx(x, abs=1e-6 * max(w, 1))
        # and the other way round, from input coordinates
        ry, rx = g.to_input(*g.to_original(iy, ix))
        assert ry == pytest.approx(iy, abs=1e-6 * max(h, w)) and rx == pytest.approx(ix, abs=1e-6 * max(h, w))


@settings(max_examples=300, deadline=None)
@given(size=sizes)
def test_geometry_sizes_and_content_extent(size):
    h, w = size
    g = Geometry.identity(size)
    assert g.input_size == size and g.to_input(3.5, 2.25) == (3.5, 2.25)

    g = Geometry.squash(size, (224, 200))
    assert g.input_size == (224, 200)
    assert g.to_input(0, 0) == (0, 0)
    assert g.to_input(h, w) == pytest.approx((224, 200))

    g = Geometry.shortest_side_crop(size, 224, 224)
    assert g.input_size == (224, 224)
    # the resized image spans [offset, offset + resized size); the crop is centered in it
    bottom, right = g.to_input(h, w)
    top, left = g.to_input(0, 0)
    rh, rw = round(bottom - top), round(right - left)  # the resized image's size
    assert min(rh, rw) == 224
    assert -top == round((rh - 224) / 2) and -left == round((rw - 224) / 2)

    g = Geometry.letterbox_crop(size, 256, 224)
    assert g.input_size == (224, 224)
    top, left = g.to_input(0, 0)
    bottom, right = g.to_input(h, w)
    assert max(bottom - top, right - left) == pytest.approx(256)
    # centered in the 256 canvas, the canvas cropped by 16 on each side
    assert top + 16 == (256 - round(bottom - top)) // 2
    assert left + 16 == (256 - round(right - left)) // 2


# ---- hand-computed cases -----------------------------------------------------------------------
def test_shortest_side_crop_300x400_by_hand():
    g = Geometry.shortest_side_crop((300, 400), 224, 224)
    # short side 300 -> 224; long side int(224 * 400 / 300) = int(298.67) = 298
    assert g.scale == pytest.approx((224 / 300, 298 / 400))
    # crop 224 of 298: left = round(74 / 2) = 37, top 0
    assert g.offset == (0, -37)
    assert g.input_size == (224, 224)
    assert g.to_input(150, 200) == pytest.approx((112.0, 149.0 - 37))
    # portrait: the same along the other axis
    g = Geometry.shortest_side_crop((400, 300), 224, 224)
    assert g.scale == pytest.approx((298 / 400, 224 / 300)) and g.offset == (-37, 0)


def test_carzero_letterbox_by_hand():
    g = Geometry.letterbox_crop((1000, 600), 256, 224)
    # longest side 1000 -> 256, short side int(600 * 256 / 1000) = int(153.6) = 153
    assert g.scale == pytest.approx((256 / 1000, 153 / 600))
    # pad left floor((256 - 153) / 2) = 51, crop offset (256 - 224) / 2 = 16
    assert g.offset == (0 - 16, 51 - 16)
    assert g.input_size == (224, 224)
    # the original's corners land at the mapped canvas positions
    assert g.to_input(0, 0) == (-16, 35)
    assert g.to_input(1000, 600) == pytest.approx((240, 35 + 153))
    # landscape: pad on top
    g = Geometry.letterbox_crop((600, 1000), 256, 224)
    assert g.offset == (51 - 16, -16)


def test_squash_by_hand():
    g = Geometry.squash((1024, 768), (512, 512))
    assert g.scale == (0.5, 512 / 768) and g.offset == (0.0, 0.0)
    assert g.to_original(256, 256) == pytest.approx((512, 384))


def test_eval_size():
    g = Geometry.squash((1000, 600), (224, 224))
    assert g.eval_size(None) == (1000, 600)
    assert g.eval_size(2000) == (1000, 600)
    assert g.eval_size(500) == (500, 300)
    assert Geometry.identity((3, 999)).eval_size(10) == (1, 10)


# ---- torchvision -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size",
    [(300, 400), (400, 300), (224, 224), (225, 224), (224, 225), (1000, 1001), (7, 500), (500, 7),
     (2320, 2828), (1024, 1024), (333, 777), (301, 299)],
)
@pytest.mark.parametrize("resize_to, crop", [(224, 224), (256, 224), (224, 200), (200, 224), (97, 101)])
def test_shortest_side_crop_matches_torchvision(size, resize_to, crop):
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.functional")

    h, w = size
    resized = tvf.resize(torch.zeros(1, h, w), resize_to, antialias=False)
    rh, rw = resized.shape[-2:]
    g = Geometry.shortest_side_crop(size, resize_to, crop)
    assert g.scale == pytest.approx((rh / h, rw / w))
    # torchvision's crop offsets: crop an image that encodes its own coordinates (1-based, so
    # that padding, when the crop is larger than the image, shows as zeros)
    coords = torch.arange(rh)[:, None] * 100000 + torch.arange(rw)[None, :] + 1  # int64
    cropped = tvf.center_crop(coords[None], [crop, crop])[0]
    assert tuple(cropped.shape) == g.input_size == (crop, crop)
    # any cropped pixel (i, j) that holds resized pixel (r, c) gives the offset (i - r, j - c)
    i, j = (int(v) for v in torch.nonzero(cropped)[0])
    r, c = divmod(int(cropped[i, j].item()) - 1, 100000)
    assert (i - r, j - c) == (g.offset[0], g.offset[1])
    if h * w > 300_000:
        return  # the pixel comparison below on the smaller sizes only (time)
    # and the helper returns the same pixels as torchvision's crop of the same resized image
    img = np.random.default_rng(0).random((h, w)).astype(np.float32)
    out, geom = shortest_side_crop(img, resize_to, crop, method="nearest")
    assert geom == g and out.shape == (crop, crop)
    ours_resized = resize(img, (rh, rw), "nearest")
    theirs = tvf.center_crop(torch.from_numpy(ours_resized)[None], [crop, crop])[0].numpy()
    np.testing.assert_array_equal(out, theirs)


# ---- helpers place content where the geometry says --------------------------------------------
def _expected_nearest(img: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Each input pixel center mapped back: the original pixel there, or 0 outside the image;
    and where that center falls (within float error) on an original pixel edge, a tie."""
    hi, wi = g.input_size
    oy, ox = g.to_original(np.arange(hi) + 0.5, np.arange(wi) + 0.5)
    ry, rx = np.floor(oy).astype(int), np.floor(ox).astype(int)
    inside = (ry >= 0) & (ry < img.shape[0])
    inside_x = (rx >= 0) & (rx < img.shape[1])
    out = img[np.clip(ry, 0, img.shape[0] - 1)][:, np.clip(rx, 0, img.shape[1] - 1)]
    tie_y = np.abs(oy - np.round(oy)) < 1e-6
    tie_x = np.abs(ox - np.round(ox)) < 1e-6
    return np.where(inside[:, None] & inside_x[None, :], out, 0.0), tie_y[:, None] | tie_x[None, :]


@settings(max_examples=60, deadline=None)
@given(size=small_sizes, seed=st.integers(0, 1000))
def test_helpers_with_nearest_resampling_follow_the_geometry(size, seed):
    """With nearest-neighbour resizing every input pixel equals the original pixel its center maps
    back to (or the zero padding): the helpers and their geometries agree pixel by pixel."""
    img = np.random.default_rng(seed).random(size).astype(np.float32) + 0.5  # never 0
    cases = [
        squash(img, (40, 56), "nearest"),
        shortest_side_crop(img, 48, 40, "nearest"),
        shortest_side_crop(img, 40, 40, "nearest"),
        shortest_side_crop(img, 30, 40, "nearest"),  # crop larger than the resized image: pads
        letterbox_crop(img, 64, 56, "nearest"),
        letterbox_crop(img, 48, 48, "nearest"),
    ]
    for out, g in cases:
        assert out.shape == g.input_size and out.dtype == np.float32
        expect, tie = _expected_nearest(img, g)
        # a center exactly on an original pixel edge may round either way in Pillow's float
        # arithmetic; everywhere else the pixels are identical
        np.testing.assert_array_equal(out[~tie], expect[~tie], err_msg=str(g))


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "area"])
@pytest.mark.parametrize(
    "helper", ["squash", "shortest_side_crop", "letterbox_crop"]
)
@pytest.mark.parametrize("size", [(300, 400), (1000, 600), (600, 1000), (257, 256)])
def test_bright_block_lands_at_the_mapped_location(helper, size, method):
    h, w = size
    img = np.zeros(size, np.float32)
    # a bright block in the middle third (inside every crop)
    y0, y1, x0, x1 = h // 3, h // 3 + h // 8, w // 3 + w // 10, w // 3 + w // 10 + w // 8
    img[y0:y1, x0:x1] = 1.0
    if helper == "squash":
        out, g = squash(img, (224, 224), method)
    elif helper == "shortest_side_crop":
        out, g = shortest_side_crop(img, 224, 224, method)
    else:
        out, g = letterbox_crop(img, 256, 224, method)
    assert out.shape == g.input_size
    ys, xs = np.nonzero(out > 0.5)
    ty0, tx0 = g.to_input(y0, x0)
    ty1, tx1 = g.to_input(y1, x1)
    # the bright pixels' extent equals the mapped block within one pixel of resampling blur
    assert abs(ys.min() - ty0) <= 1.0 and abs(ys.max() + 1 - ty1) <= 1.0, (ys.min(), ys.max(), ty0, ty1)
    assert abs(xs.min() - tx0) <= 1.0 and abs(xs.max() + 1 - tx1) <= 1.0, (xs.min(), xs.max(), tx0, tx1)
    # the mapped block's center is bright
    assert out[int((ty0 + ty1) / 2), int((tx0 + tx1) / 2)] > 0.9


def test_letterbox_padding_is_zero_and_content_where_mapped():
    img = np.ones((1000, 600), np.float32)
    out, g = letterbox_crop(img, 256, 224)
    top, left = g.to_input(0, 0)
    bottom, right = g.to_input(1000, 600)
    assert (top, left, bottom, right) == pytest.approx((-16, 35, 240, 188))
    assert np.all(out[:, :35] == 0) and np.all(out[:, 188:] == 0)
    assert np.allclose(out[:, 35:188], 1.0)


def test_resize_identity_and_dtype():
    img = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    assert resize(img, (5, 6)) is img or np.array_equal(resize(img, (5, 6)), img)
    out = resize(img.astype(np.float64), (10, 12))
    assert out.dtype == np.float32 and out.shape == (10, 12) and out.flags.writeable


# ---- sampling grid -----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(size=sizes, cap=st.one_of(st.none(), st.integers(1, 600)))
def test_sampling_grid_is_to_input_of_eval_pixel_centers(size, cap):
    h, w = size
    for g in all_geometries(size):
        he, we = g.eval_size(cap)
        gy, gx = g.sampling_grid((he, we))
        assert gy.shape == (he,) and gx.shape == (we,)
        # eval pixel center (i + 0.5) in the eval frame is original (i + 0.5) * h / he
        iy, ix = g.to_input((np.arange(he) + 0.5) * h / he, (np.arange(we) + 0.5) * w / we)
        hi, wi = g.input_size
        np.testing.assert_allclose((gy + 1) * hi / 2, iy, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose((gx + 1) * wi / 2, ix, rtol=1e-9, atol=1e-9)
        if g.kind == "identity" and (he, we) == (h, w):
            # the identity at full resolution samples every input pixel at its center
            np.testing.assert_allclose((gy + 1) * h / 2 - 0.5, np.arange(h), atol=1e-9)


@pytest.mark.parametrize("size", [(300, 400), (1000, 600), (64, 64)])
def test_sampling_grid_with_grid_sample_reads_input_coordinates(size):
    torch = pytest.importorskip("torch")
    for g in all_geometries(size):
        hi, wi = g.input_size
        # an input-frame map whose value is the x coordinate of each pixel center
        xmap = (torch.arange(wi, dtype=torch.float64) + 0.5)[None, :].expand(hi, wi)
        ymap = (torch.arange(hi, dtype=torch.float64) + 0.5)[:, None].expand(hi, wi)
        he, we = g.eval_size(200)
        gy, gx = g.sampling_grid((he, we))
        grid = torch.stack(
            torch.meshgrid(torch.from_numpy(gx), torch.from_numpy(gy), indexing="xy"), dim=-1
        )[None]
        maps = torch.stack([xmap, ymap])[None]
        out = torch.nn.functional.grid_sample(maps, grid, mode="bilinear", align_corners=False)[0]
        iy, ix = g.to_input((np.arange(he) + 0.5) * size[0] / he, (np.arange(we) + 0.5) * size[1] / we)
        # where the sampling point lies between input pixel centers, bilinear reads it back exactly
        inner_x = (ix >= 0.5) & (ix <= wi - 0.5)
        inner_y = (iy >= 0.5) & (iy <= hi - 0.5)
        inner = np.ix_(inner_y, inner_x)
        xs, ys = out[0].numpy()[inner], out[1].numpy()[inner]
        np.testing.assert_allclose(xs, np.broadcast_to(ix[inner_x], xs.shape), atol=1e-9)
        np.testing.assert_allclose(ys, np.broadcast_to(iy[inner_y, None], ys.shape), atol=1e-9)
        assert inner_x.sum() > we // 3 and inner_y.sum() > he // 3
        # points the input never covered are outside [-1, 1]
        assert np.all((np.abs(gx) > 1) == ((ix < 0) | (ix > wi)))


def test_geometry_is_hashable_and_frozen():
    g = Geometry.letterbox_crop((100, 50), 256, 224)
    assert g == Geometry.letterbox_crop((100, 50), 256, 224)
    assert hash(g) == hash(Geometry.letterbox_crop((100, 50), 256, 224))
    with pytest.raises(AttributeError):
        g.scale = (1.0, 1.0)  # type: ignore[misc]
    assert not math.isnan(g.scale[0])


def _naive_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each output pixel = the overlap-weighted mean of the input pixels its footprint covers."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        step = n_in / n_out
        for o in range(n_out):
            lo, hi = o * step, (o + 1) * step
            for i in range(n_in):
                m[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
        return m / m.sum(1, keepdims=True)

    return weights(image.shape[0], size[0]) @ image @ weights(image.shape[1], size[1]).T


@pytest.mark.parametrize("shape,size", [((37, 23), (16, 10)), ((5, 7), (11, 13)), ((40, 40), (40, 17))])
def test_area_resize_is_exact_area_averaging(shape: tuple[int, int], size: tuple[int, int]) -> None:
    from xbench_core.geometry import resize as area_resize

    image = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_allclose(area_resize(image, size, "area"), _naive_area(image.astype(np.float64), size), atol=1e-6)


def _prefix_sum_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The area resize as it was computed before issue 22 (integral from float64 prefix sums)."""

    def axis_pass(a: np.ndarray, m: int, axis: int) -> np.ndarray:
        n = a.shape[axis]
        if n == m:
            return a
        moved = np.moveaxis(a, axis, 0)
        prefix = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0, dtype=np.float64)])
        edges = np.arange(m + 1, dtype=np.float64) * (n / m)
        edges[-1] = n
        whole = np.minimum(np.floor(edges).astype(np.int64), n - 1)
        part = (edges - whole).reshape(-1, *([1] * (moved.ndim - 1)))
        integral = prefix[whole] + part * moved[whole]
        return np.moveaxis((integral[1:] - integral[:-1]) / (n / m), 0, axis)

    return axis_pass(axis_pass(image.astype(np.float64), size[0], 0), size[1], 1).astype(np.float32)


@pytest.mark.parametrize(
    "shape,size",
    [((3000, 2500), (256, 213)), ((2828, 2320), (256, 209)), ((1024, 1024), (256, 256)), ((3, 1000), (1, 256)),
     ((100, 37), (256, 94)), ((7, 5), (3, 2))],
)
def test_area_resize_equals_the_prefix_sum_integral(shape: tuple[int, int], size: tuple[int, int]) -> None:
    # CARZero resizes 8-bit levels (integers in float32) and rounds the result: identical floats,
    # so identical levels; on [0, 1] floats equal to float32 rounding
    rng = np.random.default_rng(1)
    levels = np.round(rng.random(shape, dtype=np.float32) * 255)
    assert np.array_equal(resize(levels, size, "area"), _prefix_sum_area(levels, size))
    unit = rng.random(shape, dtype=np.float32)
    np.testing.assert_allclose(resize(unit, size, "area"), _prefix_sum_area(unit, size), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,size", [((3000, 2500), (256, 213)), ((997, 1301), (128, 167)), ((40, 40), (40, 17))])
def test_area_resize_matches_opencv_inter_area(shape: tuple[int, int], size: tuple[int, int]) -> None:
    # the official CARZero pipeline resizes with cv2.INTER_AREA (a downscale: area averaging)
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(2).random(shape, dtype=np.float32)
    official = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(resize(image, size, "area"), official, rtol=0, atol=2e-6)


def test_area_resize_of_8_bit_levels_matches_the_official_uint8_resize() -> None:
    # CARZero's `_resize_img`: cv2.resize of the 8-bit image with INTER_AREA, uint8 out (rounded);
    # CARZero's preprocess resizes the same levels in float and rounds them
    cv2 = pytest.importorskip("cv2")
    u8 = np.random.default_rng(3).integers(0, 256, (3000, 2500), dtype=np.uint8)
    official = cv2.resize(u8, (213, 256), interpolation=cv2.INTER_AREA)
    assert np.array_equal(np.round(resize(u8.astype(np.float32), (256, 213), "area")), official)
