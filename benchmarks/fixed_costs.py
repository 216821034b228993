"""The fixed costs of a small run (setup, aggregation, report) against its loop, before and after.

A phantom run of `--images` images with the default models (`xbench run --limit N`, report
included) in a fresh process, as a user starts it. The process's wall time is split into:
- loop: the batches of the run (`Runner._run_dataset`: decode, forward, grounding, records);
- aggregation: `rebuild_results` (records -> results.json), outside the report;
- report: `write_report` (tables, figures, gallery, report.html);
- setup: the rest (interpreter start, imports, plugin discovery, config, building the models).
The fixed share is (setup + aggregation + report) / loop.

"before" runs the same command with the core of another commit (`--before`, default the commit
issue 22's work started from) checked out into a temporary git worktree and put first on
PYTHONPATH; "after" runs the working tree's core. The two alternate, `--repeat` times each, and the
fastest of each is kept (the machine's other load only adds time).

Last line: `fixed_share: before <x> after <y> (fixed / loop)`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE = "53f0a4f0cf41bfc0c30d0e32cfe964b087b7a903"  # main when issue 22's items 2 and 4 started

# Runs `xbench run` in this process with the phases timed; writes their seconds as JSON to argv[1].
CHILD = r"""
import json, sys, time
from xbench_core import cli, report
from xbench_core.engine import runner, session

spent = {"loop": 0.0, "aggregation": 0.0, "report": 0.0}
inside = []

def timed(owner, name, phase):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if inside:  # nested (the report aggregating): counted in the outer phase
            return original(*args, **kwargs)
        inside.append(phase)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - start
            inside.pop()
    setattr(owner, name, wrapper)

timed(runner.Runner, "_run_dataset", "loop")
timed(session, "rebuild_results", "aggregation")
timed(report, "write_report", "report")
out = sys.argv[1]
sys.argv = ["xbench", "run", *sys.argv[2:]]
code = cli.main()
spent["core"] = cli.__file__
json.dump(spent, open(out, "w"))
sys.exit(code)
"""


def checkout(commit: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(where), commit],
                   check=True, capture_output=True)
    return where


def run_once(core: Path | None, images: int, tmp: Path) -> dict[str, float]:
    tmp.mkdir(parents=True, exist_ok=True)
    out, timings = tmp / "run", tmp / "phases.json"
    env = dict(os.environ)
    if core is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(core), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = [sys.executable, "-c", CHILD, str(timings), "--limit", str(images), "--out", str(out),
            "--overwrite", "--quiet", "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, cwd=tmp)
    phases = json.loads(timings.read_text())
    phases["total"] = time.perf_counter() - start
    phases["setup"] = phases["total"] - phases["loop"] - phases["aggregation"] - phases["report"]
    expected = (core or REPO) / "xbench_core" / "cli.py"
    assert Path(phases.pop("core")).resolve() == expected.resolve(), f"ran the wrong core (not {expected})"
    return phases


def show(label: str, p: dict[str, float]) -> None:
    fixed = p["setup"] + p["aggregation"] + p["report"]
    print(f"{label:6s} total {p['total']:6.2f} s: setup {p['setup']:5.2f}, loop {p['loop']:5.2f}, "
          f"aggregation {p['aggregation']:5.2f}, report {p['report']:5.2f}; fixed/loop {fixed / p['loop']:.2f}")


def share(p: dict[str, float]) -> float:
    return (p["setup"] + p["aggregation"] + p["report"]) / p["loop"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--before", default=BEFORE, help="the commit whose core gives the 'before' figures")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xbench-fixed-") as name:
        tmp = Path(name)
        old = checkout(args.before, tmp / "before")
        try:
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):
                for label, core in (("before", old), ("after", None)):
                    p = run_once(core, args.images, tmp / ("work-" + label))
                    show(label, p)
                    if label not in best or p["total"] < best[label]["total"]:
                        best[label] = p
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
        print(f"fastest of {args.repeat} each, {args.images} phantom images:")
        show("before", best["before"])
        show("after", best["after"])
        print(f"fixed_share: before {share(best['before']):.2f} after {share(best['after']):.2f} (fixed / loop)")


if __name__ == "__main__":
    main()
