"""The record and results schema: `split` in every record and in the store's identity, one results
assembler, and the plan shared by the runner and `xbench merge`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xbench_core import DatasetSpec, ExplainerSpec, ModelSpec, Option, hookimpl
from xbench_core.builtin.baselines import CenterBaseline, NativeExplainer
from xbench_core.builtin.phantom import Phantom
from xbench_core.cli import main
from xbench_core.engine.config import build_config
from xbench_core.engine.session import execute
from xbench_core.errors import ConfigError
from xbench_core.schema import MEAN, make_record
from xbench_core.store import RunStore
from xbench_core.testing import temporary_plugin


class _TwoSplits(Phantom):
    """A phantom whose val and test splits have the same ids but different images."""

    def __init__(self, size: int = 6, split: str = "test") -> None:
        super().__init__(size=size, seed=0 if split == "test" else 1, resolution=64)
        self.split = split


class _Capable(CenterBaseline):
    pass


class _Plugin:
    @hookimpl
    def xbench_register_datasets(self, register: Any) -> None:
        register(DatasetSpec(name="two-splits", summary="val and test with the same ids", factory=_TwoSplits,
                             findings=Phantom(1).findings, splits=("val", "test"),
                             options=(Option("size", int, 6), Option("split", str, "test", choices=("val", "test")))))

    @hookimpl
    def xbench_register_models(self, register: Any) -> None:
        register(ModelSpec(name="capable", summary="center with the 'probe' capability", factory=_Capable,
                           map_kind="prior", capabilities=frozenset({"probe"})))

    @hookimpl
    def xbench_register_explainers(self, register: Any) -> None:
        register(ExplainerSpec(name="probe", summary="native, for models with the 'probe' capability",
                               factory=NativeExplainer, requires=frozenset({"probe"})))


@pytest.fixture()
def registry() -> Any:
    with temporary_plugin(_Plugin(), "schema-test") as reg:
        yield reg


def test_two_splits_with_the_same_ids_are_both_evaluated(registry: Any, tmp_path: Path) -> None:
    data = {"datasets": [{"name": "two-splits", "split": "val"}, {"name": "two-splits", "split": "test"}],
            "models": ["center"], "out": str(tmp_path / "run"), "batch_size": 4}
    store, results = execute(build_config(data, registry), registry, quiet=True)
    means = {r["split"]: r for r in results["rows"] if r["finding"] == MEAN}
    assert sorted(means) == ["test", "val"]
    assert means["val"]["n_images"] == means["test"]["n_images"] == 6
    records = list(store.records())
    assert {r["split"] for r in records} == {"val", "test"}
    assert len({(r["split"], r["id"]) for r in records}) == 12
    # both splits are complete: a second run does nothing and gives the same rows
    _, again = execute(build_config(data, registry), registry, quiet=True)
    assert again["rows"] == results["rows"]


def test_records_have_one_shape() -> None:
    r = make_record("ds", "val", "id1", "m", "native", "f", 2, label=1, score=0.5)
    assert list(r) == ["dataset", "split", "id", "model", "explainer", "finding", "n", "label", "score",
                       "stats", "error"]
    assert r["stats"] is None and r["error"] is None


def test_old_records_without_split_are_still_read(registry: Any, tmp_path: Path) -> None:
    data = {"datasets": [{"name": "phantom", "size": 4, "resolution": 64}], "models": ["center"],
            "out": str(tmp_path / "run"), "batch_size": 4}
    store, results = execute(build_config(data, registry), registry, quiet=True)
    for path in store.shard_files():  # as written before records carried their split
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n" for r in lines))
    store.results_path.unlink()
    assert main(["report", str(store.directory), "--quiet"]) == 0
    rebuilt = json.loads(store.results_path.read_text())
    assert rebuilt["rows"] == results["rows"]
    manifest = json.loads(store.manifest_path.read_text())
    store.manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "schema"}))
    with pytest.raises(ConfigError, match="older XBench.*cannot be resumed"):
        execute(build_config(data, registry), registry, quiet=True)


def test_merge_after_a_complete_sharded_run_with_a_skipped_explainer(
    registry: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "array"
    args = ["run", "--models", "center,capable", "--explainers", "native,probe", "--set", "phantom.size=6",
            "--set", "phantom.resolution=64", "--quiet", "--no-report", "--out", str(out)]
    assert main([*args, "--shard", "0/2"]) == 0
    assert main(["merge", str(out)]) == 1
    assert "9 samples have no records yet" in capsys.readouterr().out  # 3 of 6 images x 3 (model, explainer) pairs
    assert main([*args, "--shard", "1/2"]) == 0
    assert main(["merge", str(out)]) == 0, capsys.readouterr().out
    text = capsys.readouterr().out
    assert "no records yet" not in text and "skipped explainer probe for center" in text
    results = json.loads(RunStore(out).results_path.read_text())
    assert {(r["model"], r["explainer"]) for r in results["rows"]} == {
        ("center", "native"), ("capable", "native"), ("capable", "probe")}
    assert results["skipped_explainers"] == [
        {"model": "center", "explainer": "probe", "reason": "center lacks probe"}]
