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


def coco_counts_from_string(text: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (cocoapi's LEB128-like text form)."""
    counts: list[int] = []
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated COCO RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_coco_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (`{"size": [h, w], "counts": str | list}`) to a boolean (h, w) mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = coco_counts_from_string(counts) if isinstance(counts, (str, bytes)) else list(counts)
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"COCO RLE runs add up to {sum(runs)}, expected {h} x {w} = {h * w}")
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

    Pairs are (gap since the end of the previous run, run length). An absolute encoding (pairs of
    start, length, as Kaggle's submission format) is detected by non-decreasing starts that would
    overrun the image as gaps, and decoded as such.
    """
    text = text.strip()
    flat = np.zeros(height * width, dtype=bool)
    if text in ("-1", ""):
        return flat.reshape(width, height).T
    values = np.asarray(text.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError("RLE has an odd number of values (each run needs a start and a length)")
    if np.any(values < 0):
        # a negative start would silently index from the end of the array
        raise ValueError(f"RLE has a negative value ({int(values.min())}): not a SIIM run-length text")
    gaps, lengths = values[0::2], values[1::2]
    starts = np.cumsum(gaps + np.concatenate([[0], lengths[:-1]]))
    if starts[-1] + lengths[-1] > flat.size:
        # not relative: try absolute 0-based (start, length) pairs, else fail
        if np.all(np.diff(gaps) > 0) and gaps[-1] + lengths[-1] <= flat.size:
            starts = gaps
        else:
            raise ValueError(
                f"RLE runs end at pixel {int(starts[-1] + lengths[-1])}, beyond the "
                f"{height}x{width} image, and are not an absolute encoding either"
            )
    for s, n in zip(starts.tolist(), lengths.tolist()):
        flat[s : s + n] = True
    return flat.reshape(width, height).T
