"""Test support for plugin authors: conformance suites, a throwaway-plugin fixture,
official-layout checkpoints with random or perturbed weights (tiny text encoders:
`xbench_blocks`), random preprocessed images and DICOM files.

A plugin's tests subclass a suite and provide one fixture:

    class TestMyDataset(DatasetPluginTests):
        name = "my-dataset"

        @pytest.fixture(scope="class")
        @classmethod
        def dataset(cls, tmp_path_factory):
            root = write_fixture(tmp_path_factory.mktemp("data"))
            return get_registry().datasets["my-dataset"].build(root=str(root))

`ModelPluginTests` wants a `model` fixture (random weights, CPU), `ExplainerPluginTests` a
`model` (its `explainer` fixture builds the registered `name` with `options`), `MetricPluginTests`
a `metric`.

The suites call plugins exactly as `xbench run` does, through `encode_queries`, `forward` and
`explain` (re-exported here from the engine): use them in a plugin's own tests too.
"""

from __future__ import annotations

import builtins
import copy
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .dataset import Dataset
from .engine.calls import encode_queries, explain, forward
from .findings import BY_ID
from .geometry import Geometry
from .model import Model
from .plugins import get_registry, register_plugin, unregister_plugin
from .types import Sample

__all__ = [
    "DatasetPluginTests",
    "ModelPluginTests",
    "ExplainerPluginTests",
    "MetricPluginTests",
    "temporary_plugin",
    "save_official_checkpoint",
    "compare_with_key_listing",
    "perturbed",
    "with_weights",
    "random_images",
    "write_dicom",
    "realdata",
    "reference",
    "import_test_dependency",
    "encode_queries",
    "forward",
    "explain",
    "feature_grid_gradient",
]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def realdata(*parts: str) -> Path:
    """A path under `../shared/realdata/`; skips the test when it is absent (a user's clone)."""
    path = SHARED.joinpath("realdata", *parts)
    if not path.exists():
        pytest.skip(f"real data {path} not present (only in the project's CI checkout)")
    return path


@pytest.fixture(scope="module", autouse=True)
def hub_offline() -> Iterator[None]:
    """Imported into a plugin's test module (`from xbench_core.testing import hub_offline`), it keeps
    every test there off the network: `HF_HUB_OFFLINE=1`, so a missing file fails instead of
    downloading."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


def import_test_dependency(module: str) -> Any:
    """Import a test-only dependency (the `test` extra): skipped in a user's environment without it,
    but a failure in CI (`CI` set), where a skip would silently drop the comparison it makes."""
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{module} is missing in CI: install the test extra (pip install -e '.[test]'): {exc}")
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def reference(*parts: str) -> Path:
    """A path under `../shared/reference/`; skips the test when it is absent."""
    path = SHARED.joinpath("reference", *parts)
    if not path.exists():
        pytest.skip(f"reference file {path} not present")
    return path


def random_images(model: Model, n: int, seed: int = 0, size: tuple[int, int] = (300, 260)) -> Any:
    """n random gray images of `size` (uniform in [0, 1)) through `model.preprocess`, stacked."""
    import torch

    rng = np.random.default_rng(seed)
    return torch.stack(
        [torch.as_tensor(model.preprocess(rng.random(size, dtype=np.float32))[0]) for _ in range(n)]
    )


def perturbed(state_dict: Mapping[str, Any], seed: int = 1) -> dict[str, Any]:
    """A copy of a state dict with 0.01 N(0, 1) added to every float tensor: weights a checkpoint
    loader must reproduce exactly (a load that did nothing keeps the seeded random init)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {
        key: (value + 0.01 * torch.randn(value.shape, generator=generator)).clone()
        if value.is_floating_point()
        else value.clone()
        for key, value in state_dict.items()
    }


