"""`read_image`: DICOM (bit depths, signed pixels, modality LUT, window, MONOCHROME1, multi-frame,
a real JPEG Baseline file), PNG (8 and 16 bit, colour, alpha), JPEG, and the errors of bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from xbench_core.errors import ImageReadError
from xbench_core.io.images import read_image
from xbench_core.testing import realdata, write_dicom


# ---- writers -----------------------------------------------------------------------------------
def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit grayscale PNG written byte by byte (no Pillow), to test the reader independently."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)  # bit depth 16, colour type 0 (gray)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def ramp(h: int, w: int, top: int, seed: int = 0) -> np.ndarray:
    """Values covering 0 .. top (both ends present) in random order."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, top + 1, size=(h, w))
    v.flat[0], v.flat[1] = 0, top
    return v


# ---- DICOM -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bits_allocated, bits_stored", [(8, 8), (16, 12), (16, 16), (16, 10)]
)
def test_dicom_unsigned_scaled_by_stored_bit_range(tmp_path, bits_allocated, bits_stored):
    top = 2**bits_stored - 1
    stored = ramp(20, 30, top)
    # a dark image too: the scale is the bit depth, not the data range
    dark = (stored // 4).astype(np.int64)
    p = write_dicom(tmp_path / "a.dcm", stored, bits_allocated=bits_allocated, bits_stored=bits_stored)
    q = write_dicom(tmp_path / "b.dcm", dark, bits_allocated=bits_allocated, bits_stored=bits_stored)
    a, b = read_image(p), read_image(q)
    assert a.dtype == np.float32 and a.shape == (20, 30)
    np.testing.assert_allclose(a, stored / top, atol=1e-6)
    np.testing.assert_allclose(b, dark / top, atol=1e-6)
    assert b.max() < 0.26


def test_dicom_12_bit_values_above_255_are_kept(tmp_path):
    stored = np.array([[0, 255, 256, 4095], [1000, 2000, 3000, 4000]])
    p = write_dicom(tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12)
    np.testing.assert_allclose(read_image(p), stored / 4095, atol=1e-6)


def test_dicom_unsigned_with_rescale_slope_and_intercept(tmp_path):
    stored = ramp(8, 9, 4095, seed=1)
    p = write_dicom(
        tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12,
        RescaleSlope=2, RescaleIntercept=-100,
    )
    # modality values span [-100, 8090]: the stored range under the same linear map
    np.testing.assert_allclose(read_image(p), stored / 4095, atol=1e-6)


def test_dicom_signed_pixels_with_modality_lut(tmp_path):
    rng = np.random.default_rng(2)
    stored = rng.integers(-2000, 2000, size=(16, 16))
    stored[0, 0], stored[0, 1] = -2048, 2047
    p = write_dicom(
        tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12, signed=True,
        RescaleSlope=0.5, RescaleIntercept=-1024,
    )
    out = read_image(p).astype(np.float64)
    modality = stored * 0.5 - 1024
    # the signed values are decoded with their sign: the output is an increasing affine function
    # of the modality values (a sign bug would wrap -1 to 4095 and break the order)
    A = np.stack([modality.ravel(), np.ones(modality.size)], axis=1)
    (gain, bias), *_ = np.linalg.lstsq(A, out.ravel(), rcond=None)
    assert gain > 0
    np.testing.assert_allclose(out.ravel(), A @ [gain, bias], atol=1e-6)
    assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 0] == out.min() and out[0, 1] == out.max()


def test_dicom_window_center_width(tmp_path):
    stored = np.array([[0, 500, 999, 1000, 1500], [2000, 2001, 2500, 3000, 4095]])
    p = write_dicom(
        tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12,
        WindowCenter=1500, WindowWidth=1001,
    )
    # DICOM LINEAR window (PS3.3 C.11.2.1.2.1): c' = c - 0.5, w' = w - 1, values at or below
    # c' - w'/2 = 999.5 are black, above c' + w'/2 = 1999.5 white, linear in between
    expect = np.clip((stored - 999.5) / 1000, 0, 1)
    np.testing.assert_allclose(read_image(p), expect, atol=1e-6)
    # voi_lut=False ignores the window: the stored bit range
    np.testing.assert_allclose(read_image(p, voi_lut=False), stored / 4095, atol=1e-6)


def test_dicom_window_is_not_stretched_to_the_data(tmp_path):
    # every value lies inside the window: the display keeps the window's scale, it does not
    # min-max stretch the data to black and white
    stored = np.array([[1200, 1400], [1600, 1800]])
    p = write_dicom(
        tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=12,
        WindowCenter=1500, WindowWidth=1001,
    )
    np.testing.assert_allclose(read_image(p), (stored - 999.5) / 1000, atol=1e-6)


