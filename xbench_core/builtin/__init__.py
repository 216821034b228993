"""The core's own components, registered through the same hooks as any plugin: the `phantom`
dataset, the `random`, `center` and `contrast` reference models, the `native` explainer and the built-in metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from ..hookspecs import hookimpl
from ..types import DatasetSpec, ExplainerSpec, MetricSpec, ModelSpec, Option


@hookimpl
def xbench_register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSpec(
            name="phantom",
            summary="Synthetic chest-radiograph-like images with six findings and exact masks (built in, no download)",
            factory="xbench_core.builtin.phantom:Phantom",
            findings=("nodule", "mass", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly"),
            splits=("test",),
            options=(
                Option("size", int, 200, "number of images", min=1),
                Option("seed", int, 0, "generator seed: image i depends only on (seed, i)", min=0),
                Option("resolution", int, 512, "image side in pixels", min=64),
                Option("split", str, "test", "the only split", choices=("test",)),
            ),
        )
    )


@hookimpl
def xbench_register_models(register: Callable[[Any], None]) -> None:
    register(
        ModelSpec(
            name="random",
            summary="Chance reference: random maps and scores, seeded by image content",
            factory="xbench_core.builtin.baselines:RandomBaseline",
            map_kind="random",
            options=(Option("seed", int, 0, "seed of the random maps and scores", min=0),),
        )
    )
    register(
        ModelSpec(
            name="center",
            summary="Prior reference: a centered Gaussian map and a constant score 0.5",
            factory="xbench_core.builtin.baselines:CenterBaseline",
            map_kind="prior",
            options=(Option("sigma", float, 0.25, "Gaussian width as a fraction of the image side", min=1e-3, max=10),),
        )
    )
    register(
        ModelSpec(
            name="contrast",
            summary="Blob-detector reference: local-contrast map, score from its maximum in the lungs (training-free)",
            factory="xbench_core.builtin.contrast:ContrastReference",
            map_kind="contrast",
            options=(
                Option("sigma", float, 0.05, "background blur as a fraction of the input side"),
                Option("gain", float, 40.0, "score = sigmoid(gain * (peak contrast in the lungs - level))"),
                Option("level", float, 0.2, "peak contrast whose score is 0.5"),
            ),
        )
    )


@hookimpl
def xbench_register_explainers(register: Callable[[Any], None]) -> None:
    register(
        ExplainerSpec(
            name="native",
            summary="The model's own map: similarity (dual encoders) or cross-attention (fusion models)",
            factory="xbench_core.builtin.baselines:NativeExplainer",
        )
    )


def _metric(name: str, module: str = "builtin") -> Callable[[], Any]:
    def factory() -> Any:
        import importlib

        return getattr(importlib.import_module(f"xbench_core.metrics.{module}"), name)

    factory.__name__ = f"{name}_factory"
    return factory


# (name, kind, fields, summary)
_Metric = tuple[str, Literal["grounding", "classification"], tuple[str, ...], str]
_METRICS: tuple[_Metric, ...] = (
    ("pointing_game", "grounding", ("pointing_game",), "Share of maps whose peak lies in the region (ties shared)"),
    ("ebpg", "grounding", ("ebpg",), "Energy-based pointing game: share of the map's mass in the region"),
    ("dice", "grounding", ("dice_fixed", "dice_best", "best_threshold"), "Dice at the fixed and at the best threshold"),
    ("iou", "grounding", ("iou_fixed", "iou_best"), "IoU at the fixed threshold and at the best-Dice threshold"),
    ("auroc", "classification", ("auroc",), "Area under the ROC curve"),
    ("auprc", "classification", ("auprc",), "Area under the precision-recall curve (average precision)"),
    ("f1", "classification", ("f1", "f1_best", "f1_best_threshold"), "F1 at 0.5 and at the best-F1 threshold"),
    ("accuracy", "classification", ("accuracy", "accuracy_best"), "Accuracy at 0.5 and at the best-F1 threshold"),
)


# metrics/extra.py: peers' metrics and the grounding protocols' values
_EXTRA_METRICS: tuple[_Metric, ...] = (
    ("cnr", "grounding", ("cnr",), "Contrast-to-noise ratio |mean_in - mean_out| / sqrt(var_in + var_out) (BioViL, MS-CXR)"),
    ("miou_raw", "grounding", ("miou_raw",), "Mean IoU over the raw thresholds 0.1..0.5 (MS-CXR, cosine maps)"),
    ("pixel_prs", "grounding", ("pixel_precision", "pixel_recall", "pixel_specificity"),
     "Pixel precision, recall and specificity, counts pooled over images (cheXlocalize)"),
    ("protocol", "grounding", ("chexlocalize_iou", "chexlocalize_hit", "chexlocalize_iou_tuned",
                               "chexlocalize_threshold", "medklip_iou", "medklip_dice",
                               "medklip_pointing", "mavl_iou", "mavl_dice", "mavl_threshold", "mavl_pointing"),
     "The values of the run's grounding protocol (grounding.protocol), named <protocol>_<metric>"),
)


@hookimpl
def xbench_register_metrics(register: Callable[[Any], None]) -> None:
    for name, kind, fields, summary in _METRICS:
        register(MetricSpec(name=name, summary=summary, factory=_metric(name), kind=kind, fields=fields))
    for name, kind, fields, summary in _EXTRA_METRICS:
        register(MetricSpec(name=name, summary=summary, factory=_metric(name, "extra"), kind=kind, fields=fields))
