"""Tests of gradcam, gradcampp and rise: conformance suites, known answers on tiny models, a naive
per-image reference, hygiene (hooks, memory, grad mode, eval mode), and runs through `xbench run`."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xbench_core import ConfigError, MapError, get_registry
from xbench_core.testing import ExplainerPluginTests, encode_queries, explain, forward

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from xbench_explainers_toys import (  # noqa: E402
    GRID,
    INPUT,
    REGION,
    ToyConv,
    ToyTokens,
    tokens_to_grid,
)

FINDINGS = ["nodule", "mass", "pneumothorax"]


def explainer(name: str, **options: Any) -> Any:
    return get_registry().explainers[name].build(**options)


def batch(model: Any, n: int, seed: int = 0, size: tuple[int, int] = (60, 80)) -> Any:
    rng = np.random.default_rng(seed)
    return torch.stack([model.preprocess(rng.random(size, dtype=np.float32))[0] for _ in range(n)])


def run(model: Any, name: str, pixels: Any, findings: list[str] = FINDINGS, **options: Any) -> Any:
    """Call an explainer the way the engine does (xbench_core.testing's engine calls)."""
    queries = encode_queries(model, findings)
    output = forward(model, pixels, queries)
    needs_grad = get_registry().explainers[name].needs_grad
    return explain(explainer(name, **options), needs_grad, model, pixels, queries, output)


def in_region(y: int, x: int, shape: tuple[int, int]) -> bool:
    """Whether cell (y, x) of a map of `shape` (grid or input resolution) lies in REGION."""
    r0, r1, c0, c1 = REGION
    fy, fx = GRID[0] / shape[0], GRID[1] / shape[1]
    return r0 <= y * fy < r1 and c0 <= x * fx < c1


def peak(m: Any) -> tuple[int, int]:
    flat = int(torch.argmax(m))
    return flat // m.shape[-1], flat % m.shape[-1]


# ---- conformance suites ----------------------------------------------------------------------
class TestGradCAMConformance(ExplainerPluginTests):
    name = "gradcam"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Any:
        return ToyConv(detector=False, batchnorm=True)


class TestGradCAMPlusPlusConformance(ExplainerPluginTests):
    name = "gradcampp"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Any:
        return ToyTokens()


class TestRISEConformance(ExplainerPluginTests):
    name = "rise"
    options = {"masks": 100}  # noqa: RUF012 - read once by the suite's fixture

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Any:
        return ToyConv(gain=20.0, bias=-2.0)


def test_specs_declare_what_they_need() -> None:
    specs = get_registry().explainers
    assert specs["gradcam"].requires == {"logits", "feature_layer"} and specs["gradcam"].needs_grad
    assert (
        specs["gradcampp"].requires == {"logits", "feature_layer"} and specs["gradcampp"].needs_grad
    )
    assert specs["rise"].requires == frozenset() and not specs["rise"].needs_grad
    assert {o.name for o in specs["rise"].options} == {
        "masks",
        "cells",
        "p",
        "batch",
        "seed",
        "grid",
    }
    with pytest.raises(ConfigError, match="did you mean 'masks'"):
        specs["rise"].build(mask=10)
    for bad in ({"masks": 0}, {"p": 0.0}, {"p": 1.5}, {"batch": 0}):
        with pytest.raises(ConfigError):
            specs["rise"].build(**bad)


def test_entry_module_is_light() -> None:
    code = "import sys, xbench_plugin_explainers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- Grad-CAM / Grad-CAM++: known answers --------------------------------------------------
@pytest.mark.parametrize("kind", ["cnn", "tokens"])
def test_gradcam_on_a_linear_model_is_the_analytic_map(kind: str) -> None:
    """logit_f = sum_k q_fk mean(A_k): d logit / dA_k = q_fk / (gh gw) everywhere, so Grad-CAM is
    ReLU(sum_k q_fk / (gh gw) A_k) exactly (for tokens: the class token's gradient is dropped)."""
    model = ToyConv(region=None, detector=False) if kind == "cnn" else ToyTokens()
    pixels = batch(model, 3)
    maps = run(model, "gradcam", pixels)
    with torch.no_grad():
        a = model.features(pixels)
        a = tokens_to_grid(a) if kind == "tokens" else a
        q = model.encode_queries(FINDINGS)
    expected = torch.relu(
        torch.einsum("bkhw,fk->bfhw", a.double(), q.double()) / (GRID[0] * GRID[1])
    )
    assert maps.shape == (3, 3, *GRID) and maps.dtype == torch.float32
    # the ReLU bites: some cells are zero
    assert float(expected.max()) > 1e-3 and float((expected == 0).double().mean()) > 0.05
    # float32 sums of terms of both signs: absolute tolerance relative to the map's scale
    torch.testing.assert_close(
        maps.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.max())
    )


