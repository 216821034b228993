"""Ground-truth regions in their source form, rasterized on demand to a boolean mask of any frame.

Edge convention (everywhere in XBench): coordinates are continuous pixel coordinates in the original
image, pixel (row i, column j) covering [j, j + 1) x [i, i + 1). A box [x1, y1, x2, y2] is half-open
and covers every pixel it overlaps: columns floor(x1) .. ceil(x2) - 1, rows floor(y1) .. ceil(y2) - 1,
clipped to the image; a box of zero width or height still covers the one pixel it touches. In a
smaller (or larger) eval frame the coordinates are scaled first and the same rule applies. Datasets
whose official evaluator treats x2, y2 as inclusive (ChestX-Det10) add 1 when they read the file.

Polygons are filled with Pillow's `ImageDraw.polygon(outline=1, fill=1)` at the frame's scale, as
cheXlocalize does. Masks and run-length encodings are decoded at their own size and resampled to
the frame by nearest neighbour (pixel centers). The region is the union of all its parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Size = tuple[int, int]


@dataclass(frozen=True)
class Region:
    """The ground truth of one finding on one image, as the union of its source parts.

    `size` is the (height, width) of the original image the coordinates refer to.
    `boxes`: N x 4 float [x1, y1, x2, y2]; `polygons`: arrays of K x 2 (x, y) vertices;
    `masks`: boolean arrays (any size, resampled); `coco_rles`: `{"size": [h, w], "counts": str}`;
    `relative_rles`: SIIM-style relative column-major run lengths, as text, at `size`.
    `instances` counts the annotated instances (boxes, polygons, rows), for reports.
    """

    size: Size
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))
    polygons: tuple[np.ndarray, ...] = ()
    masks: tuple[np.ndarray, ...] = ()
    coco_rles: tuple[dict, ...] = ()
    relative_rles: tuple[str, ...] = ()

    @property
    def instances(self) -> int:
        return (
            len(self.boxes)
            + len(self.polygons)
            + len(self.masks)
            + len(self.coco_rles)
            + len(self.relative_rles)
        )

    @staticmethod
    def from_boxes(size: Size, boxes: Sequence[Sequence[float]]) -> Region:
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return Region(tuple(size), boxes=arr)  # type: ignore[arg-type]

    def union(self, other: Region) -> Region:
        """Both regions' parts together (same original size)."""
        if tuple(self.size) != tuple(other.size):
            raise ValueError(f"cannot merge regions of sizes {self.size} and {other.size}")
        return Region(
            self.size,
            boxes=np.concatenate([self.boxes, other.boxes]),
            polygons=self.polygons + other.polygons,
            masks=self.masks + other.masks,
            coco_rles=self.coco_rles + other.coco_rles,
            relative_rles=self.relative_rles + other.relative_rles,
        )

    def resized(self, size: Size) -> Region:
        """The same region on the image resized to `size` (H, W), e.g. a downsampled copy of a
        dataset whose labels are on the original grid.

        Boxes and polygons are scaled; masks and COCO RLEs keep their own size (they are resampled
        when rasterized); SIIM relative RLEs, which are read at the region's size, become masks.
        """
        size = (int(size[0]), int(size[1]))
        sy, sx = size[0] / self.size[0], size[1] / self.size[1]
        H, W = self.size
        return Region(
            size,
            boxes=np.asarray(self.boxes, dtype=np.float64) * np.array([sx, sy, sx, sy]),
            polygons=tuple(np.asarray(p, dtype=np.float64) * (sx, sy) for p in self.polygons),
            masks=self.masks + tuple(decode_relative_rle(t, H, W) for t in self.relative_rles),
            coco_rles=self.coco_rles,
        )

    def rasterize(self, frame: Size | None = None) -> np.ndarray:
        """A boolean mask of the region in `frame` (default: the original size)."""
        h, w = frame if frame is not None else self.size
        H, W = self.size
        sy, sx = h / H, w / W
        out = np.zeros((h, w), dtype=bool)
        for x1, y1, x2, y2 in self.boxes:
            # the pixels the box overlaps (at least the one it touches), then clipped: a box
            # entirely outside the image covers nothing
            c0, r0 = int(math.floor(x1 * sx)), int(math.floor(y1 * sy))
            c1 = max(int(math.ceil(x2 * sx)), c0 + 1)
            r1 = max(int(math.ceil(y2 * sy)), r0 + 1)
            c0, c1 = min(max(c0, 0), w), min(max(c1, 0), w)
            r0, r1 = min(max(r0, 0), h), min(max(r1, 0), h)
            out[r0:r1, c0:c1] = True
        if self.polygons:
            from PIL import Image, ImageDraw

            img = Image.new("1", (w, h))
            draw = ImageDraw.Draw(img)
            for poly in self.polygons:
                pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2) * (sx, sy)
                if len(pts) >= 2:
                    draw.polygon([tuple(p) for p in pts.tolist()], outline=1, fill=1)
            out |= np.asarray(img, dtype=bool)
        for mask in self.masks:
            out |= resample_mask(np.asarray(mask, dtype=bool), (h, w))
        for rle in self.coco_rles:
            out |= resample_mask(decode_coco_rle(rle), (h, w))
        for text in self.relative_rles:
            out |= resample_mask(decode_relative_rle(text, H, W), (h, w))
        return out