def with_weights(model: Model, state_dict: Mapping[str, Any]) -> Model:
    """A shallow copy of `model` whose module (a deep copy) has these weights; `model` untouched."""
    other = copy.copy(model)
    other.module = copy.deepcopy(model.module)
    other.module.load_state_dict(state_dict)
    return other


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_allocated: int | None = None,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    **elements: Any,
) -> Path:
    """An uncompressed (Explicit VR Little Endian) grayscale DICOM holding `pixels` as its stored
    values ([frames, rows, columns] for a multi-frame file), in words of `bits_allocated` (default:
    the array's item size) of which `bits_stored` are used (default: all). `elements` set any other
    data element or override these (PatientID="p1", ViewPosition="AP", Modality="DX", SOPClassUID=
    ...); by default a CR Secondary Capture with a new SOP instance UID. Parent folders are made."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    bits_allocated = bits_allocated or 8 * pixels.dtype.itemsize
    ds = FileDataset(str(path), {}, file_meta=FileMetaDataset(), preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored = bits_allocated, bits_stored or bits_allocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(signed)
    for key, value in elements.items():
        setattr(ds, key, value)
    dtype = f"<{'i' if signed else 'u'}{bits_allocated // 8}"
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


class temporary_plugin:  # noqa: N801 - used as a context manager and a decorator-like helper
    """Register an in-process plugin for the duration of a `with` block."""

    def __init__(self, plugin: Any, name: str = "test-plugin") -> None:
        self.plugin, self.name = plugin, name

    def __enter__(self) -> Any:
        register_plugin(self.plugin, self.name)
        try:
            return get_registry()
        except BaseException:
            unregister_plugin(self.name)  # a plugin that breaks the registry must not outlive the test
            raise

    def __exit__(self, *exc: object) -> None:
        unregister_plugin(self.name)


def save_official_checkpoint(
    state_dict: Mapping[str, Any],
    path: str | Path,
    *,
    container: str | None = None,
    prefix: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save tensors the way an official release wraps them: `{container: {prefix + key: tensor}}`
    plus extra top-level entries (optimizer state, configs, epoch)."""
    import torch

    tensors = {prefix + k: v for k, v in state_dict.items()}
    obj: dict[str, Any] = {container: tensors} if container else dict(tensors)
    obj.update(extra or {})
    path = Path(path)
    torch.save(obj, path)
    return path


