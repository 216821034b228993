"""SIIM-ACR run-length encodings: checking a row, telling the relative and the absolute encodings
apart, and turning an absolute encoding into the relative one the core's `Region` decodes.

Relative (the competition's `train-rle.csv`; the official `mask_functions.py` `mask2rle`, read in
reference/datasets.md section 2): pairs (gap, length); the first gap counts from pixel 0, each later
gap from the end of the previous run; pixels are numbered column-major (flat index = x * H + y).
Absolute (Kaggle's standard RLE, which the stage-2 *submission* format used): pairs (start, length)
with 1-based starts in increasing order, same column-major numbering.

Which one a file uses is decided once per file, by the rows that fit only one of them: a relative
row read as absolute has starts that go backwards (the gaps after the first are small), and an
absolute row read as relative runs past the image (its starts add up).
"""

from __future__ import annotations

import re

import numpy as np

ENCODINGS = ("auto", "relative", "absolute")
_NOT_NUMBER = re.compile(r"[^0-9\s]")  # a scan for a bad character is 5x faster than a fullmatch


def parse_values(text: str) -> np.ndarray | str:
    """The integers of a stripped RLE string, or a message saying why it is malformed."""
    if not text or _NOT_NUMBER.search(text):
        return "EncodedPixels is neither -1 nor a list of non-negative integers"
    # Only digits and whitespace: fromstring's text mode parses all of it (on bad input it only warns).
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size % 2:
        return f"EncodedPixels has an odd number of values ({values.size}); runs are pairs"
    return values


def relative_end(values: np.ndarray) -> int:
    """One past the last pixel of a relative encoding: all gaps and lengths added up."""
    return int(values.sum())


def fits_relative(values: np.ndarray, pixels: int) -> bool:
    """Whether the values are a valid relative encoding inside an image of `pixels` pixels."""
    return bool(values[1::2].min() > 0) and relative_end(values) <= pixels


def fits_absolute(values: np.ndarray, pixels: int) -> bool:
    """Whether the values are a valid 1-based absolute encoding (increasing, non-overlapping runs)."""
    starts, lengths = values[0::2], values[1::2]
    if starts.min() < 1 or lengths.min() < 1:
        return False
    ends = starts + lengths  # 1-based, exclusive
    return bool(np.all(starts[1:] >= ends[:-1])) and int(ends[-1]) - 1 <= pixels


def choose_encoding(rows: list[np.ndarray], pixels: int) -> str:
    """'relative' or 'absolute' for a file, by the rows valid in only one encoding (ties: relative,
    the encoding of the published label files)."""
    only_relative = only_absolute = 0
    for values in rows:
        rel, ab = fits_relative(values, pixels), fits_absolute(values, pixels)
        only_relative += rel and not ab
        only_absolute += ab and not rel
    return "absolute" if only_absolute > only_relative else "relative"


def absolute_to_relative(values: np.ndarray) -> str:
    """The relative text of a 1-based absolute encoding (the same pixels)."""
    starts = values[0::2] - 1
    lengths = values[1::2]
    previous_end = np.concatenate([[0], (starts + lengths)[:-1]])
    out = np.empty_like(values)
    out[0::2] = starts - previous_end
    out[1::2] = lengths
    return " ".join(map(str, out.tolist()))


def relative_text(text: str) -> str:
    """A relative RLE as single-space-separated text (the published files already are)."""
    return (
        text
        if ("  " not in text and "\t" not in text and "\n" not in text)
        else " ".join(text.split())
    )