def test_gradcampp_on_a_linear_model_is_the_closed_form() -> None:
    """With g_k = q_k / (gh gw) constant over the grid and S_k = sum A_k:
    alpha_k = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g_k), w_k = gh gw ReLU(g_k) alpha_k."""
    model = ToyConv(region=None, detector=False)
    pixels = batch(model, 3, seed=1)
    maps = run(model, "gradcampp", pixels)
    with torch.no_grad():
        a = model.features(pixels).double().numpy()
        q = model.encode_queries(FINDINGS).double().numpy()
    n = GRID[0] * GRID[1]
    g = q / n  # [F, K]
    s = a.sum(axis=(2, 3))  # [B, K]
    alpha = 1.0 / (2.0 + s[:, None, :] * g[None])  # [B, F, K]
    w = n * np.maximum(g, 0)[None] * alpha
    expected = np.maximum(np.einsum("bfk,bkhw->bfhw", w, a), 0)
    assert (q < 0).any() and (q > 0).any()  # channels of both signs, so the ReLU(g) matters
    np.testing.assert_allclose(
        maps.double().numpy(), expected, rtol=1e-5, atol=1e-6 * expected.max()
    )
    # pytorch-grad-cam's "+ 1e-6" in the denominator would move this answer (|g| ~ 1e-3 here):
    eps_alpha = g[None] ** 2 / (2 * g[None] ** 2 + s[:, None, :] * g[None] ** 3 + 1e-6)
    assert np.abs(eps_alpha - alpha).max() > 0.01


def _naive(model: Any, pixels: Any, queries: Any, method: str) -> np.ndarray:
    """One image, one finding, one backward at a time, with retain_grad; numpy formulas."""
    b_n, f_n = pixels.shape[0], queries.shape[0]
    out = np.zeros((b_n, f_n, *GRID))
    layer = model.feature_layer().module
    for b in range(b_n):
        for f in range(f_n):
            kept: dict[str, Any] = {}

            def hook(_m: Any, _i: Any, o: Any, kept: dict[str, Any] = kept) -> None:
                o.retain_grad()
                kept["a"] = o

            handle = layer.register_forward_hook(hook)
            try:
                with torch.enable_grad():
                    model.logits(pixels[b : b + 1], queries)[0, f].backward()
            finally:
                handle.remove()
            a = kept["a"].detach().double().numpy()[0]
            g = kept["a"].grad.double().numpy()[0]
            if method == "gradcam":
                w = g.mean(axis=(1, 2))
            else:
                den = 2 * g**2 + a.sum(axis=(1, 2))[:, None, None] * g**3
                alpha = np.where(den != 0, g**2 / np.where(den != 0, den, 1.0), 0.0)
                w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
            out[b, f] = np.maximum((w[:, None, None] * a).sum(axis=0), 0)
    model.module.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_batched_cams_equal_a_naive_per_image_loop(method: str) -> None:
    """A nonlinear logit (curvature), BatchNorm in eval mode and a region: the batch-summed
    gradient of each finding must give every image its own gradient."""
    model = ToyConv(detector=False, batchnorm=True, curvature=3.0, seed=3)
    pixels = batch(model, 4, seed=2)
    maps = run(model, method, pixels)
    queries = model.encode_queries(FINDINGS)
    expected = _naive(model, pixels, queries, method)
    assert expected.max() > 0
    np.testing.assert_allclose(
        maps.double().numpy(), expected, rtol=1e-4, atol=1e-6 * expected.max()
    )