def compare_with_key_listing(state_dict: Mapping[str, Any], listing: Path) -> tuple[list, list, list]:
    """(missing, unexpected, wrong-shape) keys of a state_dict against an official JSON listing."""
    import json

    official = json.loads(Path(listing).read_text())
    if "keys" in official and isinstance(official["keys"], dict):
        official = official["keys"]
    ours = {k: list(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(official) - set(ours))
    unexpected = sorted(set(ours) - set(official))
    shapes = sorted(k for k in set(ours) & set(official) if list(official[k]) != ours[k])
    return missing, unexpected, shapes


# ---------------------------------------------------------------------------------------------
class DatasetPluginTests:
    """Conformance suite for dataset plugins. Provide `name` and a `dataset` fixture."""

    name: str = ""

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls) -> Dataset:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_ids_touch_no_file(self, dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
        """ids() names the samples from the parsed annotations: no image lookup, folder walk or
        header read (the engine calls it to plan every run). First in the suite, before other
        tests fill the dataset's lazy caches."""

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{type(dataset).__name__}.ids() touched the file system: {args[:1]}")

        with monkeypatch.context() as patch:
            for module, name in ((os, "stat"), (os, "scandir"), (os, "listdir"), (os, "open"), (builtins, "open")):
                patch.setattr(module, name, refuse)
            ids = dataset.ids()
        assert len(ids) == len(dataset)

    def test_registered(self) -> None:
        spec = get_registry().datasets[self.name]
        assert spec.summary and all(f in BY_ID for f in spec.findings)

    def test_not_empty_and_ids_unique(self, dataset: Dataset) -> None:
        assert len(dataset) > 0
        ids = [dataset.annotation(i).id for i in range(len(dataset))]
        assert len(set(ids)) == len(ids)
        assert ids == [dataset.annotation(i).id for i in range(len(dataset))]
        assert dataset.ids() == ids  # an ids() that skips building samples names the same ones, in order

    def test_annotation_is_cheap_and_canonical(self, dataset: Dataset) -> None:
        for i in range(min(len(dataset), 20)):
            s = dataset.annotation(i)
            assert s.image is None and "path" in s.meta
            assert set(s.labels) <= set(BY_ID)
            assert all(v in (0, 1) for v in s.labels.values())
            for finding in s.regions:
                assert s.labels.get(finding) == 1, f"{s.id}: region for a non-positive {finding}"

    def test_items_decode(self, dataset: Dataset) -> None:
        for i in range(min(len(dataset), 4)):
            s = dataset[i]
            assert isinstance(s, Sample) and s.image is not None
            assert s.image.ndim == 2 and s.image.dtype == np.float32
            assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
            for region in s.regions.values():
                assert tuple(region.size) == s.image.shape
                assert region.rasterize().any(), f"{s.id}: empty region"
            pickle.loads(pickle.dumps(s))


class ModelPluginTests:
    """Conformance suite for model plugins. Provide `name`, a `model` fixture (random weights on
    the CPU) and optionally `findings` to query."""

    name: str = ""
    findings: tuple[str, ...] = ("pneumonia", "pleural_effusion", "pneumothorax")
    image_size: tuple[int, int] = (300, 260)
    bf16_map_atol: float | None = None

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Model:  # pragma: no cover - overridden
        raise NotImplementedError

    def _supported(self, model: Model) -> list[str]:
        found = [f for f in self.findings if model.supports(f)]
        assert found, "the model supports none of the test findings"
        return found

    def test_registered(self) -> None:
        spec = get_registry().models[self.name]
        assert spec.summary

    def test_preprocess_geometry(self, model: Model) -> None:
        pixels, geom = model.preprocess(np.zeros(self.image_size, np.float32))
        assert isinstance(geom, Geometry)
        assert tuple(pixels.shape[-2:]) == tuple(geom.input_size)
        assert tuple(geom.original_size) == self.image_size

    def test_forward_shapes_and_ranges(self, model: Model) -> None:
        import torch

        findings = self._supported(model)
        pixels = random_images(model, 2, size=self.image_size)
        queries = encode_queries(model, findings)
        out = forward(model, pixels, queries)
        assert tuple(out.scores.shape) == (2, len(findings))
        assert float(out.scores.min()) >= 0.0 and float(out.scores.max()) <= 1.0
        assert out.maps, "no native map"
        for kind, maps in out.maps.items():
            assert maps.shape[:2] == (2, len(findings)), kind
            assert maps.ndim == 4 and torch.isfinite(maps).all()

    def test_batch_independence_and_determinism(self, model: Model) -> None:
        import torch

        findings = self._supported(model)
        pixels = random_images(model, 3, size=self.image_size)
        queries = encode_queries(model, findings)
        whole = forward(model, pixels, queries)
        again = forward(model, pixels, queries)
        first = forward(model, pixels[:1], queries)
        torch.testing.assert_close(whole.scores, again.scores)
        torch.testing.assert_close(whole.scores[:1], first.scores, rtol=1e-4, atol=1e-5)
        for kind in whole.maps:
            torch.testing.assert_close(whole.maps[kind][:1], first.maps[kind], rtol=1e-4, atol=1e-5)

    def test_bf16_autocast(self, model: Model) -> None:
        """Under bf16 autocast (a run's `precision: bf16` on a GPU; here the CPU's) scores and maps
        stay float32 and finite, the scores within 0.05 of fp32 (the maps within
        `bf16_map_atol`, where a plugin sets it)."""
        import torch

        pixels = random_images(model, 1, size=self.image_size)
        queries = encode_queries(model, self._supported(model))
        full = forward(model, pixels, queries)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.forward(pixels, queries)
        assert half.scores.dtype == torch.float32
        torch.testing.assert_close(half.scores, full.scores, rtol=0, atol=0.05)
        for kind, maps in half.maps.items():
            assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), kind
            if self.bf16_map_atol is not None:
                torch.testing.assert_close(maps, full.maps[kind], rtol=0, atol=self.bf16_map_atol)

    def test_logits_are_differentiable_and_match_scores(self, model: Model) -> None:
        """`logits` (for gradient explainers) carry gradients to the pixels, and their sigmoid is
        the score `forward` gives."""
        import torch

        if "logits" not in model.capabilities():
            pytest.skip("the model has no logits")
        queries = encode_queries(model, self._supported(model))
        pixels = random_images(model, 2, seed=5, size=self.image_size).requires_grad_(True)
        logits = model.logits(pixels, queries)
        (grad,) = torch.autograd.grad(logits[:, -1].sum(), pixels)  # no .grad left on the model
        assert float(grad.abs().sum()) > 0
        scores = forward(model, pixels.detach(), queries).scores
        torch.testing.assert_close(torch.sigmoid(logits.detach()), scores, rtol=1e-5, atol=1e-6)

    def test_unsupported_findings_are_not_scored(self, model: Model) -> None:
        assert not model.supports("definitely_not_a_finding")


