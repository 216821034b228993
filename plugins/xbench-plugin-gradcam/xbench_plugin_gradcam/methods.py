"""pytorch-grad-cam's CAM methods behind XBench's Explainer interface.

The package explains `nn.Module(x) -> logits [B, classes]` at `target_layers`, with a
`reshape_transform` turning the layer's output into [B, K, gh, gw]. An XBench model offers the same
pieces under other names, so the adapter is short:
- the module is `_Logits`: `model.logits(x, queries)` (differentiable, one column per queried
  finding), holding `model.module` as a child so that the package finds the device and, for FullGrad,
  the model's layers;
- the target layer is `model.feature_layer().module` and the reshape is its `to_grid` (for ViT tokens:
  drop the prefix tokens and fold the rest into the patch grid, the package's own recipe for ViTs);
- one package call per finding (targets = that column for every image), maps stacked to [B, F, ...].

Where the maps live: the package scales every map to the input size with OpenCV; here the maps stay
on the feature grid (the target size is the grid), like xbench-plugin-explainers' Grad-CAM, and the
core maps them back to the image. FullGrad, which sums input-resolution terms, stays at input size.
The package min-max scales each map (the core does it again: no change to grounding statistics).

Hygiene, as for our own Grad-CAM: eval mode is required (not switched), the model's parameters are
frozen for the call and restored (the package calls `loss.backward()`, which would otherwise fill
every parameter's `.grad`), the pixels get `requires_grad` so that the graph exists with frozen
parameters, hooks are released in `finally`, and the package's progress bars are kept off stderr.
An instance holds only its configuration: each call builds its own package object, hooks and
finding count, so one instance serves any number of models, in turn or nested.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from xbench_core import Explainer, MapError, Model, ModelOutput


class _Logits(torch.nn.Module):
    """`model.logits(x, queries)` as the classifier module the package explains."""

    def __init__(self, model: Model, queries: Any) -> None:
        super().__init__()
        self.inner = model.module
        self._model = model
        self._queries = queries

    def forward(self, x: Any) -> Any:
        logits = self._model.logits(x, self._queries)
        if getattr(logits, "ndim", None) != 2 or logits.shape[0] != x.shape[0]:
            raise MapError(
                f"model.logits returned shape {tuple(getattr(logits, 'shape', ()))}; "
                f"expected [B={x.shape[0]}, F]"
            )
        return logits


def _on_grid(cls: type) -> type:
    """`cls` with its maps left on the feature grid instead of resized to the input."""

    class OnGrid(cls):  # type: ignore[misc, valid-type]
        def get_target_width_height(self, input_tensor: Any) -> tuple[int, int]:
            acts = self.activations_and_grads.activations
            if not acts:
                return super().get_target_width_height(input_tensor)
            grid = acts[0]
            if not self.detach and self.reshape_transform is not None:
                grid = self.reshape_transform(grid)  # detach=False keeps raw outputs
            return int(grid.shape[-1]), int(grid.shape[-2])

    OnGrid.__name__ = OnGrid.__qualname__ = cls.__name__
    return OnGrid


def _ablation_layers() -> tuple[type, type]:
    """The package's ablation layers, also callable with the extra arguments a transformer block
    receives (open_clip calls `block(x, attn_mask=...)`)."""
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit

    class Maps(AblationLayer):
        def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(x)

    class Tokens(AblationLayerVit):
        def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(x)

    return Maps, Tokens


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No tqdm progress bars (ScoreCAM, AblationCAM) on the run's stderr: the two modules' `tqdm`
    name is pointed at a pass-through for the duration (tqdm itself is left alone)."""
    from unittest import mock

    from pytorch_grad_cam import ablation_cam, score_cam

    silent = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    with (
        mock.patch.object(score_cam, "tqdm", silent),
        mock.patch.object(ablation_cam, "tqdm", silent),
    ):
        yield


