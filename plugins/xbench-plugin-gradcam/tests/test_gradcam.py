"""Tests of the pytorch-grad-cam explainers: conformance on tiny CNN and ViT-like models, the
package's Grad-CAM against xbench-plugin-explainers' hand-written one and a naive formula, HiResCAM
and LayerCAM against their definitions, hygiene (parameters, hooks, modes), and `xbench run` with
CLIP and MedKLIP at random weights on the phantom (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from xbench_plugin_gradcam import METHODS

from xbench_core import FeatureLayer, MapError, Model, ModelOutput
from xbench_core.geometry import squash
from xbench_core.testing import ExplainerPluginTests, get_registry

FINDINGS = ["nodule", "mass", "pneumothorax"]
INPUT, PATCH = (24, 32), 4
GRID = (INPUT[0] // PATCH, INPUT[1] // PATCH)


class _Net(nn.Module):
    def __init__(self, k: int, tokens: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, k, PATCH, stride=PATCH)
        self.bn = nn.BatchNorm2d(k)
        self.act = nn.ReLU()
        self.tokens = tokens
        self.cls = nn.Parameter(torch.randn(1, 1, k, generator=g))
        self.head = nn.Linear(k, k)
        with torch.no_grad():
            for p in (self.conv.weight, self.conv.bias, self.head.weight, self.head.bias):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.copy_(torch.randn(k, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(k, generator=g) + 0.5)
        self.block = nn.Identity()  # the feature layer

    def forward(self, x: Any) -> Any:
        a = self.act(self.bn(self.conv(x)))
        if self.tokens:
            t = a.flatten(2).transpose(1, 2)
            a = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        return self.block(a)


def tokens_to_grid(t: Any) -> Any:
    return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *GRID)


class Toy(Model):
    """logit_f = q_f . head(mean of the features)^2-ish: non-linear above the feature layer, so
    that Grad-CAM, HiResCAM and LayerCAM differ."""

    map_kind = "similarity"

    def __init__(self, tokens: bool = False, k: int = 6) -> None:
        self.module = _Net(k, tokens).eval()
        g = torch.Generator().manual_seed(1)
        self.vectors = {f: torch.randn(k, generator=g) for f in FINDINGS}
        self.queries = {f: f for f in FINDINGS}
        self.tokens = tokens

    def preprocess(self, image: np.ndarray) -> tuple[Any, Any]:
        pixels, geometry = squash(image, INPUT)
        return torch.from_numpy(pixels)[None].expand(3, -1, -1).clone(), geometry

    def encode_queries(self, findings: Sequence[str]) -> Any:
        return torch.stack([self.vectors[f] for f in findings])

    def _grid(self, x: Any) -> Any:
        a = self.module(x)
        return tokens_to_grid(a) if self.tokens else a

    def logits(self, pixels: Any, queries: Any) -> Any:
        a = self._grid(pixels)
        weights = torch.linspace(0.5, 1.5, a.shape[-1])  # position-dependent pooling
        pooled = (a * weights).mean(dim=(2, 3))
        queries = queries.clone() if queries.is_inference() else queries  # as real models do
        return torch.tanh(self.module.head(pooled)) @ queries.T

    def forward(self, pixels: Any, queries: Any) -> ModelOutput:
        logits = self.logits(pixels, queries)
        maps = torch.einsum("bkhw,fk->bfhw", self._grid(pixels), queries)
        return ModelOutput(scores=torch.sigmoid(logits), maps={"similarity": maps})

    def feature_layer(self) -> FeatureLayer:
        return FeatureLayer(self.module.block, tokens_to_grid if self.tokens else (lambda a: a))


def batch(model: Model, n: int = 3) -> Any:
    rng = np.random.default_rng(0)
    return torch.stack(
        [model.preprocess(rng.random((30, 40), dtype=np.float32))[0] for _ in range(n)]
    )


def explain(name: str, model: Model, pixels: Any, **options: Any) -> Any:
    """As the engine calls it: queries and forward under inference mode; gradient-free explainers too."""
    spec = get_registry().explainers[name]
    explainer = spec.build(**options)
    with torch.inference_mode():
        queries = model.encode_queries(FINDINGS)
        output = model.forward(pixels, queries)
    if spec.needs_grad:
        return explainer.explain(model, pixels, queries, output)
    with torch.inference_mode():
        return explainer.explain(model, pixels, queries, output)


def minmax(maps: Any) -> Any:
    flat = maps.flatten(2)
    lo, hi = flat.min(-1, keepdim=True)[0], flat.max(-1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def naive(model: Toy, pixels: Any, f: int | torch.Tensor, kind: str) -> Any:
    """Grad-CAM / HiResCAM / LayerCAM of finding f's logit (or of the logits weighted by f), image
    by image, from their definitions."""
    out = []
    queries = model.encode_queries(FINDINGS)
    for x in pixels:
        a = model._grid(x[None]).detach().requires_grad_(True)
        weights = torch.linspace(0.5, 1.5, a.shape[-1])
        logits = (torch.tanh(model.module.head((a * weights).mean(dim=(2, 3)))) @ queries.T)[0]
        logit = logits[f] if isinstance(f, int) else logits @ f
        (g,) = torch.autograd.grad(logit, a)
        a, g = a[0].detach(), g[0]
        if kind == "gradcam":
            cam = torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0))
        elif kind == "hirescam":
            cam = torch.relu((g * a).sum(0))
        else:  # layercam
            cam = torch.relu((torch.relu(g) * a).sum(0))
        out.append(cam)
    return torch.stack(out)


@pytest.mark.parametrize("tokens", [False, True], ids=["cnn", "tokens"])
@pytest.mark.parametrize("kind", ["hirescam", "layercam"])
def test_methods_match_their_definitions(kind: str, tokens: bool) -> None:
    model = Toy(tokens=tokens)
    pixels = batch(model)
    maps = explain(kind, model, pixels)
    assert maps.shape == (3, 3, *GRID)
    for f in range(3):
        want = minmax(naive(model, pixels, f, kind)[:, None])[:, 0]
        assert torch.allclose(maps[:, f], want, atol=1e-5), (kind, f)


@pytest.mark.parametrize("tokens", [False, True], ids=["cnn", "tokens"])
def test_package_gradcam_equals_ours(tokens: bool) -> None:
    """The package's Grad-CAM through this adapter = xbench-plugin-explainers' `gradcam` = the
    definition, after the core's min-max normalization."""
    from xbench_plugin_gradcam.methods import CAMExplainer

    model = Toy(tokens=tokens)
    pixels = batch(model)
    with torch.inference_mode():
        queries = model.encode_queries(FINDINGS)
        output = model.forward(pixels, queries)
    package = CAMExplainer("GradCAM", needs_grad=True).explain(model, pixels, queries, output)
    for f in range(3):
        want = minmax(naive(model, pixels, f, "gradcam")[:, None])[:, 0]
        assert torch.allclose(package[:, f], want, atol=1e-5)
    if "gradcam" not in get_registry().explainers:
        pytest.skip("xbench-plugin-explainers is not installed")
    ours = explain("gradcam", model, pixels)
    assert (ours > 0).any()
    assert torch.allclose(minmax(ours), package, atol=1e-5)