def test_dicom_window_with_signed_rescaled_values(tmp_path):
    stored = np.array([[-1000, -200, 0], [40, 200, 1000]])
    p = write_dicom(
        tmp_path / "a.dcm", stored, bits_allocated=16, bits_stored=16, signed=True,
        RescaleSlope=1, RescaleIntercept=-24, WindowCenter=40, WindowWidth=401,
    )
    hu = stored - 24.0
    expect = np.clip((hu - (39.5 - 200)) / 400, 0, 1)
    np.testing.assert_allclose(read_image(p), expect, atol=1e-6)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_dicom_voi_lut_sequence(tmp_path, vr):
    from pydicom.dataset import Dataset

    stored = ramp(6, 7, 255, seed=6)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    # 12-bit entries under a 16-bit descriptor (a common quirk): an inverting ramp 4095 .. 15
    entries = [4095 - 16 * i for i in range(256)]
    value = entries if vr == "US" else np.asarray(entries, "<u2").tobytes()
    item.add_new(0x00283006, vr, value)  # LUT Data: VR US or OW
    p = write_dicom(
        tmp_path / "a.dcm", stored, bits_allocated=8, bits_stored=8, VOILUTSequence=[item]
    )
    out = read_image(p)
    np.testing.assert_allclose(out, (4095 - 16 * stored - 15) / (4095 - 15), atol=1e-6)
    np.testing.assert_allclose(read_image(p, voi_lut=False), stored / 255, atol=1e-6)


@pytest.mark.parametrize("window", [False, True])
def test_dicom_monochrome1_is_inverted(tmp_path, window):
    stored = ramp(12, 10, 4095, seed=3)
    extra = {"WindowCenter": 2048, "WindowWidth": 2000} if window else {}
    m2 = write_dicom(tmp_path / "m2.dcm", stored, bits_allocated=16, bits_stored=12, **extra)
    m1 = write_dicom(
        tmp_path / "m1.dcm", stored, bits_allocated=16, bits_stored=12,
        photometric="MONOCHROME1", **extra,
    )
    a, b = read_image(m2), read_image(m1)
    assert a.std() > 0.1
    np.testing.assert_allclose(b, 1.0 - a, atol=1e-6)


def test_dicom_multi_frame_reads_the_first_frame(tmp_path):
    frames = np.stack([ramp(6, 7, 255, seed=s) for s in range(3)])
    p = write_dicom(tmp_path / "mf.dcm", frames, bits_allocated=8, bits_stored=8)
    out = read_image(p)
    assert out.shape == (6, 7)
    np.testing.assert_allclose(out, frames[0] / 255, atol=1e-6)


def test_dicom_without_suffix_is_recognized(tmp_path):
    stored = ramp(4, 5, 255)
    p = write_dicom(tmp_path / "a.dcm", stored, bits_allocated=8, bits_stored=8)
    q = tmp_path / "1.2.3.4"  # SOP instance UID as the file name: the suffix is ".4"
    q2 = tmp_path / "noext"
    q.write_bytes(p.read_bytes())
    q2.write_bytes(p.read_bytes())
    np.testing.assert_allclose(read_image(q2), stored / 255, atol=1e-6)
    np.testing.assert_allclose(read_image(q), stored / 255, atol=1e-6)


def test_real_siim_jpeg_baseline_dicom():
    path = realdata("siim", "siim_test.dcm")  # read in place, never copied
    img = read_image(path, dataset="siim-acr")
    assert img.shape == (1024, 1024) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # a chest radiograph: real contrast, not constant, not saturated
    assert img.std() > 0.1
    assert img.max() - img.min() > 0.7
    assert 0.2 < img.mean() < 0.8
    # 8-bit source: every value is a multiple of 1/255
    np.testing.assert_allclose(img * 255, np.round(img * 255), atol=1e-3)
    # rows differ (decoded, not a constant fill)
    assert len(np.unique(img)) > 100


