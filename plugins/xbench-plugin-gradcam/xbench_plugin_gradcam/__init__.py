"""XBench plugin: the CAM methods of pytorch-grad-cam (the `grad-cam` package) as XBench explainers.

Registration only: nothing heavy is imported here, so that `xbench list` stays fast. Every method
runs on any model that offers `logits` and a `feature_layer` (`methods.py` adapts one to the other);
the package's Grad-CAM and Grad-CAM++ are not registered: `gradcam` and `gradcampp` of
xbench-plugin-explainers compute them (one forward per batch instead of one per finding), and a test
checks that the package's Grad-CAM gives the same maps.
"""

from __future__ import annotations

from typing import Any

from xbench_core import ExplainerSpec, Option, hookimpl

NEEDS = frozenset({"logits", "feature_layer"})
FACTORY = "xbench_plugin_gradcam.methods:BY_NAME."

BATCH = Option("batch", int, 32, "masked or ablated inputs per forward call")

# name -> (package class, summary, needs gradients, options)
METHODS: dict[str, tuple[str, str, bool, tuple[Option, ...]]] = {
    "hirescam": (
        "HiResCAM",
        "HiResCAM (Draelos & Carin 2020): ReLU(sum_k dlogit/dA_k * A_k), element-wise, on the feature grid",
        True,
        (),
    ),
    "gradcam_elementwise": (
        "GradCAMElementWise",
        "Grad-CAM element-wise: sum_k ReLU(dlogit/dA_k * A_k) on the feature grid",
        True,
        (),
    ),
    "xgradcam": (
        "XGradCAM",
        "XGrad-CAM (Fu et al. 2020): channel weights sum(A_k * dlogit/dA_k) / sum(A_k)",
        True,
        (),
    ),
    "layercam": (
        "LayerCAM",
        "LayerCAM (Jiang et al. 2021): ReLU(dlogit/dA) * A summed over channels",
        True,
        (),
    ),
    "eigengradcam": (
        "EigenGradCAM",
        "Eigen-Grad-CAM: first principal component of dlogit/dA * A (sign as the package fixes it)",
        True,
        (),
    ),
    "finercam": (
        "FinerCAM",
        "Finer-CAM (Zhang et al. 2025): Grad-CAM of the finding's logit minus the logits of the "
        "(up to 3) queried findings closest to it",
        True,
        (Option("alpha", float, 1.0, "weight of the comparison findings' logits"),),
    ),
    "fullgrad": (
        "FullGrad",
        "FullGrad (Srinivas & Fleuret 2019): |input x input-gradient| plus |bias x gradient| of every "
        "Conv2d/BatchNorm2d of the model, at input resolution (ignores the feature layer)",
        True,
        (),
    ),
    "eigencam": (
        "EigenCAM",
        "EigenCAM (Muhammad & Yeasin 2020): first principal component of the feature layer's "
        "activations; class-agnostic (the same map for every finding)",
        False,
        (),
    ),
    "kpcacam": (
        "KPCA_CAM",
        "KPCA-CAM (Karmani et al. 2024): first kernel-PCA component of the activations; class-agnostic",
        False,
        (
            Option(
                "kernel",
                str,
                "sigmoid",
                "kernel of the kernel PCA",
                choices=("linear", "poly", "rbf", "sigmoid", "cosine"),
            ),
        ),
    ),
    "scorecam": (
        "ScoreCAM",
        "Score-CAM (Wang et al. 2020): softmax over channels of the logit of the input masked by each "
        "upsampled, min-max scaled activation; K forward passes per image and finding",
        False,
        (BATCH,),
    ),
    "ablationcam": (
        "AblationCAM",
        "Ablation-CAM (Desai & Ramaswamy 2020): relative logit drop when each channel of the feature "
        "layer is ablated; K whole-model forward passes per image and finding",
        False,
        (
            BATCH,
            Option(
                "ratio",
                float,
                1.0,
                "share of channels ablated (the package's experimental "
                "ratio_channels_to_ablate; 1.0 = all)",
            ),
        ),
    ),
}

SPECS = tuple(
    ExplainerSpec(
        name=name,
        summary=f"{summary} [pytorch-grad-cam {cls}]",
        factory=f"{FACTORY}{name}",
        requires=NEEDS,
        needs_grad=needs_grad,
        options=options,
    )
    for name, (cls, summary, needs_grad, options) in METHODS.items()
)


@hookimpl
def xbench_register_explainers(register: Any) -> None:
    """Register one explainer per pytorch-grad-cam method."""
    for spec in SPECS:
        register(spec)
