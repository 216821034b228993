"""Grad-CAM and Grad-CAM++ on a model's feature layer, for every finding's logit.

How one batch is explained (both methods share `cam_maps`; they differ only in the channel weights):

1. The engine calls `explain` outside inference mode (the spec says `needs_grad=True`) and, on
   accelerators, inside autocast. Gradients are switched on here and only here
   (`torch.enable_grad()`), so the rest of the run keeps its no-grad speed.
2. A forward hook on `model.feature_layer().module` keeps that layer's output A (CNN maps
   [B, K, gh, gw] or ViT tokens); `model.logits(pixels, queries)` gives the logits [B, F].
3. For finding f, `torch.autograd.grad(logits[:, f].sum(), A)` gives d logit_f / dA for every
   image of the batch at once: in eval mode the images of a batch do not interact (BatchNorm uses
   its running statistics, attention stays within an image), so the gradient of the batch sum with
   respect to image b's activations is the gradient of image b's own logit. That is F backward
   passes per batch (findings are few); the graph is kept between them (`retain_graph`).
4. `to_grid` turns both A and its gradient into [B, K, gh, gw]. It must be a rearrangement (drop a
   class token, reshape, permute), which is what every model's `to_grid` is; pytorch-grad-cam's
   `reshape_transform` is applied to activations and gradients in the same way.
5. Channel weights w [B, K], map = ReLU(sum_k w_k A_k) in float32 on the feature grid, which covers
   the model input: the maps are in the input frame and the core maps them back to the image.

The hook is removed in `finally`, whatever happens. `autograd.grad` (not `backward`) leaves every
parameter's `.grad` untouched, and the module's train/eval mode is never changed.

References: Selvaraju et al., "Grad-CAM", ICCV 2017 (weights = spatial mean of the gradient);
Chattopadhay et al., "Grad-CAM++", WACV 2018, eq. 19, as implemented by the authors
(adityac94/Grad_CAM_plus_plus, misc/utils.py `grad_CAM_plus`) and by pytorch-grad-cam
(jacobgil/pytorch-grad-cam, `GradCAMPlusPlus.get_cam_weights`). This is our own code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xbench_core import Explainer, MapError, Model, ModelOutput

Weigh = Callable[[Any, Any], Any]  # (activations [B,K,h,w], gradients [B,K,h,w]) -> weights [B,K]


def gradcam_weights(activations: Any, gradients: Any) -> Any:
    """Grad-CAM channel weights: the spatial mean of d logit / dA_k."""
    return gradients.mean(dim=(2, 3))


def gradcampp_weights(activations: Any, gradients: Any) -> Any:
    """Grad-CAM++ channel weights: sum_ij alpha_ij^k ReLU(d logit / dA_ij^k) (paper, eq. 19).

    With Y = exp(logit) and a piecewise-linear network, dY/dA = Y g, d2Y/dA2 = Y g^2 and
    d3Y/dA3 = Y g^3 (g = d logit / dA), so alpha = g^2 / (2 g^2 + sum_ab A_ab g^3): the factor Y
    cancels. In the weights Y only scales the whole map of one (image, finding) by a positive
    constant, which the core's min-max normalization removes, and exp of a large logit overflows,
    so it is left out (as pytorch-grad-cam does). Where the denominator is 0 (g = 0) alpha is 0;
    unlike pytorch-grad-cam's `+ 1e-6` we guard only the zeros (as the authors' code does): a
    constant epsilon is not scale-free, and at the gradient sizes of real networks (|g| ~ 1e-4)
    it would shrink alpha by orders of magnitude, channel by channel.
    """
    import torch

    g2 = gradients * gradients
    denominator = 2.0 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g2 * gradients
    alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))


def _differentiable(raw: Any) -> list[Any]:
    import torch

    if isinstance(raw, torch.Tensor):
        return [raw] if raw.requires_grad else []
    if isinstance(raw, (tuple, list)):
        return [t for t in raw if isinstance(t, torch.Tensor) and t.requires_grad]
    raise MapError(
        f"the feature layer returned a {type(raw).__name__}; Grad-CAM needs a tensor (or a tuple "
        "of tensors): point Model.feature_layer() at a module that returns one"
    )


def _like(raw: Any, grads: list[Any]) -> Any:
    """The gradients in the same structure as the layer's output, for `to_grid`."""
    import torch

    if isinstance(raw, torch.Tensor):
        return grads[0]
    it = iter(grads)
    items = [
        (next(it) if t.requires_grad else torch.zeros_like(t)) if isinstance(t, torch.Tensor) else t
        for t in raw
    ]
    return type(raw)(*items) if hasattr(raw, "_fields") else type(raw)(items)