def _float64_decode(path: Path) -> np.ndarray:
    """`read_dicom` as it was before issue 22 (no VOI transform): everything in float64."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from xbench_core.io.images import _value_range

    ds = pydicom.dcmread(str(path))
    raw = ds.pixel_array
    arr = apply_modality_lut(raw[0] if raw.ndim == 3 else raw, ds).astype(np.float64)
    lo, hi = _value_range(ds, arr)
    arr = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize(
    "bits_allocated, bits_stored, signed, rescale",
    [(8, 8, False, {}), (16, 12, False, {}), (16, 16, False, {}), (16, 10, False, {}),
     (16, 12, False, {"RescaleSlope": 1, "RescaleIntercept": -1024}),
     (16, 12, False, {"RescaleSlope": 3, "RescaleIntercept": 7}),
     (16, 16, True, {}), (16, 12, True, {"RescaleSlope": 1, "RescaleIntercept": 0}),
     (16, 12, False, {"RescaleSlope": 0.5, "RescaleIntercept": -1024})],  # fractional: the float64 path
)
def test_dicom_float32_decode_equals_the_float64_decode(tmp_path, photometric, bits_allocated, bits_stored, signed,
                                                          rescale):
    # every stored value of the depth (all 65,536 for 16 bits), bit for bit as the float64 path
    top = 2**bits_stored
    values = np.arange(-top // 2, top // 2) if signed else np.arange(top)
    rows = max(1, values.size // 256)
    pixels = np.resize(np.random.default_rng(0).permutation(values), (rows, values.size // rows))
    p = write_dicom(tmp_path / "a.dcm", pixels, bits_allocated=bits_allocated, bits_stored=bits_stored,
                    signed=signed, photometric=photometric, **rescale)
    dark = write_dicom(tmp_path / "b.dcm", pixels // 3, bits_allocated=bits_allocated, bits_stored=bits_stored,
                       signed=signed, photometric=photometric, **rescale)  # signed: the data range
    flat = write_dicom(tmp_path / "c.dcm", np.full((4, 5), 7), bits_allocated=bits_allocated,
                       bits_stored=bits_stored, signed=signed, photometric=photometric)
    import pydicom

    from xbench_core.io.images import _exact_float32

    ds = pydicom.dcmread(str(p))
    fractional = rescale.get("RescaleSlope", 1) % 1 != 0
    assert (_exact_float32(ds.pixel_array, ds) is None) == fractional  # the float32 path is taken
    for path in (p, dark, flat):
        img = read_image(path)
        assert img.dtype == np.float32
        assert np.array_equal(img, _float64_decode(path))


def test_real_dicom_float32_decode_equals_the_float64_decode():
    path = realdata("siim", "siim_test.dcm")
    assert np.array_equal(read_image(path), _float64_decode(path))


# ---- PNG and JPEG ------------------------------------------------------------------------------
def test_png_8_bit_gray(tmp_path):
    from PIL import Image

    v = ramp(9, 11, 255).astype(np.uint8)
    Image.fromarray(v, mode="L").save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), v / 255, atol=1e-6)


def test_png_16_bit_keeps_values_above_255(tmp_path):
    from PIL import Image

    v = ramp(9, 11, 65535).astype(np.uint16)
    v[1, :4] = [256, 257, 1000, 300]
    path = tmp_path / "a.png"
    Image.fromarray(v).save(path)
    data = path.read_bytes()
    assert data[24] == 16, "Pillow wrote an 8-bit PNG: the 16-bit path is not tested"
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = read_image(path)
    np.testing.assert_allclose(out, v / 65535, atol=1e-7)
    # neighbouring 16-bit values stay distinct (no truncation to 8 bits)
    assert out[1, 0] < out[1, 1] < out[1, 3] < out[1, 2]


@pytest.mark.parametrize("top", [65535, 200])
def test_png_16_bit_written_without_pillow(tmp_path, top):
    # a dark 16-bit image (every value <= 255) is still scaled by 65535, not by 255
    v = ramp(7, 5, top, seed=4)
    path = write_png16(tmp_path / "a.png", v)
    np.testing.assert_allclose(read_image(path), v / 65535, atol=1e-7)


def test_png_rgb_and_rgba_fold_to_gray(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(6, 8, 1), dtype=np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    gray = rgb.astype(np.float64).mean(axis=-1) / 255
    for name in ("rgb.png", "rgba.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (6, 8) and out.dtype == np.float32
        np.testing.assert_allclose(out, gray, atol=1e-6)
    # a gray image stored as RGB reads as that gray exactly
    g = rng.integers(0, 256, size=(6, 8), dtype=np.uint8)
    Image.fromarray(np.repeat(g[..., None], 3, axis=-1), mode="RGB").save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png"), g / 255, atol=1e-6)


def test_png_gray_with_alpha_and_palette(tmp_path):
    from PIL import Image

    g = ramp(5, 6, 255).astype(np.uint8)
    Image.fromarray(g, mode="L").convert("LA").save(tmp_path / "la.png")
    Image.fromarray(g, mode="L").convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), g / 255, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), g / 255, atol=1e-6)


def test_jpeg(tmp_path):
    from PIL import Image

    yy, xx = np.mgrid[0:64, 0:80]
    g = (xx * 3).astype(np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(np.repeat(g[..., None], 3, -1), mode="RGB").save(tmp_path / "c.jpeg", quality=95)
    for name in ("a.jpg", "c.jpeg"):
        out = read_image(tmp_path / name)
        assert out.shape == (64, 80) and out.dtype == np.float32
        assert np.abs(out - g / 255).max() < 0.03  # lossy, but close


# ---- errors ------------------------------------------------------------------------------------
def _assert_error(path: Path, dataset: str = "my-dataset") -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path, dataset=dataset)
    message = str(info.value)
    assert str(path) in message and repr(dataset) in message
    return message


def test_truncated_dicom_raises(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", ramp(64, 64, 4095), bits_allocated=16, bits_stored=12)
    data = p.read_bytes()
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(data[: len(data) - 2000])
    _assert_error(bad)


def test_truncated_png_raises(tmp_path):
    from PIL import Image

    p = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128), np.uint8)).save(p)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _assert_error(bad)


def test_missing_file_raises(tmp_path):
    message = _assert_error(tmp_path / "nowhere" / "missing.png", dataset="siim-acr")
    assert "does not exist" in message


def test_garbage_file_raises(tmp_path):
    bad = tmp_path / "noise.dcm"
    bad.write_bytes(b"not a dicom at all" * 10)
    _assert_error(bad)
