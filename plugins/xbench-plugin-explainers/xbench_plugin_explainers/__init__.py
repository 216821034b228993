"""XBench plugin: post-hoc explainers that work on any model, Grad-CAM, Grad-CAM++ and RISE.

Registration only: nothing heavy is imported here, so that `xbench list` stays fast. The factories
are lazy strings; `cam.py` holds the gradient explainers, `rise.py` the perturbation one.
"""

from __future__ import annotations

from typing import Any

from xbench_core import ExplainerSpec, Option, hookimpl

GRADIENT_NEEDS = frozenset({"logits", "feature_layer"})

GRADCAM = ExplainerSpec(
    name="gradcam",
    summary="Grad-CAM (Selvaraju et al. 2017) on the model's feature layer: ReLU(sum_k mean(dlogit/dA_k) A_k) "
    "per finding, on the feature grid",
    factory="xbench_plugin_explainers.cam:GradCAM",
    requires=GRADIENT_NEEDS,
    needs_grad=True,
)

GRADCAMPP = ExplainerSpec(
    name="gradcampp",
    summary="Grad-CAM++ (Chattopadhay et al. 2018): closed-form alpha from exp(logit) higher-order "
    "terms weighting the positive gradients, on the feature grid",
    factory="xbench_plugin_explainers.cam:GradCAMPlusPlus",
    requires=GRADIENT_NEEDS,
    needs_grad=True,
)

RISE = ExplainerSpec(
    name="rise",
    summary="RISE (Petsiuk et al. 2018): score-weighted mean of random smooth masks; any model, "
    "costs `masks` forward passes per image",
    factory="xbench_plugin_explainers.rise:RISE",
    requires=frozenset(),
    needs_grad=False,
    options=(
        Option("masks", int, 500, "number of random masks N (= image forwards per image)", min=1),
        Option("cells", int, 7, "side s of the coarse binary grid each mask is drawn on", min=1),
        Option("p", float, 0.5, "probability that a grid cell is kept (the paper's p1)", min=0.01, max=1),
        Option("batch", int, 50, "masked images per forward call", min=1),
        Option("seed", int, 0, "seed of the masks: the same masks for every image and run", min=0),
        Option(
            "grid",
            str,
            "native",
            "output grid: 'native' (area-pooled to the native map's grid) or 'input' (full "
            "input resolution)",
            choices=("native", "input"),
        ),
    ),
)


@hookimpl
def xbench_register_explainers(register: Any) -> None:
    """Register gradcam, gradcampp and rise."""
    for spec in (GRADCAM, GRADCAMPP, RISE):
        register(spec)