def test_class_agnostic_methods_repeat_one_map() -> None:
    model = Toy()
    maps = explain("eigencam", model, batch(model))
    assert torch.equal(maps[:, 0], maps[:, 1]) and torch.equal(maps[:, 0], maps[:, 2])
    assert maps.amax(dim=(2, 3)).allclose(torch.ones(3, 3), atol=1e-6)


def test_fullgrad_is_at_input_resolution() -> None:
    model = Toy()
    maps = explain("fullgrad", model, batch(model, 2))
    assert maps.shape == (2, 3, *INPUT) and torch.isfinite(maps).all()


def test_batch_independence_of_perturbation_methods() -> None:
    model = Toy()
    pixels = batch(model)
    whole = explain("scorecam", model, pixels, batch=4)
    alone = explain("scorecam", model, pixels[1:2], batch=4)
    assert torch.allclose(whole[1:2], alone, atol=1e-6)


def test_hygiene_parameters_hooks_and_modes() -> None:
    model = Toy(tokens=True)
    before = {n: p.requires_grad for n, p in model.module.named_parameters()}
    explain("hirescam", model, batch(model))
    explain("ablationcam", model, batch(model), batch=8)
    assert all(p.grad is None for p in model.module.parameters())
    assert {n: p.requires_grad for n, p in model.module.named_parameters()} == before
    assert not model.module.training and torch.is_grad_enabled()
    assert isinstance(model.module.block, nn.Identity)  # the ablation layer was put back
    for m in model.module.modules():
        assert not m._forward_hooks and not m._backward_hooks
    model.module.train()
    with pytest.raises(MapError, match="training mode"):
        explain("hirescam", model, batch(model))


class _Conformance(ExplainerPluginTests):
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Model:
        return Toy(tokens=True)

    def test_requires(self) -> None:
        assert get_registry().explainers[self.name].requires == {"logits", "feature_layer"}


for _name in METHODS:  # one conformance class per method (the suite reads `name`)
    globals()[f"TestConformance_{_name}"] = type(f"TestConformance_{_name}", (_Conformance,), {"name": _name})


PERTURBATION = ("scorecam", "ablationcam")  # K forwards per image and finding