def feature_grid_gradient(model: Model, pixels: Any, findings: list[str]) -> Any:
    """|d sum(logits) / d feature layer| summed over channels, [B, gh, gw]: a cell at 0 has no
    path to the logits, and every gradient CAM is blank there (e.g. a ViT's last block output
    when the class token is pooled)."""
    import torch

    layer = model.feature_layer()
    seen: list[Any] = []
    handle = layer.module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        logits = model.logits(pixels, encode_queries(model, findings))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.sum(), seen[0])
    return layer.to_grid(grad).abs().sum(dim=1)


class ExplainerPluginTests:
    """Conformance suite for explainers. Provide `name` and a `model` fixture; the `explainer`
    fixture builds the registered explainer `name` with `options` (override it for others)."""

    name: str = ""
    options: dict[str, Any] = {}

    @pytest.fixture(scope="class")
    @classmethod
    def explainer(cls) -> Any:
        return get_registry().explainers[cls.name].build(**cls.options)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Model:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_registered(self) -> None:
        assert get_registry().explainers[self.name].summary

    def test_maps_on_the_model_grid(self, explainer: Any, model: Model) -> None:
        import torch

        findings = [f for f in model.queries][:2]
        rng = np.random.default_rng(0)
        pixels = torch.stack(
            [torch.as_tensor(model.preprocess(rng.random((64, 64), dtype=np.float32))[0]) for _ in range(2)]
        )
        queries = encode_queries(model, findings)
        out = forward(model, pixels, queries)
        maps = explain(explainer, get_registry().explainers[self.name].needs_grad, model, pixels, queries, out)
        assert maps.shape[:2] == (2, len(findings)) and maps.ndim == 4
        assert torch.isfinite(maps).all()


class MetricPluginTests:
    """Conformance suite for metrics. Provide `name` and a `metric` fixture."""

    name: str = ""

    @pytest.fixture(scope="class")
    @classmethod
    def metric(cls) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_registered(self) -> None:
        spec = get_registry().metrics[self.name]
        assert spec.fields and spec.kind in ("grounding", "classification")

    def test_fields(self, metric: Any) -> None:
        from .metrics.aggregate import FindingData

        spec = get_registry().metrics[self.name]
        data = FindingData.synthetic(seed=0)
        values = metric(data)
        assert set(values) == set(spec.fields)

    def test_resampled_as_the_bootstrap_does(self, metric: Any) -> None:
        """The intervals' values: a `resample` hook must equal calling the metric on each resample."""
        from .metrics import bootstrap as bs
        from .metrics.aggregate import FindingData

        spec = get_registry().metrics[self.name]
        data = FindingData.synthetic(seed=1)
        n = data.n_regions if spec.kind == "grounding" else len(data.labels)
        weights = bs.counts(bs.resample_indices(n, bs.generator(0, self.name), 20), n)
        plain = bs.plain_resamples(metric, spec.kind, data, weights)
        got = bs.metric_resamples(metric, spec.kind, data, weights)
        assert set(got) <= set(spec.fields) and set(got) <= set(plain)
        for field, values in got.items():
            np.testing.assert_allclose(values, plain[field], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=field)


def iter_findings() -> Iterator[str]:
    yield from BY_ID
