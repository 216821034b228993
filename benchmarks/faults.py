"""Fault injection: every way of breaking a run found in issue 16, each tried as a new user would.

Each case injects one fault and checks that XBench notices it: a typed one-line error (exit 2), an
error record or a listed problem. A case ends in one of three ways:

- ok: the fault was noticed and nothing finished was lost;
- silent: it was not noticed (a wrong result, or a problem nobody is told about): the case's
  assertion fails;
- traceback: an exception other than XBench's typed errors escaped.

    python benchmarks/faults.py            # runs every case; the last line is the verdict
    pytest tests/test_faults.py            # the same cases, one test each

The last line printed is `faults: N cases, S silent, T tracebacks`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CASES: dict[str, Callable[[Path], None]] = {}


def case(name: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Register a fault case: a function of a fresh temporary folder that asserts the fault is seen."""

    def add(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        CASES[name] = fn
        return fn

    return add


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def xbench(*args: str) -> Outcome:
    """`xbench ARGS` in this process: an exception that is not a typed error propagates (a traceback)."""
    from xbench_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Outcome(code, out.getvalue(), err.getvalue())


def user_error(outcome: Outcome, *expected: str) -> None:
    """Exit 2 with one line `xbench: error: ...` that contains every `expected` text."""
    assert outcome.code == 2, f"exit {outcome.code}, expected 2 (stderr: {outcome.err[-500:]})"
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xbench: error: "), outcome.err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


def records(run: Path) -> list[dict[str, Any]]:
    from xbench_core.store import RunStore

    return list(RunStore(run).records())


PHANTOM = ("--set", "phantom.size=4", "--set", "phantom.resolution=64")


# ---- 1. quoted booleans ------------------------------------------------------------------------
@case("1 quoted booleans in a config (fail_fast: 'no', save_maps: 'false')")
def quoted_booleans(tmp: Path) -> None:
    config = tmp / "run.yaml"
    config.write_text("fail_fast: 'no'\nsave_maps: 'false'\nimage_cache: 'off'\n")
    out = xbench("validate", str(config))
    assert out.code == 0, out.err
    shown = json.loads(out.out[out.out.index("{"):])
    assert shown["fail_fast"] is False and shown["save_maps"] is False and shown["image_cache"] is None, shown
    config.write_text("fail_fast: 'sometimes'\n")
    user_error(xbench("validate", str(config)), "fail_fast must be a bool")


# ---- 2. output shapes --------------------------------------------------------------------------
def _shape_plugin() -> Any:
    import torch

    from xbench_core import ModelOutput, ModelSpec, Option, hookimpl
    from xbench_core.builtin.baselines import CenterBaseline

    class Misshapen(CenterBaseline):
        """The center baseline with one output bent: `fault` says which."""

        def __init__(self, fault: str = "extra_channel") -> None:
            super().__init__()
            self.fault = fault

        def forward(self, pixels: Any, queries: list[str]) -> ModelOutput:
            out = super().forward(pixels, queries)
            maps, scores = out.maps["prior"], out.scores
            if self.fault == "extra_channel":  # a plausible bug: a background channel in front
                maps = torch.cat([torch.rand_like(maps[:, :1]), maps], dim=1)
            elif self.fault == "missing_channel":
                maps = maps[:, 1:]
            elif self.fault == "no_channel":
                maps = maps[:, 0]
            elif self.fault == "flat_scores":
                scores = scores[:, 0]
            return ModelOutput(scores=scores, maps={"prior": maps})

    class Plugin:
        @hookimpl
        def xbench_register_models(self, register: Any) -> None:
            register(ModelSpec(name="misshapen", summary="wrong output shapes", factory=Misshapen,
                               options=(Option("fault", str, "extra_channel"),)))

    return Plugin()


@case("2 model outputs of the wrong shape (extra/missing map channel, [B,h,w] maps, [B] scores)")
def wrong_shapes(tmp: Path) -> None:
    from xbench_core.testing import temporary_plugin

    expected = {"extra_channel": "[4, 7, 14, 14]", "missing_channel": "[4, 5, 14, 14]",
                "no_channel": "[4, 14, 14]", "flat_scores": "[4]"}
    with temporary_plugin(_shape_plugin(), "faults-shapes"):
        for fault, actual in expected.items():
            run = tmp / fault
            out = xbench("run", *PHANTOM, "--models", "center,misshapen", "--set", f"misshapen.fault={fault}",
                         "--batch-size", "4", "--out", str(run), "--quiet", "--no-report")
            assert out.code == 0, out.err
            recs = records(run)
            bad = [r for r in recs if r["model"] == "misshapen"]
            good = [r for r in recs if r["model"] == "center"]
            assert bad and all(r["error"] and "misshapen" in r["error"] and actual in r["error"] for r in bad), \
                (fault, bad[:1])
            assert good and not any(r["error"] for r in good), good[:1]
            results = json.loads((run / "results.json").read_text())
            scored = [r for r in results["rows"] if r["model"] == "misshapen" and r.get("pointing_game") is not None]
            assert not scored, f"{fault}: misshapen maps were scored: {scored[:1]}"


# ---- 5. two runs on one run directory ----------------------------------------------------------
@case("5 a second run on the run directory of a live run")
def concurrent_runs(tmp: Path) -> None:
    import subprocess

    run = tmp / "run"
    # a live holder: another process that takes the run's lock the way `xbench run` does
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from xbench_core.engine.lock import run_lock\n"
         f"with run_lock({str(run)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        import socket

        out = xbench("run", *PHANTOM, "--out", str(run), "--quiet", "--no-report")
        user_error(out, f"pid {holder.pid}", socket.gethostname(), "--out")
        assert not (run / "records").exists(), "the second run wrote records"
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock went with it, the next run proceeds
    out = xbench("run", *PHANTOM, "--out", str(run), "--quiet", "--no-report")
    assert out.code == 0, out.err
    assert len(records(run)) == len(list(_all_lines(run))), "duplicated records"


def _all_lines(run: Path) -> Any:
    for path in sorted((run / "records").rglob("*.jsonl")):
        yield from path.read_text().splitlines()


# ---- 9. option values out of range ------------------------------------------------------------
@case("9 option values out of range (phantom.size=0, center.sigma=nan) pass validate")
def option_ranges(tmp: Path) -> None:
    config = tmp / "run.yaml"
    for text, expected in [("datasets: [{name: phantom, size: 0}]", "phantom.size must be >= 1, got 0"),
                           ("models: [{name: center, sigma: .nan}]", "center.sigma must be a finite number"),
                           ("batch_size: -3", "batch_size must be >= 1")]:
        config.write_text(text + "\n")
        user_error(xbench("validate", str(config)), expected)
    user_error(xbench("run", "--set", "center.sigma=nan", "--models", "center", "--out", str(tmp / "r"), "--quiet"),
               "center.sigma must be a finite number")
    assert not (tmp / "r" / "results.json").exists()


# ---- the verdict -------------------------------------------------------------------------------
def run_case(name: str) -> tuple[str, str]:
    """('ok' | 'silent' | 'traceback', detail) of one case, in a fresh temporary folder."""
    from xbench_core import plugins

    plugins._cache.clear()
    with tempfile.TemporaryDirectory(prefix="xbench-fault-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            CASES[name](Path(tmp))
            return "ok", ""
        except AssertionError as exc:
            return "silent", str(exc) or traceback.format_exc(limit=-2)
        except Exception:  # noqa: BLE001 - the point: any untyped exception is a finding
            return "traceback", traceback.format_exc()
        finally:
            os.chdir(cwd)
            plugins._cache.clear()


def main(names: list[str] | None = None) -> int:
    verdicts = {"ok": 0, "silent": 0, "traceback": 0}
    for name in names or list(CASES):
        verdict, detail = run_case(name)
        verdicts[verdict] += 1
        print(f"{verdict:<9}  {name}")
        if detail:
            print("           " + detail.strip().replace("\n", "\n           "))
    total = sum(verdicts.values())
    print(f"faults: {total} cases, {verdicts['silent']} silent, {verdicts['traceback']} tracebacks")
    return 0 if verdicts["silent"] == verdicts["traceback"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
