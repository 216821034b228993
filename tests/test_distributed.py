"""torchrun (gloo on CPU), job-array shards with merge, resume across world sizes, a failing rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ARGS = ["--set", "phantom.size=12", "--set", "phantom.resolution=64", "--batch-size", "2", "--quiet", "--no-report"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return env


def _xbench(*args: str, torchrun: bool = False, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = (TORCHRUN if torchrun else [sys.executable]) + ["-m", "xbench_core", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _rows(run: Path) -> list[dict]:
    rows = json.loads((run / "results.json").read_text())["rows"]
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["explainer"], r["finding"]))


def _record_keys(run: Path) -> list[tuple]:
    from xbench_core.store import RunStore

    return [(r["dataset"], r["id"], r["model"], r["explainer"], r["finding"]) for r in RunStore(run).records()]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    done = _xbench("run", *ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_torchrun_two_processes_equal_single(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = _xbench("run", *ARGS, "--out", str(out), torchrun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(p.name for p in (out / "records" / "phantom" / "random" / "native").glob("*.jsonl"))
    assert shards == ["shard-0.jsonl", "shard-1.jsonl"]
    assert _rows(out) == _rows(single)
    keys = _record_keys(out)
    assert len(keys) == len(set(keys)) == len(_record_keys(single))


def test_shards_merge_and_missing_report(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "array"
    first = _xbench("run", *ARGS, "--out", str(out), "--shard", "0/3")
    assert first.returncode == 0, first.stderr
    partial = _xbench("merge", str(out))
    assert partial.returncode == 1 and "no records yet" in partial.stdout
    for i in (1, 2):
        assert _xbench("run", *ARGS, "--out", str(out), "--shard", f"{i}/3").returncode == 0
    merged = _xbench("merge", str(out))
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert _rows(out) == _rows(single)


def test_resume_with_another_world_size(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    # one of three job-array shards finished, then the rest done by a 2-process torchrun
    assert _xbench("run", *ARGS, "--out", str(out), "--shard", "1/3").returncode == 0
    before = len(_record_keys(out))
    done = _xbench("run", *ARGS, "--out", str(out), torchrun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = _record_keys(out)
    assert 0 < before < len(keys) and len(keys) == len(set(keys)) == len(_record_keys(single))
    assert _rows(out) == _rows(single)


def test_a_failing_rank_stops_the_others(tmp_path: Path) -> None:
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "failing_rank_plugin.py").write_text(textwrap.dedent("""
        import os
        from xbench_core import DatasetSpec, Option, hookimpl
        from xbench_core.builtin.phantom import Phantom

        class Failing(Phantom):
            def load_image(self, sample):
                if os.environ.get("RANK") == "1":
                    raise RuntimeError("rank 1 cannot read its images")
                return super().load_image(sample)

        @hookimpl
        def xbench_register_datasets(register):
            register(DatasetSpec(name="failing-phantom", summary="fails on rank 1", factory=Failing,
                                 findings=("nodule",), options=(Option("size", int, 12), Option("resolution", int, 64))))
    """))
    dist = plug / "failing_rank_plugin-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-rank-plugin\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[xbench]\nfailing = failing_rank_plugin\n")
    start = time.time()
    done = _xbench("run", "--datasets", "failing-phantom", "--models", "center", "--fail-fast", "--quiet",
                   "--out", str(tmp_path / "run"), torchrun=True, env=_env(plug), timeout=240)
    assert done.returncode != 0
    assert "rank 1 cannot read its images" in done.stderr
    assert time.time() - start < 200
