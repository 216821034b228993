"""Image decoding: DICOM, PNG and JPEG to a float32 H x W array in [0, 1] at original resolution.

DICOM: modality LUT (rescale slope and intercept), then the VOI LUT or window when the file has one,
then MONOCHROME1 inverted, then scaled to [0, 1] by the stored bit range (or the window). Compressed
transfer syntaxes decode through pydicom's pixel handlers (Pillow, pylibjpeg). PNG and JPEG of 8 or
16 bits; colour and alpha channels are folded to gray.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ImageReadError

if TYPE_CHECKING:
    from pydicom import Dataset

DICOM_SUFFIXES = {".dcm", ".dicom", ""}


def read_image(path: str | Path, *, dataset: str | None = None, voi_lut: bool = True) -> np.ndarray:
    """Decode any supported image file; errors name the file and the dataset."""
    path = Path(path)
    try:
        if not path.exists():
            raise FileNotFoundError("file does not exist")
        if is_dicom(path):
            return read_dicom(path, voi_lut=voi_lut)
        return read_bitmap(path)
    except ImageReadError:
        raise
    except Exception as exc:
        where = f" of dataset {dataset!r}" if dataset else ""
        raise ImageReadError(
            f"cannot decode image {path}{where}: {type(exc).__name__}: {exc}. "
            "Check that the file is complete (re-download it) and in a supported format "
            "(DICOM, PNG, JPEG)."
        ) from exc


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def read_dicom(path: Path, *, voi_lut: bool = True) -> np.ndarray:
    """Decode a DICOM to [0, 1] float32, display-ready (LUTs applied, MONOCHROME1 inverted)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path), force=True)
    if "PixelData" not in ds:
        raise ValueError("the DICOM has no pixel data")
    raw = ds.pixel_array
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and ds.get("SamplesPerPixel", 1) > 1:
        raw = raw[..., :3].mean(axis=-1)
    elif raw.ndim == 3:  # multi-frame: the first frame
        raw = raw[0]
    voi_range = _voi_output_range(ds) if voi_lut else None
    if voi_range is None and (exact := _exact_float32(raw, ds)) is not None:
        lo, hi = _value_range(ds, exact)
        if all(float(np.float32(v)) == v for v in (lo, hi, hi - lo)):
            return _scale_float32(exact, lo, hi, ds)
    modality = apply_modality_lut(raw, ds)
    arr = modality.astype(np.float64)
    if voi_range is not None:
        if ds.get("VOILUTSequence") and not np.issubdtype(modality.dtype, np.integer):
            # a VOI LUT is indexed by integer values (pydicom warns on, and truncates, floats)
            modality = np.rint(modality).astype(np.int64)
        arr = apply_voi_lut(modality, ds).astype(np.float64)
        lo, hi = voi_range
    else:
        lo, hi = _value_range(ds, arr)
    arr = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def _exact_float32(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The modality values (after the modality LUT or rescale) in an array float32 holds exactly:
    the 8- or 16-bit integers themselves, or float32 after an integral rescale (|values| < 2**24).
    None otherwise (fractional slopes, colour, 32-bit data): those go through float64."""
    from pydicom.pixels import apply_modality_lut

    if raw.dtype.kind not in "iu" or raw.dtype.itemsize > 2:
        return None
    if ds.get("ModalityLUTSequence"):
        modality = apply_modality_lut(raw, ds)  # integer LUT entries
        return modality if modality.dtype.kind in "iu" and modality.dtype.itemsize <= 2 else None
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return raw
    try:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    except (TypeError, ValueError):
        return None
    if not (slope.is_integer() and intercept.is_integer()) or 65535 * abs(slope) + abs(intercept) >= 2**24:
        return None
    arr = raw.astype(np.float32)
    if slope != 1:
        arr *= np.float32(slope)
    if intercept != 0:
        arr += np.float32(intercept)
    return arr


def _scale_float32(values: np.ndarray, lo: float, hi: float, ds: Dataset) -> np.ndarray:
    """`read_dicom`'s scaling to [0, 1] without a VOI transform, in float32, for values and ends
    float32 holds exactly: the differences from the ends are exact and one correctly rounded float32
    division equals the float64 result rounded (tests/test_images.py compares them bit for bit).
    The values lie in [lo, hi] (`_value_range`), so the quotients lie in [0, 1]: no clipping."""
    inverted = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1"
    if not hi > lo:
        return np.full(values.shape, 1.0 if inverted else 0.0, np.float32)
    out = values.astype(np.float32, copy=False)  # new unless rescaled (the cost: touching its pages)
    if inverted:  # 1 - (v - lo) / (hi - lo)
        np.subtract(np.float32(hi), out, out=out)
    elif lo != 0:
        out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return out


def _voi_output_range(ds: Dataset) -> tuple[float, float] | None:
    """The output range of the VOI transform pydicom's `apply_voi_lut` applies (None: none).

    A window maps to its full output range (so an image whose values all lie inside the window
    keeps the window's scale instead of being stretched to black and white); a VOI LUT maps to
    the range of its entries.
    """
    from pydicom.pixels import apply_windowing

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        data = seq[0].LUTData
        if isinstance(data, bytes):  # VR OW: 16-bit little-endian words
            entries = np.frombuffer(data, dtype="<u2").astype(np.float64)
        else:
            entries = np.asarray(data, dtype=np.float64).reshape(-1)
        # the entries' own range, not the descriptor's nominal depth: some files declare 16 bits
        # for 12-bit entries, which would make the image nearly black
        return float(entries.min()), float(entries.max())
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    # the window's (y_min, y_max), computed by pydicom itself on values far below and above it
    ends = apply_windowing(np.array([-np.inf, np.inf]), ds)
    return float(min(ends)), float(max(ends))


def _value_range(ds: Dataset, arr: np.ndarray) -> tuple[float, float]:
    # Without a window: the stored bit depth (so that an image keeps its real contrast),
    # falling back to the data range.
    bits = int(getattr(ds, "BitsStored", 0) or 0)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if bits and int(getattr(ds, "PixelRepresentation", 0)) == 0:
        lo = intercept
        hi = (2**bits - 1) * slope + intercept
        if arr.min() >= min(lo, hi) and arr.max() <= max(lo, hi):
            return min(lo, hi), max(lo, hi)
    return float(arr.min()), float(arr.max())


def read_bitmap(path: Path) -> np.ndarray:
    """Decode PNG or JPEG (8 or 16 bit, gray, RGB or with alpha) to [0, 1] float32 gray."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            return np.clip(arr / top, 0, 1).astype(np.float32)
        if mode == "F":
            arr = np.asarray(img, dtype=np.float32)
            return np.clip(arr, 0, 1)
        if mode not in ("L", "RGB", "RGBA", "LA", "P", "1", "CMYK", "YCbCr"):
            img = img.convert("RGB")
        if mode in ("L", "1"):
            arr = np.asarray(img.convert("L"), dtype=np.float32)
        else:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
            arr = rgb.mean(axis=-1)
        return arr / 255.0