def _region_image(decoy: str) -> np.ndarray:
    """Grey noise, a bright blob inside REGION and a `decoy` ("dark" or "bright") blob outside."""
    rng = np.random.default_rng(5)
    img = np.clip(0.5 + rng.normal(0, 0.02, INPUT), 0, 1).astype(np.float32)
    img[10:22, 38:50] = 1.0  # grid rows 2.5..5.5, columns 9.5..12.5: inside REGION
    img[28:40, 4:16] = 0.0 if decoy == "dark" else 1.0  # grid rows 7..10, columns 1..4: outside
    return img


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_cam_of_the_region_model_peaks_in_the_region(method: str) -> None:
    model = ToyConv(gain=20.0, bias=-2.0)
    pixels = model.preprocess(_region_image("dark"))[0][None]
    maps = run(model, method, pixels, ["nodule", "mass"])
    nodule, mass = maps[0, 0], maps[0, 1]
    assert in_region(*peak(nodule), GRID)
    assert float(nodule[8, 2]) == 0.0  # the dark blob
    # Grad-CAM's channel weights are spatial means: for "mass" (darkness inside the region) it
    # shows where the dark channel fires, the dark blob outside the region (a property of the
    # method, which is what the benchmark measures).
    assert not in_region(*peak(mass), GRID) and float(mass[8, 2]) == float(mass.max())


@pytest.mark.parametrize("grid", ["native", "input"])
def test_rise_of_the_region_model_peaks_in_the_region_despite_a_decoy(grid: str) -> None:
    model = ToyConv(gain=20.0, bias=-2.0)
    pixels = model.preprocess(_region_image("bright"))[0][None]
    maps = run(model, "rise", pixels, ["nodule"], grid=grid)[0, 0]
    shape = GRID if grid == "native" else INPUT
    assert tuple(maps.shape) == shape
    assert in_region(*peak(maps), shape)
    f = shape[0] // GRID[0]
    inside = maps[3 * f : 5 * f, 10 * f : 12 * f].mean()
    decoy = maps[8 * f : 9 * f, 2 * f : 3 * f].mean()
    assert float(inside) > float(decoy) + 0.05
    # Grad-CAM cannot tell the decoy from the real blob: both get the same value.
    cam = run(model, "gradcam", pixels, ["nodule"])[0, 0]
    assert float(cam[3, 10]) == pytest.approx(float(cam[8, 2])) and float(cam.max()) > 0


# ---- RISE: masks, cost, batching ------------------------------------------------------------
def test_rise_masks_follow_the_recipe() -> None:
    rise = explainer("rise", masks=400, cells=7, p=0.5, seed=3)
    m = rise.masks(0, 400, (48, 64), torch.device("cpu"))
    assert m.shape == (400, 48, 64) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert abs(float(m.mean()) - 0.5) < 0.03  # E[mask] = p
    assert torch.equal(
        m, explainer("rise", masks=400, cells=7, p=0.5, seed=3).masks(0, 400, (48, 64), "cpu")
    )
    assert not torch.equal(m, explainer("rise", masks=400, seed=4).masks(0, 400, (48, 64), "cpu"))
    # a chunk is the same masks as the whole set's slice (batches do not change the masks)
    torch.testing.assert_close(rise.masks(100, 150, (48, 64), "cpu"), m[100:150])
    # smooth: neighbouring pixels differ by at most one cell's bilinear step
    assert float((m[:, :, 1:] - m[:, :, :-1]).abs().max()) <= 1.0 / 8 + 1e-6


class _Counting(ToyConv):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls, self.images = 0, 0

    def forward(self, pixels: Any, queries: Any) -> Any:
        self.calls += 1
        self.images += pixels.shape[0]
        return super().forward(pixels, queries)