@contextlib.contextmanager
def _frozen(module: Any) -> Iterator[None]:
    """Parameters without requires_grad for the duration (restored as they were)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class CAMExplainer(Explainer):
    """One pytorch-grad-cam method (by class name) as an XBench explainer."""

    requires = frozenset({"logits", "feature_layer"})
    per_image = False  # perturbation methods: one image at a time bounds their memory
    class_agnostic = False  # EigenCAM, KPCA-CAM: one map per image, shared by every finding

    def __init__(self, method: str, needs_grad: bool, **options: Any) -> None:
        self.method = method
        self.needs_grad = needs_grad
        self.options = options

    # ---- the package object for one batch --------------------------------------------------
    def _cam(self, module: _Logits, layer: Any, to_grid: Any, probe: Any) -> Any:
        import pytorch_grad_cam as pgc

        cls = getattr(pgc, self.method)
        if self.method == "FullGrad":
            return cls(module, [], reshape_transform=None)
        if self.method == "FinerCAM":
            return cls(
                module, [layer], reshape_transform=to_grid, base_method=_on_grid(pgc.GradCAM)
            )
        kwargs: dict[str, Any] = {}
        if self.method == "KPCA_CAM":
            kwargs["kernel"] = self.options["kernel"]
        if self.method == "AblationCAM":
            maps, tokens = _ablation_layers()
            kwargs["ablation_layer"] = maps() if probe.ndim == 4 else tokens()
            kwargs["batch_size"] = self.options["batch"]
            kwargs["ratio_channels_to_ablate"] = self.options["ratio"]
        cam = _on_grid(cls)(module, [layer], reshape_transform=to_grid, **kwargs)
        if self.method == "ScoreCAM":
            cam.batch_size = self.options["batch"]
        return cam

    def _one(self, cam: Any, x: Any, finding: int, n: int) -> np.ndarray:
        """The maps of one finding (of the `n` queried) for the images `x`."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(finding)] * x.shape[0]
        if self.method == "FinerCAM":
            if n < 2:  # nothing to compare with: Finer-CAM is Grad-CAM of the logit
                return cam.base_cam(x, targets=targets)
            return cam(x, targets=None, alpha=self.options["alpha"], target_idx=finding)
        return cam(x, targets=targets)

    # ---- the Explainer interface -------------------------------------------------------------
    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        """Maps [B, F, gh, gw] on the feature grid (FullGrad: input size), float32, detached."""
        if model.module is not None and getattr(model.module, "training", False):
            raise MapError(
                "the model is in training mode; CAM explainers need eval mode (BatchNorm and "
                "dropout would mix the images of a batch): call model.module.eval() first"
            )
        n = int(output.scores.shape[1])
        layer = model.feature_layer()
        module = _Logits(model, queries)
        grad = torch.inference_mode(False) if self.needs_grad else contextlib.nullcontext()
        frozen = _frozen(model.module) if self.needs_grad else contextlib.nullcontext()
        with grad, frozen, _quiet():
            x = pixels.clone() if (self.needs_grad and pixels.is_inference()) else pixels
            if self.needs_grad:
                x = x.detach().requires_grad_(True)
            probe = (
                _raw_output(model, layer.module, x[:1], queries)
                if self.method == "AblationCAM"
                else None
            )
            cam = self._cam(module, layer.module, layer.to_grid, probe)
            try:
                with torch.set_grad_enabled(self.needs_grad):
                    chunks = [x[i : i + 1] for i in range(len(x))] if self.per_image else [x]
                    per_chunk = [self._chunk(cam, c, n) for c in chunks]
            finally:
                _release(cam)
        maps = np.concatenate(per_chunk, axis=0)
        if not np.isfinite(maps).all():
            raise MapError(f"{self.method} gave non-finite values")
        return torch.from_numpy(maps).to(pixels.device)

    def _chunk(self, cam: Any, x: Any, n: int) -> np.ndarray:
        if not n:
            return np.zeros((len(x), 0, 1, 1), np.float32)
        if self.class_agnostic:
            return np.stack([self._one(cam, x, 0, n)] * n, axis=1)
        return np.stack([self._one(cam, x, f, n) for f in range(n)], axis=1).astype(np.float32)


def _raw_output(model: Model, layer: Any, x: Any, queries: Any) -> Any:
    """The feature layer's raw output on one image (its layout decides the ablation layer)."""
    seen: list[Any] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model.logits(x, queries)
    finally:
        handle.remove()
    if not seen or not isinstance(seen[0], torch.Tensor) or seen[0].ndim not in (3, 4):
        raise MapError(
            "AblationCAM needs a feature layer that returns one tensor, [B, K, h, w] maps or "
            "[B, tokens, K] tokens"
        )
    return seen[0]


def _release(cam: Any) -> None:
    base = getattr(cam, "base_cam", cam)  # FinerCAM wraps a Grad-CAM
    base.activations_and_grads.release()


def _build(
    method: str, needs_grad: bool, per_image: bool, agnostic: bool, **options: Any
) -> CAMExplainer:
    explainer = CAMExplainer(method, needs_grad, **options)
    explainer.per_image = per_image
    explainer.class_agnostic = agnostic
    return explainer


def _registry() -> SimpleNamespace:
    from . import METHODS

    perturb = {"ScoreCAM", "AblationCAM"}
    agnostic = {"EigenCAM", "KPCA_CAM"}
    return SimpleNamespace(
        **{
            name: partial(_build, cls, needs_grad, cls in perturb, cls in agnostic)
            for name, (cls, _summary, needs_grad, _options) in METHODS.items()
        }
    )


BY_NAME = _registry()  # spec factories: "xbench_plugin_gradcam.methods:BY_NAME.<name>"
