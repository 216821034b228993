"""Run lengths of COCO RLE masks without decoding them: enough to tell an empty mask from a lesion.

CheXlocalize stores every task of every CXR as a compressed COCO RLE, negatives included (an
all-zero mask), so whether a task has a region is decided on the decoded runs, never on the text.
The text form is cocoapi's (`maskApi.c`, `rleFrString`): each count is written in 5-bit groups,
least significant first, as characters offset by 48, bit 0x20 meaning "more groups follow" and
bit 0x10 of the last group the sign; from the fourth count on, the value is a difference to the
count two places before.
"""

from __future__ import annotations

# CORE-REQUEST: export the core's `coco_counts_from_string` (or an `rle_area`/`rle_is_empty`
# helper) from `xbench_core`: plugins may not import `xbench_core.io.regions`, and deciding
# emptiness by `decode_coco_rle(...).any()` costs a full-resolution mask per task (about 6,700
# masks of 2,000 x 2,500 pixels for the CheXlocalize test split).


def coco_rle_runs(counts: str | bytes | list[int], *, until_foreground: bool = False) -> list[int]:
    """The run lengths (zeros first, then ones, alternating) of a COCO RLE's `counts`.

    With `until_foreground`, reading stops after the first non-empty run of ones.
    """
    if isinstance(counts, list):
        return [int(c) for c in counts]
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p, n = 0, len(data)
    while p < n:
        value, shift, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the COCO RLE text ends inside a count (truncated?)")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[p])!r} cannot occur in a COCO RLE text")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        if until_foreground and len(runs) % 2 == 0 and value > 0:
            break
    return runs


def coco_rle_is_empty(rle: dict) -> bool:
    """Whether a COCO RLE has no foreground pixel, read from its runs up to the first foreground run.

    Stopping there keeps this cheap for large lesions (the full text of a CheXlocalize mask runs to
    thousands of characters); a corrupt text after that point shows when the mask is decoded.
    """
    h, w = (int(v) for v in rle["size"])
    runs = coco_rle_runs(rle["counts"], until_foreground=True)
    if any(r < 0 for r in runs):
        raise ValueError("negative run length")
    if any(runs[1::2]):
        return False
    if sum(runs) != h * w:  # read to the end: check it covers the image
        raise ValueError(f"the runs add up to {sum(runs)} pixels, not {h} x {w} = {h * w}")
    return True


def coco_rle_area(rle: dict) -> int:
    """The number of foreground pixels of a COCO RLE (`{"size": [h, w], "counts": ...}`).

    Raises ValueError when the runs are negative or do not add up to h x w.
    """
    h, w = (int(v) for v in rle["size"])
    runs = coco_rle_runs(rle["counts"])
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"the runs add up to {sum(runs)} pixels, not {h} x {w} = {h * w}")
    return sum(runs[1::2])
