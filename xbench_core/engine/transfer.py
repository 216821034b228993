"""What a loader worker sends per image, made small: region masks travel bit-packed.

A full-resolution mask is 1 to 7.5 MB of booleans; pickled through the worker's pipe it costs the
main process more than unpacking it from its bits (an eighth of the bytes). Values are unchanged:
`unpack_masks` returns the same boolean arrays. With no workers nothing is packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PackedMask:
    shape: tuple[int, int]
    bits: np.ndarray  # np.packbits of the flattened mask

    def unpack(self) -> np.ndarray:
        size = self.shape[0] * self.shape[1]
        return np.unpackbits(self.bits, count=size).reshape(self.shape).view(bool)


def pack_masks(masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Masks bit-packed when this runs in a loader worker (left as they are in the main process)."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return masks
    return {f: PackedMask((int(m.shape[0]), int(m.shape[1])), np.packbits(m)) for f, m in masks.items()}


def unpack_masks(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch with its masks as boolean arrays again (in the main process)."""
    for item in batch:
        masks = item.get("masks")
        if masks:
            item["masks"] = {f: m.unpack() if isinstance(m, PackedMask) else m for f, m in masks.items()}
    return batch
