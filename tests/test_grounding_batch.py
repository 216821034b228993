"""Batched grounding (`evaluate_batch`) against the per-image path (`evaluate_maps`): equal bit for
bit on the CPU, for random maps with ties and plateaus, constant maps, empty and full regions,
several eval sizes and geometries in one batch; the device path (run here on CPU tensors) with
the same counts; a run's records under every protocol equal to the per-image path on its maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xbench_core.geometry import Geometry
from xbench_core.grounding import _stats_on_device, evaluate_maps
from xbench_core.grounding_batch import evaluate_batch

GRID = (7, 7)
GEOMETRIES = {
    (40, 36): [Geometry.squash((40, 36), (28, 28)), Geometry.shortest_side_crop((40, 36), 32, 28)],
    (30, 50): [Geometry.letterbox_crop((30, 50), 32, 28), Geometry.squash((30, 50), (28, 28))],
    (28, 28): [Geometry.identity((28, 28))],
}


def _case(seed: int, images: int = 9, findings: int = 4):
    """Per image: an original size, a geometry, the eval size (maybe capped) and F maps and masks."""
    rng = np.random.default_rng(seed)
    maps, geoms, sizes, masks, owner = [], [], [], [], []
    shapes = list(GEOMETRIES)
    for i in range(images):
        original = shapes[i % len(shapes)]
        geometry = GEOMETRIES[original][i % len(GEOMETRIES[original])]
        size = original if i % 2 else (original[0] // 2, original[1] // 2)
        for f in range(findings):
            kind = (i + f) % 5
            if kind == 0:
                m = rng.random(GRID)
            elif kind == 1:
                m = rng.integers(0, 3, GRID) / 2  # plateaus: many tied maxima
            elif kind == 2:
                m = np.full(GRID, 0.3)  # constant
            elif kind == 3:
                m = rng.normal(size=GRID) * 1e3  # raw values outside [0, 1]
            else:
                m = rng.random(GRID) ** 8  # mass near zero
            region = np.zeros(size, bool)
            if (i + f) % 7 == 3:
                pass  # empty region
            elif (i + f) % 7 == 5:
                region[:] = True  # the whole image
            else:
                y, x = rng.integers(0, size[0] - 4), rng.integers(0, size[1] - 4)
                region[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
            maps.append(m.astype(np.float32))
            geoms.append(geometry)
            sizes.append(size)
            masks.append(region)
            owner.append(i)
    return np.stack(maps), geoms, sizes, masks, owner


def _per_image(maps, geoms, sizes, masks, owner) -> list[dict]:
    rows = []
    for i in dict.fromkeys(owner):
        ks = [k for k, o in enumerate(owner) if o == i]
        rows += evaluate_maps(torch.from_numpy(maps[ks]), geoms[ks[0]], sizes[ks[0]], [masks[k] for k in ks]).rows()
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_equals_the_per_image_path_bit_for_bit(seed: int) -> None:
    maps, geoms, sizes, masks, owner = _case(seed)
    expected = _per_image(maps, geoms, sizes, masks, owner)
    # json with repr floats: equal text means equal bits (and NaN equal to NaN)
    want = json.dumps(expected)
    assert json.dumps(evaluate_batch(torch.from_numpy(maps), geoms, sizes, masks)) == want
    assert json.dumps(evaluate_batch(maps, geoms, sizes, masks)) == want
    # in chunks (as for large eval frames on the CPU): the same rows
    import xbench_core.grounding_batch as gb

    chunk, gb.CPU_CHUNK = gb.CPU_CHUNK, 700
    try:
        assert json.dumps(evaluate_batch(maps, geoms, sizes, masks)) == want
    finally:
        gb.CPU_CHUNK = chunk
    # any order of the pairs gives each pair the same row
    order = np.random.default_rng(seed).permutation(len(masks))
    shuffled = evaluate_batch(maps[order], [geoms[k] for k in order], [sizes[k] for k in order], [masks[k] for k in order])
    assert [json.dumps(r) for r in shuffled] == [json.dumps(expected[k]) for k in order]
    # the cases are there: ties, constant maps, empty regions
    assert any(r["constant_map"] for r in expected) and any(r["region_px"] == 0 for r in expected)
    assert any(0 < r["pointing_game"] < 1 for r in expected)


def test_batch_of_nothing_and_mismatched_lengths() -> None:
    assert evaluate_batch(np.zeros((0, 7, 7), np.float32), [], [], []) == []
    with pytest.raises(ValueError, match="2 maps, 1 geometries"):
        evaluate_batch(np.zeros((2, 7, 7), np.float32), [Geometry.identity((7, 7))], [(7, 7)], [np.ones((7, 7), bool)])


def test_device_path_counts_equal_the_cpu_path() -> None:
    """The device path's statistics (here on CPU tensors): integer counts and tie shares exact,
    EBPG and CNR equal up to float64 summation order. (On a device the eval-frame products run in
    float32, so values next to a threshold may fall on the other side of it there.)"""
    from xbench_core.grounding import to_eval_frame

    maps, geoms, sizes, masks, owner = _case(3)
    keep = [k for k, s in enumerate(sizes) if s == sizes[0] and geoms[k] == geoms[0]]
    frame = torch.from_numpy(to_eval_frame(maps[keep], geoms[0], sizes[0]))  # the CPU path's frame
    regions = torch.from_numpy(np.stack([masks[k] for k in keep]))
    got = _stats_on_device(frame, regions).rows()
    want = evaluate_batch(maps[keep], [geoms[k] for k in keep], [sizes[k] for k in keep], [masks[k] for k in keep])
    assert len(got) == len(want) == len(keep)
    for g, w in zip(got, want):
        for key in ("region_px", "total_px", "hits_all", "hits_region", "constant_map", "pointing_game",
                    "pointing_any", "pointing_first"):
            assert g[key] == w[key], key
        assert g["ebpg"] == pytest.approx(w["ebpg"], rel=1e-12, abs=1e-15)
        assert g["extra"]["miou_raw"] == pytest.approx(w["extra"]["miou_raw"], rel=1e-12, abs=0)
        assert (g["extra"]["cnr"] is None) == (w["extra"]["cnr"] is None)
        if w["extra"]["cnr"] is not None:
            assert g["extra"]["cnr"] == pytest.approx(w["extra"]["cnr"], rel=1e-9)


@pytest.mark.parametrize("protocol", ["xbench", "chexlocalize", "medklip", "mavl"])
def test_run_grounds_each_batch_in_one_call_equal_to_the_per_image_path(
    tmp_path: Path, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run (batch 4, two models) under each protocol: one `evaluate_batch` call per batch and
    model, whose rows equal `evaluate_maps` pair by pair, bit for bit, and are the records' stats."""
    import xbench_core.grounding_batch as gb
    from xbench_core.engine.config import build_config
    from xbench_core.engine.session import execute
    from xbench_core.plugins import get_registry
    from xbench_core.store import RunStore

    calls = []
    real = gb.evaluate_batch

    def spy(maps, geometries, eval_sizes, masks):
        rows = real(maps, geometries, eval_sizes, masks)
        calls.append((maps.clone(), list(geometries), list(eval_sizes), [m.copy() for m in masks], json.dumps(rows)))
        return rows

    monkeypatch.setattr(gb, "evaluate_batch", spy)
    registry = get_registry()
    out = tmp_path / "run"
    data = {"datasets": [{"name": "phantom", "size": 6, "resolution": 72}], "models": ["random", "center"],
            "out": str(out), "batch_size": 4, "grounding": {"protocol": protocol, "eval_size": 48}}
    execute(build_config(data, registry), registry, quiet=True)
    assert len(calls) == 4  # 2 batches x 2 models
    returned = []
    for maps, geometries, sizes, masks, rows in calls:
        want = [evaluate_maps(maps[k : k + 1], geometries[k], sizes[k], [masks[k]]).rows()[0] for k in range(len(masks))]
        assert rows == json.dumps(want)
        returned += [r for r in json.loads(rows) if r["region_px"]]
    stats = [r["stats"] for r in RunStore(out).records() if r.get("stats")]
    assert len(stats) == len(returned) >= 6
    own = lambda st: {**st, "extra": {k: st["extra"][k] for k in ("cnr", "miou_raw")}}  # noqa: E731 - without the protocol's
    assert sorted(json.dumps(own(st), sort_keys=True) for st in stats) == sorted(json.dumps(r, sort_keys=True) for r in returned)
