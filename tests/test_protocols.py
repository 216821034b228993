"""Each grounding protocol against a plain re-implementation of its upstream definition, on random
maps with ties and plateaus (cheXlocalize heatmap_to_segmentation.py/eval.py, MedKLIP and MAVL
test.py score_cal), and the extra metrics against their formulas."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from xbench_core import protocols as P
from xbench_core.engine.config import build_config
from xbench_core.errors import ConfigError
from xbench_core.geometry import Geometry
from xbench_core.grounding import evaluate_maps
from xbench_core.metrics.data import FindingData
from xbench_core.metrics.extra import cnr, miou_raw, pixel_prs, protocol
from xbench_core.plugins import get_registry


def extra_resamples(d: FindingData, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every extra field of every resample: the union of the extra metrics' resample hooks."""
    return {k: v for m in (cnr, miou_raw, pixel_prs, protocol) for k, v in m.resample(d, weights).items()}


def _maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """Noise, plateaus (a few levels: many tied maxima) and smooth maps."""
    out = []
    for k in range(n):
        if k % 3 == 0:
            out.append(rng.random(shape).astype(np.float32))
        elif k % 3 == 1:
            out.append((rng.integers(0, 4, shape) / 3).astype(np.float32))
        else:
            out.append(P.resize_bilinear(rng.random((4, 4)).astype(np.float32), shape))
    return out


# ---- plain references ---------------------------------------------------------------------------
def naive_otsu(img: np.ndarray) -> tuple[int, float]:
    """The level t maximizing the between-class variance of {<= t} and {> t} (first maximum), and
    that maximum."""
    v = img.reshape(-1).astype(np.float64)
    best_t, best = 0, 0.0
    for t in range(256):
        lo, hi = v[v <= t], v[v > t]
        if lo.size == 0 or hi.size == 0:
            continue
        w0, w1 = lo.size / v.size, hi.size / v.size
        sigma = w0 * w1 * (lo.mean() - hi.mean()) ** 2
        if sigma > best + 1e-12:
            best_t, best = t, sigma
    return best_t, best


def naive_fill(binary: np.ndarray) -> np.ndarray:
    """Components (8-connected) of more than one pixel, then every background pixel that cannot
    reach the border through 4-connected background filled."""
    h, w = binary.shape
    keep = np.zeros_like(binary, bool)
    seen = np.zeros_like(binary, bool)
    for y in range(h):
        for x in range(w):
            if binary[y, x] and not seen[y, x]:
                comp, queue = [], deque([(y, x)])
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    comp.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                queue.append((ny, nx))
                if len(comp) > 1:
                    for cy, cx in comp:
                        keep[cy, cx] = True
    outside = np.zeros_like(binary, bool)
    queue = deque((y, x) for y in range(h) for x in range(w) if (y in (0, h - 1) or x in (0, w - 1)) and not keep[y, x])
    for y, x in queue:
        outside[y, x] = True
    while queue:
        cy, cx = queue.popleft()
        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
            if 0 <= ny < h and 0 <= nx < w and not keep[ny, nx] and not outside[ny, nx]:
                outside[ny, nx] = True
                queue.append((ny, nx))
    return ~outside


def test_otsu_is_the_first_maximum_of_the_between_class_variance() -> None:
    rng = np.random.default_rng(0)
    for m in _maps(rng, 12, (20, 23)):
        img = (np.float32(255) * (m - m.min()) / max(m.max() - m.min(), 1e-9)).astype(np.uint8)
        t, best = naive_otsu(img)
        ours = P.otsu_threshold(img)
        assert ours == t or abs(naive_otsu_at(img, ours) - best) < 1e-12


def naive_otsu_at(img: np.ndarray, t: int) -> float:
    v = img.reshape(-1).astype(np.float64)
    lo, hi = v[v <= t], v[v > t]
    return lo.size / v.size * hi.size / v.size * (lo.mean() - hi.mean()) ** 2