def test_rise_cost_and_independence_from_batching() -> None:
    model = _Counting(gain=20.0, bias=-2.0)
    pixels = batch(model, 3, seed=4)
    queries = encode_queries(model, FINDINGS)
    output = forward(model, pixels, queries)
    model.calls = model.images = 0
    whole = explainer("rise", masks=120, batch=50).explain(model, pixels, queries, output)
    assert (model.calls, model.images) == (3 * 3, 3 * 120)  # ceil(120/50) calls per image
    other = explainer("rise", masks=120, batch=7).explain(model, pixels, queries, output)
    torch.testing.assert_close(whole, other, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        single = explainer("rise", masks=120).explain(
            model, pixels[1:2], queries, model.forward(pixels[1:2], queries)
        )
    torch.testing.assert_close(whole[1:2], single, rtol=1e-5, atol=1e-6)


def test_rise_of_a_constant_score_is_the_mask_average() -> None:
    """score = c for every masked image: saliency = c * mean_i(mask_i) / p, close to c."""
    model = ToyConv(region=None, detector=False)
    pixels = batch(model, 1)
    queries = model.encode_queries(["nodule"])
    output = model.forward(pixels, queries)

    def constant(_px: Any, _q: Any) -> Any:
        from xbench_core import ModelOutput

        return ModelOutput(scores=torch.full((_px.shape[0], 1), 0.25), maps={})

    model.forward = constant  # type: ignore[method-assign]
    rise = explainer("rise", masks=300, grid="input")
    maps = rise.explain(model, pixels, queries, output)[0, 0]
    expected = 0.25 * rise.masks(0, 300, INPUT, "cpu").mean(0) / 0.5
    torch.testing.assert_close(maps, expected)
    assert abs(float(maps.mean()) - 0.25) < 0.02


# ---- hygiene ---------------------------------------------------------------------------------
def _hook_counts(module: Any) -> tuple[int, ...]:
    return tuple(
        len(getattr(m, attr))
        for m in module.modules()
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )


def _live_tensors() -> int:
    gc.collect()
    # type() rather than isinstance(): isinstance reads __class__, which some lazy modules warn on
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_hooks_memory_grad_mode_and_eval_mode_stay_as_they_were(method: str) -> None:
    model = ToyConv(detector=False, batchnorm=True)
    exp = explainer(method)
    queries = encode_queries(model, FINDINGS)
    before_hooks = _hook_counts(model.module)
    grad_mode = torch.is_grad_enabled()

    def one(seed: int) -> None:
        pixels = batch(model, 4, seed=seed)
        output = forward(model, pixels, queries)
        maps = exp.explain(model, pixels, queries, output)
        assert not maps.requires_grad and maps.grad_fn is None

    for seed in range(3):  # warm up caches
        one(seed)
    tensors = _live_tensors()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    for seed in range(30):
        one(seed)
    gc.collect()
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert _hook_counts(model.module) == before_hooks
    assert _live_tensors() <= tensors
    assert end - start < 64 * 1024, f"Python memory grew by {end - start} bytes over 30 batches"
    assert torch.is_grad_enabled() == grad_mode
    assert not model.module.training
    assert all(p.grad is None for p in model.module.parameters())


def test_hook_is_removed_when_the_model_fails() -> None:
    class Broken(ToyConv):
        def logits(self, pixels: Any, queries: Any) -> Any:
            self.features(pixels)
            raise RuntimeError("boom")

    model = Broken(detector=False)
    before = _hook_counts(model.module)
    with pytest.raises(RuntimeError, match="boom"):
        run(model, "gradcam", batch(model, 2))
    assert _hook_counts(model.module) == before


def test_engine_queries_serve_gradient_explainers_unchanged() -> None:
    """The engine encodes queries under no_grad (not inference mode), so a model's logit can save
    them for backward without a copy; their values are those of an inference-mode encoding, and a
    caller inside torch.no_grad() gets the same maps."""
    model = ToyConv(detector=False)
    pixels = batch(model, 2)
    queries = encode_queries(model, FINDINGS)
    with torch.inference_mode():
        frozen = model.encode_queries(FINDINGS)
    assert not queries.is_inference() and not queries.requires_grad
    assert torch.equal(queries, frozen)
    with torch.enable_grad():
        model.logits(pixels.clone().requires_grad_(True), queries).sum().backward()
    output = forward(model, pixels, queries)
    maps = explain(explainer("gradcam"), True, model, pixels, queries, output)
    assert maps.shape == (2, len(FINDINGS), *GRID) and maps.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(explainer("gradcam").explain(model, pixels, queries, output), maps)


def test_clear_errors_for_unusable_models() -> None:
    model = ToyConv(detector=False)
    pixels = batch(model, 2)
    model.module.train()
    with pytest.raises(MapError, match="eval"):
        run(model, "gradcam", pixels)
    model.module.eval()

    class Detached(ToyConv):
        def logits(self, pixels: Any, queries: Any) -> Any:
            with torch.no_grad():
                return super().logits(pixels, queries)

    with pytest.raises(MapError, match="not differentiable"):
        run(Detached(detector=False), "gradcam", pixels)

    class Twice(ToyConv):
        def logits(self, pixels: Any, queries: Any) -> Any:
            self.features(pixels)
            return super().logits(pixels, queries)

    with pytest.raises(MapError, match="ran 2 times"):
        run(Twice(detector=False), "gradcampp", pixels)


# ---- through the engine ----------------------------------------------------------------------
def _xbench(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(HERE), env.get("PYTHONPATH", "")])
    exe = Path(sys.executable).with_name("xbench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xbench_core"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600)


