"""What loader workers send: masks bit-packed in a worker, unpacked to the same booleans."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from xbench_core.engine.transfer import PackedMask, pack_masks, unpack_masks


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 9), (96, 96), (301, 257)])
def test_packed_masks_unpack_to_the_same_booleans(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.3
    packed = PackedMask(shape, np.packbits(mask))
    sent = pickle.loads(pickle.dumps(packed))
    out = sent.unpack()
    assert out.dtype == bool and out.shape == shape and np.array_equal(out, mask)
    assert len(pickle.dumps(packed)) < mask.size // 8 + 400  # an eighth of the booleans, plus the wrapper


def test_masks_are_packed_only_in_a_loader_worker() -> None:
    from torch.utils.data import DataLoader

    masks = {"a": np.eye(13, dtype=bool), "b": np.zeros((13, 13), bool)}
    assert pack_masks(masks) is masks  # the main process: nothing to send

    class One:
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> dict:
            return {"masks": pack_masks(masks)}

    [batch] = DataLoader(One(), batch_size=1, num_workers=1, collate_fn=list)
    item = batch[0]
    assert all(isinstance(m, PackedMask) for m in item["masks"].values())
    [item] = unpack_masks([item, {"error": "no masks"}])[:1]
    assert set(item["masks"]) == {"a", "b"} and all(np.array_equal(item["masks"][f], masks[f]) for f in masks)