def test_fill_contours_equals_component_and_hole_filling() -> None:
    rng = np.random.default_rng(1)
    for k in range(15):
        binary = rng.random((17, 19)) < (0.3 + 0.03 * k)
        assert np.array_equal(P.fill_contours(binary), naive_fill(binary))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole: filled
    ring[0, 8] = True  # an isolated pixel: dropped
    filled = P.fill_contours(ring)
    assert filled[4, 4] and not filled[0, 8]


def test_chexlocalize_values_equal_the_official_definition() -> None:
    rng = np.random.default_rng(2)
    for k, small in enumerate(_maps(rng, 9, (8, 8))):
        size = (30 + k, 25)
        region = np.zeros(size, bool)
        region[5 + k : 20, 3:15 + k] = True
        # heatmap_to_segmentation.pkl_to_mask + cam_to_segmentation + eval.calculate_iou, get_hitrates
        resized = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=size,
                                                  mode="bilinear", align_corners=False)[0, 0]
        mask = resized - resized.min()
        mask = (mask / mask.max()).numpy()
        u8 = np.uint8(255 * mask)
        pred = naive_fill(u8 > naive_otsu(u8)[0])
        inter, union = np.logical_and(pred, region).sum(), np.logical_or(pred, region).sum()
        iou = inter / union if pred.sum() and region.sum() else None
        r = np.unravel_index(np.argmax(resized.numpy(), axis=None), size)
        hit = float(region[r[0], r[1]])
        geometry = Geometry.squash(size, small.shape)
        got = P.protocol_values(P.parse_protocol("chexlocalize"), small, geometry, region)
        assert got["chexlocalize_hit"] == hit
        assert (got["chexlocalize_iou"] is None) == (iou is None)
        if iou is not None:
            assert got["chexlocalize_iou"] == pytest.approx(iou, abs=1e-12)
        # a tuned threshold: mask > tau, no contours; and probability gating
        tuned = P.protocol_values(P.parse_protocol({"name": "chexlocalize", "threshold": 0.4}), small, geometry, region)
        pred = mask > np.float32(0.4)
        assert tuned["px_tp"] == int((pred & region).sum()) and tuned["px_fp"] == int((pred & ~region).sum())
        gated = P.protocol_values(P.parse_protocol({"name": "chexlocalize", "prob_cutoff": 0.5}), small, geometry,
                                  region, prob=0.2)
        assert gated["chexlocalize_iou"] is None and gated["px_tp"] == 0
        off = P.protocol_values(P.parse_protocol({"name": "chexlocalize", "prob_cutoff": 0.5, "true_pos_only": False}),
                                small, geometry, region, prob=0.2)
        assert off["chexlocalize_iou"] == 0.0


def _score_cal(seg: torch.Tensor, pred: torch.Tensor, th: float) -> tuple[float, float, int]:
    """MedKLIP/MAVL test.py score_cal for one positive image: IoU, Dice and the point flag."""
    seg, pred = seg.reshape(1, -1).float(), pred.reshape(1, -1)
    one_hot = pred > th
    dot = (seg * one_hot).sum(-1)
    iou = dot / (seg.sum(-1) + one_hot.sum(-1) - dot)
    dice = 2 * dot / (seg.sum(-1) + one_hot.sum(-1))
    top = torch.max(pred, dim=-1)[0]
    flag = int(torch.sum((pred[0] == top[0]).int() * seg[0]) > 0)
    return float(iou[0]), float(dice[0]), flag