TINY = [
    "--set",
    "phantom.size=4",
    "--set",
    "phantom.resolution=64",
    "--limit",
    "2",
    "--device",
    "cpu",
]


def test_xbench_run_skips_gradcam_on_the_baselines_and_runs_rise(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _xbench(
        "run",
        "--models",
        "random,center",
        "--explainers",
        "native,gradcam,rise",
        "--set",
        "rise.masks=40",
        *TINY,
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rise = {"name": "rise", "masks": 40, "cells": 7, "p": 0.5, "batch": 50, "seed": 0, "grid": "native"}
    for model in ("random", "center"):
        line = f"skipped explainer gradcam for {model}: {model} lacks feature_layer, logits"
        assert line in proc.stdout
    expected = [
        {"model": m, "explainer": "gradcam", "reason": f"{m} lacks feature_layer, logits"}
        for m in ("random", "center")
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert manifest["skipped_explainers"] == expected
    assert manifest["config"]["explainers"] == ["native", "gradcam", rise]
    assert manifest["identity"]["explainers"] == {"rise": {k: v for k, v in rise.items() if k != "name"}}
    assert results["skipped_explainers"] == expected
    assert not results["errors"]
    ran = {(r["model"], r["explainer"]) for r in results["rows"]}
    assert ran == {(m, e) for m in ("random", "center") for e in ("native", "rise")}
    assert all(r["n_images"] == 2 for r in results["rows"] if r["finding"] == "__mean__")
    assert not (out / "records" / "phantom" / "random" / "gradcam").exists()


def test_xbench_run_explains_a_differentiable_plugin_model(tmp_path: Path) -> None:
    """A third-party model (a throwaway distribution on PYTHONPATH) through all explainers."""
    site = tmp_path / "site"
    info = site / "xbench_explainers_toys-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: xbench-explainers-toys\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[xbench]\ntoys = xbench_explainers_toys\n")
    out = tmp_path / "run"
    proc = _xbench(
        "run",
        "--models",
        "toyconv,center",
        "--explainers",
        "native,gradcam,gradcampp,rise",
        *TINY,
        "--out",
        str(out),
        extra_path=site,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert not results["errors"], results["errors"][:3]
    ran = {(r["model"], r["explainer"]) for r in results["rows"]}
    assert {("toyconv", e) for e in ("native", "gradcam", "gradcampp", "rise")} <= ran
    assert ("center", "gradcampp") not in ran
    records = [
        json.loads(line)
        for e in ("gradcam", "gradcampp", "rise")
        for f in (out / "records" / "phantom" / "toyconv" / e).glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert records and all(r["error"] is None for r in records)
    assert any(r["stats"] is not None for r in records)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "rise"])
def test_under_bf16_autocast_as_on_accelerators(method: str) -> None:
    """The engine wraps explainers in autocast on accelerators; CPU autocast stands in for it
    here: the maps stay float32 and finite, and close to the fp32 maps."""
    model = ToyConv(detector=False, seed=7)
    pixels = batch(model, 2, seed=7)
    options = {"masks": 60} if method == "rise" else {}
    reference = run(model, method, pixels, **options)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        maps = run(model, method, pixels, **options)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    scale = float(reference.abs().max())
    assert float((maps - reference).abs().max()) < 0.05 * scale