def _grid(to_grid: Callable[[Any], Any], raw: Any, batch: int) -> Any:
    grid = to_grid(raw)
    if getattr(grid, "ndim", None) != 4 or grid.shape[0] != batch:
        raise MapError(
            f"FeatureLayer.to_grid returned shape {tuple(getattr(grid, 'shape', ()))}; expected "
            f"[B={batch}, D, gh, gw]: fix the model's feature_layer()"
        )
    return grid.float()


def cam_maps(model: Model, pixels: Any, queries: Any, weigh: Weigh) -> Any:
    """Class-activation maps [B, F, gh, gw] (float32, detached) for every finding's logit.

    `weigh(activations, gradients)` gives the channel weights [B, K]; see the module docstring.
    """
    import torch

    if model.module is not None and getattr(model.module, "training", False):
        raise MapError(
            "the model is in training mode; gradient explainers need eval mode (BatchNorm and "
            "dropout would mix the images of a batch): call model.module.eval() first"
        )
    layer = model.feature_layer()
    captured: list[Any] = []

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(output)

    handle = layer.module.register_forward_hook(keep)
    try:
        # The engine calls gradient explainers outside inference mode, with queries encoded under
        # no_grad (xbench_core.engine.calls); enable_grad serves callers inside torch.no_grad().
        with torch.enable_grad():
            x = pixels
            # Asking for the input's gradient makes the graph exist even when the model's
            # parameters are frozen; autograd.grad below stops at the feature layer, so no
            # gradient is ever computed for the pixels themselves.
            x = x.detach().requires_grad_(True)
            logits = model.logits(x, queries)
            batch = x.shape[0]
            if getattr(logits, "ndim", None) != 2 or logits.shape[0] != batch:
                raise MapError(
                    f"model.logits returned shape {tuple(getattr(logits, 'shape', ()))}; "
                    f"expected [B={batch}, F]"
                )
            if len(captured) != 1:
                raise MapError(
                    f"the feature layer ran {len(captured)} times during model.logits; Grad-CAM "
                    "needs it to run exactly once per batch: check Model.feature_layer()"
                )
            raw = captured[0]
            targets = _differentiable(raw)
            if not targets or not logits.requires_grad:
                raise MapError(
                    "model.logits is not differentiable with respect to the feature layer (was it "
                    "computed under torch.no_grad or with detached features?)"
                )
            activations = _grid(layer.to_grid, raw, batch).detach()
            n = logits.shape[1]
            maps = []
            for f in range(n):
                found = torch.autograd.grad(
                    logits[:, f].float().sum(), targets, retain_graph=f < n - 1, allow_unused=True
                )
                grads = [torch.zeros_like(t) if g is None else g for g, t in zip(found, targets)]
                gradients = _grid(layer.to_grid, _like(raw, grads), batch)
                weights = weigh(activations, gradients)
                cam = (weights[:, :, None, None] * activations).sum(dim=1)
                maps.append(torch.relu(cam))
            if not maps:
                return activations.new_zeros((batch, 0, *activations.shape[-2:]))
            return torch.stack(maps, dim=1).detach()
    finally:
        handle.remove()
        captured.clear()


class GradCAM(Explainer):
    """Grad-CAM: ReLU(sum_k w_k A_k) with w_k the spatial mean of d logit_f / dA_k."""

    requires = frozenset({"logits", "feature_layer"})
    needs_grad = True
    weights = staticmethod(gradcam_weights)

    def explain(self, model: Model, pixels: Any, queries: Any, output: ModelOutput) -> Any:
        """Maps [B, F, gh, gw] on the model's feature grid (input frame)."""
        return cam_maps(model, pixels, queries, self.weights)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++: ReLU(sum_k w_k A_k) with w_k = sum_ij alpha_ij^k ReLU(d logit_f / dA_ij^k)."""

    weights = staticmethod(gradcampp_weights)
