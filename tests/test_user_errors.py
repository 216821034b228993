"""Every user input error reaches the command line as one line `xbench: error: ...` and exit 2,
with no traceback: typed errors raised while setting up, and plugin construction errors (a
ValueError or a missing file from a factory) wrapped into typed ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xbench_core import DatasetSpec, ModelSpec, Option, hookimpl
from xbench_core.builtin.phantom import Phantom
from xbench_core.cli import main
from xbench_core.errors import ConfigError, DataError
from xbench_core.testing import temporary_plugin


def _bad_dataset(root: str = "/nonexistent", mode: str = "value") -> Any:
    if mode == "file":
        open(Path(root) / "labels.csv").close()  # noqa: SIM115 - the factory's own FileNotFoundError
    if mode == "typed":
        raise DataError("labels.csv: line 3 has 2 columns, expected 4\nfix the file or pass another root")
    raise ValueError(f"bad root {root!r}")


class _Plugin:
    @hookimpl
    def xbench_register_datasets(self, register: Any) -> None:
        register(DatasetSpec(name="bad-dataset", summary="its factory fails", factory=_bad_dataset,
                             findings=Phantom(1).findings,
                             options=(Option("root", "path", "/nonexistent"), Option("mode", str, "value"))))

    @hookimpl
    def xbench_register_models(self, register: Any) -> None:
        register(ModelSpec(name="bad-model", summary="its factory fails", factory=_bad_dataset))


@pytest.fixture()
def plugin() -> Any:
    with temporary_plugin(_Plugin(), "user-errors-test") as reg:
        yield reg


def _error_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xbench: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_phantom_size_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--set", "phantom.resolution=64", "--out", str(tmp_path / "r"), "--quiet", "--no-report"]
    line = _error_line(capsys, main([*args, "--set", "phantom.size=0"]))
    assert "phantom" in line and "size" in line
    # the directory of a run that failed while setting up holds no record: the corrected run takes it
    assert main([*args, "--set", "phantom.size=2"]) == 0


def test_run_directory_that_cannot_be_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    line = _error_line(capsys, main(["run", "--out", str(tmp_path / "file" / "run"), "--quiet"]))
    assert "cannot create the run directory" in line


@pytest.mark.parametrize(("sets", "words"), [
    (["bad-dataset.mode=value"], ["bad-dataset", "bad root"]),
    (["bad-dataset.mode=file", f"bad-dataset.root={Path(__file__).parent / 'nowhere'}"], ["bad-dataset", "labels.csv"]),
    (["bad-dataset.mode=typed"], ["labels.csv: line 3", "fix the file"]),
])
def test_plugin_construction_errors(plugin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    sets: list[str], words: list[str]) -> None:
    args = ["run", "--datasets", "bad-dataset", "--models", "center", "--out", str(tmp_path / "r"), "--quiet"]
    line = _error_line(capsys, main([*args, *[a for s in sets for a in ("--set", s)]]))
    assert all(w in line for w in words), line
    line = _error_line(capsys, main(["inspect", "bad-dataset", "--skip-images"]))
    assert "bad root" in line


def test_model_construction_error(plugin: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, main(["run", "--models", "bad-model", "--set", "phantom.size=2", "--out",
                                     str(tmp_path / "r"), "--quiet"]))
    assert "bad-model" in line and "bad root" in line


def test_spec_build_wraps_value_errors(plugin: Any) -> None:
    with pytest.raises(ConfigError, match="bad-dataset: .*bad root"):
        plugin.datasets["bad-dataset"].build()


def test_unreadable_run_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    assert main(["run", "--set", "phantom.size=2", "--set", "phantom.resolution=64", "--out", str(run), "--quiet",
                 "--no-report"]) == 0
    (run / "results.json").write_text('{"rows": [')
    line = _error_line(capsys, main(["report", str(run), str(run), "--quiet"]))
    assert "results.json" in line
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(manifest)[:-10])
    for args in (["merge", str(run)], ["report", str(run), "--quiet"]):
        assert "manifest.json" in _error_line(capsys, main(args))