def resample_mask(mask: np.ndarray, frame: Size) -> np.ndarray:
    """Nearest-neighbour resampling of a boolean mask at the pixel centers of `frame`."""
    H, W = mask.shape
    h, w = frame
    if (H, W) == (h, w):
        return mask
    rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
    return mask[np.ix_(rows, cols)]


def _coco_runs(counts: str | bytes | Sequence[int]) -> np.ndarray:
    """The run lengths (int64) of a COCO RLE's `counts`: a list, or cocoapi's compressed text.

    The text form is cocoapi's (`maskApi.c`, `rleFrString`): each count is written in 5-bit groups,
    least significant first, as characters offset by 48; bit 0x20 means "more groups follow" and
    bit 0x10 of a count's last group is its sign; from the fourth count on, the value is the
    difference to the count two places before. Decoded with numpy, without a loop per character.
    """
    if not isinstance(counts, (str, bytes, bytearray)):
        return np.asarray(list(counts), dtype=np.int64).reshape(-1)
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    chars = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, np.int64)
    bad = np.flatnonzero((chars < 0) | (chars > 63))
    if bad.size:
        raise ValueError(
            f"character {chr(data[bad[0]])!r} at position {int(bad[0])} cannot occur in a COCO RLE"
        )
    last = (chars & 0x20) == 0  # the last group of a count
    if not last[-1]:
        raise ValueError("truncated COCO RLE string: it ends inside a count")
    starts = np.concatenate([[0], np.flatnonzero(last[:-1]) + 1])
    length = np.diff(np.concatenate([starts, [chars.size]]))
    if length.max() > 12:  # 60 bits: more is not a count of any image
        raise ValueError("COCO RLE count too long (more than 12 characters)")
    position = np.arange(chars.size) - np.repeat(starts, length)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * length[negative])
    # counts[m] = delta[m] + counts[m - 2] for m > 2: a running sum over odd and even positions
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def coco_counts_from_string(text: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (cocoapi's LEB128-like text form)."""
    return _coco_runs(text if isinstance(text, (str, bytes)) else bytes(text)).tolist()


def _checked_runs(rle: dict) -> tuple[np.ndarray, int, int]:
    h, w = (int(v) for v in rle["size"])
    runs = _coco_runs(rle["counts"])
    if runs.size and runs.min() < 0:
        raise ValueError(f"COCO RLE has a negative run length ({int(runs.min())})")
    total = int(runs.sum())
    if total != h * w:
        raise ValueError(f"COCO RLE runs add up to {total} pixels, not {h} x {w} = {h * w}")
    return runs, h, w


def coco_rle_area(rle: dict) -> int:
    """The number of foreground pixels of a COCO RLE (`{"size": [h, w], "counts": ...}`), from its
    run lengths, without building the mask (e.g. to tell an all-zero mask from a lesion).

    Raises ValueError when the counts are malformed, negative or do not add up to h x w.
    """
    runs, _, _ = _checked_runs(rle)
    return int(runs[1::2].sum())


def decode_coco_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (`{"size": [h, w], "counts": str | list}`) to a boolean (h, w) mask."""
    runs, h, w = _checked_runs(rle)
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T  # column-major, as cocoapi stores it


def encode_coco_rle(mask: np.ndarray) -> dict:
    """Encode a boolean mask as an uncompressed COCO RLE (`counts` a list), for tests and tools."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def decode_relative_rle(text: str, height: int, width: int) -> np.ndarray:
    """Decode SIIM-ACR relative run lengths (column-major; `-1` is empty) to a (height, width) mask.

    The format of the competition's `train-rle.csv` (`mask_functions.py`, `rle2mask`): pairs of
    (gap since the end of the previous run, run length); the first gap counts from pixel 0; pixels
    are numbered column-major (flat index = x * height + y). Only that format is accepted: other
    encodings (Kaggle's absolute 1-based start, length pairs) must be converted by the dataset
    that reads them. Raises ValueError, saying what is wrong, when the text is not integers, has an
    odd number of values or a negative one, or runs past the image.
    """
    text = text.strip()
    flat = np.zeros(height * width, dtype=bool)
    if text in ("-1", ""):
        return flat.reshape(width, height).T
    tokens = text.split()
    try:
        values = np.asarray(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise ValueError(
            f"SIIM RLE value {bad!r} is not an integer: the text must be -1 or pairs of "
            "non-negative integers (gap, run length)"
        ) from None
    if values.size % 2:
        raise ValueError(
            f"SIIM RLE has an odd number of values ({values.size}): runs are (gap, length) pairs"
        )
    if values.min() < 0:
        # a negative gap would silently step back, a negative length cover nothing
        raise ValueError(
            f"SIIM RLE has a negative value ({int(values.min())}): gaps and lengths are >= 0 "
            "(-1 alone means an empty mask)"
        )
    ends = np.cumsum(values)[1::2]  # one past the last pixel of each run
    if ends[-1] > flat.size:
        raise ValueError(
            f"SIIM RLE runs end at pixel {int(ends[-1])}, beyond the {height}x{width} image "
            f"({flat.size} pixels); is it an absolute (start, length) encoding, or for another "
            "image size?"
        )
    lengths = values[1::2]
    for start, n in zip((ends - lengths).tolist(), lengths.tolist()):
        flat[start : start + n] = True
    return flat.reshape(width, height).T