def _box(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    m = np.zeros(shape, bool)
    y, x = rng.integers(0, shape[0] // 2), rng.integers(0, shape[1] // 2)
    m[y : y + shape[0] // 3 + 1, x : x + shape[1] // 4 + 1] = True
    return m


def test_medklip_values_equal_score_cal() -> None:
    rng = np.random.default_rng(3)
    for small in _maps(rng, 9, (14, 14)):
        small = small * np.float32(0.016)  # around the 0.008 threshold
        original = (100, 80)
        region = _box(original, rng)
        geometry = Geometry.squash(original, (224, 224))
        seg = torch.nn.functional.interpolate(torch.from_numpy(region.astype(np.float32))[None, None],
                                              size=(224, 224), mode="nearest")[0, 0]
        pred = torch.from_numpy(small.repeat(16, axis=0).repeat(16, axis=1))
        iou, dice, flag = _score_cal(seg, pred, 0.008)
        got = P.protocol_values(P.parse_protocol("medklip"), small, geometry, region)
        assert got["medklip_iou"] == pytest.approx(iou, rel=1e-6)
        assert got["medklip_dice"] == pytest.approx(dice, rel=1e-6)
        assert got["medklip_pointing"] == flag


def test_mavl_sweep_equals_score_cal_over_the_thresholds() -> None:
    rng = np.random.default_rng(4)
    original, frame = (40, 36), (32, 32)
    geometry = Geometry.squash(original, frame)
    ths = np.arange(0.0001, 0.1, 0.00001)
    dices, ious, rows = [], [], []
    for small in _maps(rng, 4, (4, 4)):
        small = small * np.float32(0.1)
        region = _box(original, rng)
        seg = torch.nn.functional.interpolate(torch.from_numpy(region.astype(np.float32))[None, None],
                                              size=frame, mode="nearest")[0, 0].reshape(-1)
        pred = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=frame, mode="bilinear",
                                               align_corners=True)[0, 0].reshape(-1)
        one_hot = pred[None] > torch.from_numpy(ths.astype(np.float32))[:, None]
        dot = (one_hot & (seg > 0)).sum(-1).double()
        n = seg.sum().double() + one_hot.sum(-1).double()
        dices.append((2 * dot / n).numpy())
        ious.append((dot / (n - dot)).numpy())
        rows.append(P.protocol_values(P.parse_protocol("mavl"), small, geometry, region))
    k = int(np.argmax(np.mean(dices, axis=0)))
    d = FindingData(region_px=np.ones(4, np.int64), total_px=np.ones(4, np.int64),
                    hits_all=np.zeros((4, 101), np.int64), hits_region=np.zeros((4, 101), np.int64),
                    extra={key: np.array([r[key] for r in rows], np.float64) for key in rows[0]}, protocol="mavl")
    got = protocol(d)
    assert got["mavl_threshold"] == pytest.approx(float(np.float32(ths[k])))
    assert got["mavl_dice"] == pytest.approx(float(np.mean(dices, axis=0)[k]), abs=1e-12)
    assert got["mavl_iou"] == pytest.approx(float(np.mean(ious, axis=0)[k]), abs=1e-12)
    # the resamples' point estimate (all weights 1) is the row's
    res = extra_resamples(d, np.ones((1, 4)))
    assert res["mavl_dice"][0] == pytest.approx(got["mavl_dice"]) and res["mavl_iou"][0] == pytest.approx(got["mavl_iou"])


def test_tie_rules_and_extras_on_the_engine_path() -> None:
    """pointing_any/first on both the numpy and the torch paths; CNR and raw-threshold mIoU."""
    rng = np.random.default_rng(5)
    maps = np.stack(_maps(rng, 6, (12, 12)))
    masks = [_box((30, 30), rng) for _ in range(6)]
    geometry = Geometry.squash((30, 30), (12, 12))
    st = evaluate_maps(torch.from_numpy(maps), geometry, (30, 30), masks)
    from xbench_core.grounding import _stats_torch, normalize, to_eval_frame

    frame = to_eval_frame(maps.copy(), geometry, (30, 30))
    raw = frame.copy()
    normed, _ = normalize(frame)
    regions = np.stack(masks)
    torch_st = _stats_torch(torch.from_numpy(normed.copy()), torch.from_numpy(regions))
    for i, row in enumerate(st.rows()):
        v, r = normed[i].reshape(-1), regions[i].reshape(-1)
        top = v == v.max()
        assert row["pointing_any"] == float((top & r).any())
        assert row["pointing_first"] == float(r[np.argmax(v)])
        assert row["pointing_game"] == (top & r).sum() / top.sum()
        assert float(torch_st.pointing_any[i]) == row["pointing_any"]
        assert float(torch_st.pointing_first[i]) == row["pointing_first"]
        inside, outside = v[r].astype(np.float64), v[~r].astype(np.float64)
        cnr = abs(inside.mean() - outside.mean()) / np.sqrt(inside.var() + outside.var())
        assert row["extra"]["cnr"] == pytest.approx(cnr, rel=1e-9)
        ious = []
        for t in (0.1, 0.2, 0.3, 0.4, 0.5):
            p = raw[i].reshape(-1) >= np.float32(t)
            ious.append((p & r).sum() / max((p | r).sum(), 1))
        assert row["extra"]["miou_raw"] == pytest.approx(np.mean(ious), abs=1e-12)
        assert P.pointing(normed[i], regions[i], "any") == row["pointing_any"]
        assert P.pointing(normed[i], regions[i], "first") == row["pointing_first"]


def test_pixel_counts_are_pooled() -> None:
    d = FindingData.synthetic(seed=3)
    got = pixel_prs(d)
    k = d.fixed_index
    tp = d.hits_region[:, k].sum()
    fp = d.hits_all[:, k].sum() - tp
    fn = d.region_px.sum() - tp
    tn = d.total_px.sum() - tp - fp - fn
    assert got["pixel_precision"] == pytest.approx(tp / (tp + fp))
    assert got["pixel_recall"] == pytest.approx(tp / (tp + fn))
    assert got["pixel_specificity"] == pytest.approx(tn / (tn + fp))


def test_region_and_map_frames() -> None:
    rng = np.random.default_rng(6)
    m = rng.random((14, 14)).astype(np.float32)
    assert np.array_equal(P.resize_nearest(m, (224, 224)), m.repeat(16, axis=0).repeat(16, axis=1))
    region = rng.random((103, 77)) < 0.5
    ref = torch.nn.functional.interpolate(torch.from_numpy(region.astype(np.float32))[None, None], size=(224, 224),
                                          mode="nearest")[0, 0].numpy() > 0
    assert np.array_equal(P.region_in_input_frame(region, Geometry.squash((103, 77), (224, 224))), ref)


def test_protocol_options_are_validated() -> None:
    registry = get_registry()
    cfg = build_config({"grounding": {"protocol": {"name": "medklip", "threshold": 0.01}, "pointing": "any"}}, registry)
    assert cfg.protocol.options["threshold"] == 0.01 and cfg.pointing == "any"
    assert cfg.evaluation_identity()["protocol"]["name"] == "medklip"
    assert "protocol" not in build_config({}, registry).evaluation_identity()
    for bad in ({"protocol": "paper"}, {"protocol": {"name": "mavl", "threshold": 1}}, {"pointing": "all"}):
        with pytest.raises(ConfigError):
            build_config({"grounding": bad}, registry)


def test_run_with_a_protocol_and_a_tie_rule(tmp_path: Path) -> None:
    """`xbench run` records the protocol's values; the tie rule picks the pointing game."""
    from xbench_core.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("grounding: {protocol: medklip, pointing: any}\n")
    out = tmp_path / "run"
    assert main(["run", "-c", str(config), "--datasets", "phantom", "--models", "center", "--set", "phantom.size=5",
                 "--set", "phantom.resolution=96", "--out", str(out), "--quiet", "--no-report"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = [r for r in results["rows"] if r["finding"] != "__mean__" and r["n_regions"]]
    records = [json.loads(line) for p in out.glob("records/*/*/*/*.jsonl") for line in p.read_text().splitlines()]
    for r in rows:
        stats = [x["stats"] for x in records if x["finding"] == r["finding"] and x.get("stats")]
        assert r["pointing_game"] == pytest.approx(np.mean([s["pointing_any"] for s in stats]))
        assert r["medklip_pointing"] == pytest.approx(np.mean([s["extra"]["medklip_pointing"] for s in stats]))
    assert all(r["medklip_iou"] is not None and "medklip_iou_ci" in r for r in rows)
    assert results["analysis"]["pointing_game"]["tie_rule"] == "any"


def test_chexlocalize_tuning_equals_tune_heatmap_threshold() -> None:
    """tune_heatmap_threshold.py: for t in arange(0.2, 0.8, 0.1) (0.2 ... 0.8), mIoU (true positives only, NaN left
    out) of `map > t`; the first best t (saved rounded to 0.1) and its mIoU."""
    rng = np.random.default_rng(7)
    rows, per_t = [], []
    for small in _maps(rng, 7, (6, 6)):
        size = (24, 20)
        region = _box(size, rng)
        geometry = Geometry.squash(size, small.shape)
        rows.append(P.protocol_values(P.parse_protocol("chexlocalize"), small, geometry, region))
        resized = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=size,
                                                  mode="bilinear", align_corners=False)[0, 0]
        mask = resized - resized.min()
        mask = (mask / mask.max()).numpy()
        ious = []
        for t in np.arange(0.2, 0.8, 0.1):
            pred = mask > np.float32(t)
            ious.append(np.logical_and(pred, region).sum() / np.logical_or(pred, region).sum() if pred.sum() else np.nan)
        per_t.append(ious)
    miou = np.nanmean(np.array(per_t), axis=0)
    best = int(np.nanargmax(miou))
    d = FindingData(region_px=np.ones(7, np.int64), total_px=np.ones(7, np.int64),
                    hits_all=np.zeros((7, 101), np.int64), hits_region=np.zeros((7, 101), np.int64),
                    extra={key: np.array([r[key] for r in rows], np.float64) for key in rows[0] if key != "chexlocalize_iou"}
                    | {"chexlocalize_iou": np.array([np.nan if r["chexlocalize_iou"] is None else r["chexlocalize_iou"] for r in rows])},
                    protocol="chexlocalize")
    got = protocol(d)
    assert got["chexlocalize_threshold"] == round(float(np.arange(0.2, 0.8, 0.1)[best]), 1)
    assert got["chexlocalize_iou_tuned"] == pytest.approx(miou[best], abs=1e-12)
    assert extra_resamples(d, np.ones((1, 7)))["chexlocalize_iou_tuned"][0] == pytest.approx(miou[best], abs=1e-12)


def test_chexlocalize_tuning_files(tmp_path: Path) -> None:
    """The official tuning CSVs give per-finding thresholds and cutoffs (the best mIoU row per task)."""
    (tmp_path / "t.csv").write_text("threshold,task\n0.3,Cardiomegaly\n0.5,Airspace Opacity\n")
    (tmp_path / "p.csv").write_text("task,prob_threshold,mIoU\nCardiomegaly,0.1,0.2\nCardiomegaly,0.4,0.3\n"
                                    "Cardiomegaly,0.6,0.3\n")
    p = P.parse_protocol({"name": "chexlocalize", "threshold": str(tmp_path / "t.csv"), "prob_cutoff": str(tmp_path / "p.csv")})
    assert p.value("threshold", "lung_opacity") == 0.5 and p.value("threshold", "edema") is None
    assert p.value("prob_cutoff", "cardiomegaly") == 0.4
    with pytest.raises(ConfigError):
        P.parse_protocol({"name": "chexlocalize", "threshold": str(tmp_path / "none.csv")})


@pytest.mark.parametrize("name", ["chexlocalize", "mavl", "medklip"])
def test_extra_resamples_equal_the_metrics_on_each_resample(name: str) -> None:
    """The extra metrics' resample hooks (what the bootstrap calls: all resamples at once) give
    exactly their fields, equal to calling each metric on each resample, the tuned thresholds
    included; `extra_resamples` is their union."""
    from xbench_core.metrics import bootstrap as bs

    rng = np.random.default_rng(11)
    rows, stats = [], []
    for small in _maps(rng, 9, (6, 6)):
        small = small * np.float32(0.1) if name == "mavl" else small
        size = (24, 20)
        region = _box(size, rng)
        geometry = Geometry.squash(size, small.shape)
        rows.append(P.protocol_values(P.parse_protocol(name), small, geometry, region))
        stats.append(evaluate_maps(torch.from_numpy(small[None]), geometry, size, [region]).rows()[0])
    extra = {k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], np.float64) for k in rows[0]}
    extra |= {k: np.array([s["extra"][k] if s["extra"][k] is not None else np.nan for s in stats]) for k in ("cnr", "miou_raw")}
    d = FindingData(region_px=np.array([s["region_px"] for s in stats]), total_px=np.array([s["total_px"] for s in stats]),
                    hits_all=np.array([s["hits_all"] for s in stats]), hits_region=np.array([s["hits_region"] for s in stats]),
                    pointing_game=np.array([s["pointing_game"] for s in stats]), ebpg=np.array([s["ebpg"] for s in stats]),
                    extra=extra, protocol=name)
    weights = bs.counts(bs.resample_indices(9, bs.generator(0, name), 40), 9)
    got = extra_resamples(d, weights)
    hooked_fields: set[str] = set()
    for metric in (cnr, miou_raw, pixel_prs, protocol):
        hooked = bs.metric_resamples(metric, "grounding", d, weights)
        plain = bs.plain_resamples(metric, "grounding", d, weights)
        assert plain and set(plain) <= set(hooked) <= set(got)
        hooked_fields |= set(hooked)
        for field, values in plain.items():
            np.testing.assert_allclose(hooked[field], values, rtol=0, atol=1e-12, equal_nan=True, err_msg=field)
            np.testing.assert_allclose(got[field], values, rtol=0, atol=1e-12, equal_nan=True, err_msg=field)
    assert hooked_fields == set(got)


def test_mavl_threshold_ties_are_broken_as_its_resamples_break_them() -> None:
    """Two thresholds whose mean Dice differ only by float summation order (the same three Dice in
    another order): the row takes the first, as the bootstrap's resamples do (`first_argmax`)."""
    inside, above = np.array([8.0, 6.0, 5.0]), np.array([15.0, 16.0, 10.0])
    perm = [0, 2, 1]  # the same Dice values, summed in another order: a last-bit larger mean
    sweep_all = np.zeros((3, len(P.MAVL_THRESHOLDS)))
    sweep_in = np.zeros((3, len(P.MAVL_THRESHOLDS)))
    sweep_all[:, 0], sweep_in[:, 0] = above, inside
    sweep_all[:, 1], sweep_in[:, 1] = above[perm], inside[perm]
    dice = 2 * sweep_in[:, :2] / (sweep_all[:, :2] + 10)
    assert dice.mean(axis=0)[1] > dice.mean(axis=0)[0]  # np.argmax alone would take the second
    d = FindingData(region_px=np.ones(3, np.int64), total_px=np.ones(3, np.int64),
                    hits_all=np.zeros((3, 101), np.int64), hits_region=np.zeros((3, 101), np.int64),
                    extra={"mavl_sweep_all": sweep_all, "mavl_sweep_region": sweep_in,
                           "mavl_region_px": np.full(3, 10.0), "mavl_pointing": np.ones(3)}, protocol="mavl")
    got, res = protocol(d), extra_resamples(d, np.ones((1, 3)))
    assert got["mavl_threshold"] == float(P.MAVL_THRESHOLDS[0]) == res["mavl_threshold"][0]