def _xbench() -> list[str]:
    exe = Path(sys.executable).with_name("xbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "xbench_core"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["clip", "medklip"])
def test_every_method_through_xbench_run(model: str, tmp_path: Path) -> None:
    """Each gradient and eigen method, at random weights, on a phantom image through `xbench run`;
    maps not constant, no errors. (Score-CAM and Ablation-CAM: the next test, one finding.)"""
    if model not in get_registry().models:
        pytest.skip(f"model plugin {model!r} is not installed")
    run = tmp_path / "run"
    names = sorted(set(METHODS) - set(PERTURBATION))
    proc = subprocess.run(
        [*_xbench(), "run", "--models", model, "--set", f"{model}.checkpoint=random",
         "--explainers", ",".join(names), "--set", "phantom.size=2",
         "--set", "phantom.resolution=64", "--limit", "1", "--device", "cpu", "--out", str(run)],
        capture_output=True, text=True, env=dict(os.environ), timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert not results["skipped_explainers"] and not results["errors"], results["errors"][:3]
    assert {r["explainer"] for r in results["rows"]} == set(names)
    for name in names:
        folder = run / "records" / "phantom" / model / name
        records = [
            json.loads(x) for f in folder.glob("*.jsonl") for x in f.read_text().splitlines()
        ]
        scored = [r for r in records if r["stats"] is not None]
        assert scored and not [r for r in scored if r["stats"]["constant_map"]], name


@pytest.mark.slow
@pytest.mark.parametrize("model", ["clip", "medklip"])
@pytest.mark.parametrize("name", PERTURBATION)
def test_perturbation_methods_on_real_models(model: str, name: str) -> None:
    """Score-CAM and Ablation-CAM at random weights on one phantom image and one finding, called as
    the engine calls them (inference mode): finite, not constant, on the feature grid."""
    from xbench_core.builtin.phantom import Phantom

    if model not in get_registry().models:
        pytest.skip(f"model plugin {model!r} is not installed")
    m = get_registry().models[model].build(checkpoint="random")
    m.module.eval()
    phantom = Phantom(2, resolution=64)
    image = phantom.load_image(phantom.annotation(0))
    pixels = m.preprocess(image)[0][None]
    with torch.inference_mode():
        queries = m.encode_queries(["pleural_effusion"])
        output = m.forward(pixels, queries)
        maps = get_registry().explainers[name].build(batch=64).explain(m, pixels, queries, output)
    assert maps.shape == (1, 1, 14, 14) and torch.isfinite(maps).all()
    assert float(maps.max() - maps.min()) > 0


def test_finercam_against_its_definition() -> None:
    """One queried finding: nothing to compare with, so Finer-CAM is Grad-CAM of the finding's
    logit whatever alpha (the package alone, with no comparison class, weighs an empty sum: a zero
    target and a blank map). Two: Grad-CAM of the logit minus alpha times the other one's (the
    softmax weight of the single comparison divides out)."""
    from xbench_plugin_gradcam.methods import CAMExplainer

    model = Toy(k=16)  # every map below has positive values: a blank one would prove nothing
    pixels = batch(model)

    def finercam(findings: list[str], alpha: float) -> Any:
        with torch.inference_mode():
            queries = model.encode_queries(findings)
            output = model.forward(pixels, queries)
        return CAMExplainer("FinerCAM", True, alpha=alpha).explain(model, pixels, queries, output)

    for f, finding in enumerate(FINDINGS):
        want = minmax(naive(model, pixels, f, "gradcam")[:, None])
        assert (want.amax(dim=(1, 2, 3)) == 1).all()
        for alpha in (1.0, 0.3):
            assert torch.allclose(finercam([finding], alpha), want, atol=1e-5), (finding, alpha)
    pair = finercam(FINDINGS[:2], 0.5)
    for f, other in ((0, 1), (1, 0)):
        weights = torch.zeros(len(FINDINGS))
        weights[f], weights[other] = 1.0, -0.5
        want = minmax(naive(model, pixels, weights, "gradcam")[:, None])[:, 0]
        assert (want.amax(dim=(1, 2)) == 1).all()
        assert torch.allclose(pair[:, f], want, atol=1e-5), f
        assert not torch.allclose(want, minmax(naive(model, pixels, f, "gradcam")[:, None])[:, 0])


def test_one_instance_serves_models_alternately_and_reentrantly() -> None:
    """Calls share no state: one Finer-CAM instance (its maps depend on how many findings are
    queried) explains a 3-finding CNN and a 1-finding token model alternately, and once with the
    second call made from inside the first one's forward pass (as a second thread would), each
    equal to a fresh instance's maps."""
    from xbench_plugin_gradcam.methods import CAMExplainer

    def inputs(model: Toy, findings: list[str]) -> tuple[Any, ...]:
        pixels = batch(model)
        with torch.inference_mode():
            queries = model.encode_queries(findings)
            return model, pixels, queries, model.forward(pixels, queries)

    cnn = Toy(k=16)
    a, b = inputs(cnn, FINDINGS), inputs(Toy(tokens=True), FINDINGS[:1])
    want_a = CAMExplainer("FinerCAM", True, alpha=0.5).explain(*a)
    want_b = CAMExplainer("FinerCAM", True, alpha=0.5).explain(*b)
    shared = CAMExplainer("FinerCAM", True, alpha=0.5)
    for args, want in ((a, want_a), (b, want_b), (a, want_a), (b, want_b)):
        assert torch.equal(shared.explain(*args), want)
    nested: list[Any] = []
    logits = cnn.logits

    def logits_calling_the_other(pixels: Any, queries: Any) -> Any:
        if not nested:
            nested.append(shared.explain(*b))
        return logits(pixels, queries)

    cnn.logits = logits_calling_the_other  # type: ignore[method-assign]
    assert torch.equal(shared.explain(*a), want_a)
    assert nested and torch.equal(nested[0], want_b)
