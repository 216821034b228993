"""Fault injection: every way of breaking a run found in issue 16, each tried as a new user would.

Each case injects one fault and checks that XBench notices it: a typed one-line error (exit 2), an
error record or a listed problem. A case ends in one of three ways:

- ok: the fault was noticed and nothing finished was lost;
- silent: it was not noticed (a wrong result, or a problem nobody is told about): the case's
  assertion fails;
- traceback: an exception other than XBench's typed errors escaped;
- skipped: the plugin the case breaks is not installed (a core-only environment).

    python benchmarks/faults.py            # runs every case; the last line is the verdict
    python benchmarks/faults.py 3 4        # only cases 3 and 4
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


class Skip(Exception):
    """A case that cannot run here (the plugin it breaks is not installed)."""


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
            elif self.fault == "constant":  # a model whose map carries no information
                maps = torch.zeros_like(maps)
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


# ---- 3. label files naming files outside the dataset root ---------------------------------------
def _plugin_installed(name: str) -> None:
    from xbench_core.plugins import get_registry

    if name not in get_registry().datasets:
        raise Skip(f"the {name} plugin is not installed")


@case("3 label ids that escape the dataset root (RSNA ../../../outside/evil, ChestX-Det10 /etc/passwd)")
def escaping_labels(tmp: Path) -> None:
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "evil.dcm").write_bytes(b"not read")
    _plugin_installed("rsna-pneumonia")
    root = tmp / "rsna" / "a" / "b"
    (root / "stage_2_train_images").mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        f"../../../outside/evil,,,,,0\n{outside / 'evil'},,,,,0\nplain,,,,,0\n")
    report = _inspect("rsna-pneumonia", root)
    assert report["images"] == 1, report
    lines = {p["line"] for p in report["problems"] if "dataset root" in p["message"]}
    assert lines == {2, 3}, report["problems"]
    _plugin_installed("chestx-det10")
    root = tmp / "det10"
    root.mkdir()
    (root / "test.json").write_text(json.dumps([
        {"file_name": "/etc/passwd", "syms": [], "boxes": []},
        {"file_name": "../../outside/evil.dcm", "syms": [], "boxes": []},
        {"file_name": "36302.png", "syms": [], "boxes": []}]))
    report = _inspect("chestx-det10", root)
    assert report["images"] == 1, report
    assert sum("dataset root" in p["message"] for p in report["problems"]) == 2, report["problems"]


def _inspect(name: str, root: Path) -> dict[str, Any]:
    out = xbench("inspect", name, "--root", str(root), "--skip-images", "--json")
    assert out.code == 0, out.err
    return json.loads(out.out)


# ---- 4. an image too small for its labels -------------------------------------------------------
def _tiny_plugin(side: int) -> Any:
    from xbench_core import Dataset, DatasetSpec, Option, Problem, Region, Sample, hookimpl

    class Tiny(Dataset):
        """Four images of `side` pixels whose boxes were drawn on 1024x1024 (a thumbnail in place
        of the release's file), and their labels."""

        def __init__(self, root: str, side: int = side, frame: int = 1024, problems: int = 0) -> None:
            self.name, self.split, self.findings = "tiny", "test", ("pneumonia",)
            self.root, self.side, self.frame = Path(root), side, frame
            # what a label file's parser reports: rows it skipped
            self.problems = [Problem(str(self.root / "labels.csv"), f"Target 'x{k}' is not 0 or 1; row skipped",
                                     line=k + 2) for k in range(problems)]

        def __len__(self) -> int:
            return 4

        def annotation(self, i: int) -> Sample:
            region = Region.from_boxes((self.frame, self.frame), [[10, 20, 40, 60]])
            return Sample("tiny", f"img{i}", None, {"pneumonia": 1}, {"pneumonia": region},
                          {"path": str(self.root / f"img{i}.png"), "size": (self.frame, self.frame)})

        def load_image(self, sample: Sample) -> Any:
            import numpy as np

            return np.full((self.side, self.side), 0.5, dtype=np.float32)

    class Plugin:
        @hookimpl
        def xbench_register_datasets(self, register: Any) -> None:
            register(DatasetSpec(name="tiny", summary="1x1 images", factory=Tiny, findings=("pneumonia",),
                                 options=(Option("root", "path", required=True), Option("side", int, side),
                                          Option("frame", int, 1024), Option("problems", int, 0))))

    return Plugin()


@case("4 a 1x1 image whose box was drawn on 1024x1024 (perfect pointing game for any model)")
def degenerate_image(tmp: Path) -> None:
    from xbench_core.testing import temporary_plugin

    with temporary_plugin(_tiny_plugin(1), "faults-tiny"):
        run = tmp / "run"
        out = xbench("run", "--datasets", "tiny", "--set", f"tiny.root={tmp}", "--models", "random",
                     "--out", str(run), "--quiet")
        assert out.code == 0, out.err
        recs = records(run)
        assert recs and all(r["error"] and "1x1" in r["error"] and r["stats"] is None for r in recs), recs[:1]
        results = json.loads((run / "results.json").read_text())
        assert not any(r.get("pointing_game") is not None for r in results["rows"]), results["rows"]
        out = xbench("inspect", "tiny", "--root", str(tmp), "--json")
        assert out.code == 0, out.err
        assert sum("1x1" in p["message"] for p in json.loads(out.out)["problems"]) == 4


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


# ---- 6. label problems of a run --------------------------------------------------------------
@case("6 label problems that inspect lists are hidden by run (only a count in the manifest)")
def hidden_problems(tmp: Path) -> None:
    from xbench_core.testing import temporary_plugin

    with temporary_plugin(_tiny_plugin(128), "faults-tiny"):
        run = tmp / "run"
        out = xbench("run", "--datasets", "tiny", "--set", f"tiny.root={tmp}", "--set", "tiny.frame=128",
                     "--set", "tiny.problems=12", "--models", "center", "--out", str(run))
        assert out.code == 0, out.err
    assert "12 label problems in tiny (12 row skipped)" in out.out, out.out
    assert "labels.csv:2: Target 'x0' is not 0 or 1; row skipped" in out.out, out.out
    results = json.loads((run / "results.json").read_text())
    problems = results["problems"]["tiny"]
    assert problems["count"] == 12 and len(problems["first"]) == 5, problems
    full = (run / problems["file"]).read_text().splitlines()
    assert len(full) == 12 and json.loads(full[-1])["line"] == 13
    report = run / "report.html"
    if report.exists():  # written when matplotlib is installed
        assert "12 label problems in tiny" in report.read_text()


# ---- 7. constant maps --------------------------------------------------------------------------
@case("7 constant maps counted only inside raw records (not in results rows, table or report)")
def constant_maps(tmp: Path) -> None:
    from xbench_core.testing import temporary_plugin

    with temporary_plugin(_shape_plugin(), "faults-shapes"):
        run = tmp / "run"
        out = xbench("run", *PHANTOM, "--models", "misshapen", "--set", "misshapen.fault=constant",
                     "--out", str(run))
        assert out.code == 0, out.err
    rows = json.loads((run / "results.json").read_text())["rows"]
    grounded = [r for r in rows if r["finding"] != "__mean__" and r["n_regions"]]
    assert grounded and all(r.get("n_constant_maps") == r["n_regions"] for r in grounded), grounded[:1]
    mean = next(r for r in rows if r["finding"] == "__mean__")
    assert mean["n_constant_maps"] == sum(r["n_regions"] for r in grounded)
    head = next(line for line in out.out.splitlines() if line.startswith("dataset"))
    assert head.split()[-1] == "const", head
    report = run / "report.html"
    if report.exists():  # written when matplotlib is installed
        assert "Constant maps" in report.read_text()


# ---- 8. a fit through two points and marks of overlapping intervals ---------------------------
@case("8 the recognition-vs-grounding fit with two models (R^2 = 1.000, n = 2) and marks of overlapping intervals")
def fit_and_ties(tmp: Path) -> None:
    run = tmp / "run"
    out = xbench("run", *PHANTOM, "--out", str(run), "--quiet")  # two models: random and center
    assert out.code == 0, out.err
    fits = json.loads((run / "results.json").read_text())["recognition_vs_grounding"]["fits"]
    assert fits and all(f["r2"] is None and f["slope"] is None and "at least 3" in f["undefined"] for f in fits), fits
    report = run / "report.html"
    if report.exists():
        assert "R² = 1.000" not in report.read_text() and "no fit (n = 2)" in report.read_text()
    from xbench_core.report.tables import Column, Line, Table

    lines = [Line(m, m, "native", {"pg": v}, {"pg": ci})
             for m, v, ci in (("a", 0.61, [0.5, 0.7]), ("b", 0.6, [0.52, 0.68]), ("c", 0.3, [0.25, 0.35]))]
    marks = Table("t", "t", "t", None, [Column("pg", "PG")], lines).marks()
    assert marks == {(0, "pg"): "best", (1, "pg"): "best", (2, "pg"): "second"}, marks


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


@case("9 disk full while writing records, maps or results.json")
def disk_full(tmp: Path) -> None:
    if not Path("/dev/full").exists():
        raise Skip("no /dev/full on this system")
    import xbench_core.store

    for what in ("records", "maps", "results"):
        run = tmp / what
        if what == "results":  # results.json's temporary file: every write fails with ENOSPC
            run.mkdir()
            (run / "results.json.tmp").symlink_to("/dev/full")
        with _full_disk(xbench_core.store, what):
            out = xbench("run", *PHANTOM, "--models", "random", "--out", str(run), "--quiet", "--no-report")
        assert out.code == 2, f"{what}: exit {out.code}"
        user_error(out, "no space left on device", "run the same command again")
        assert not [p for p in run.rglob("*.tmp") if not p.is_symlink()], f"{what}: temporary files left"
        if what == "results":  # every record is on disk: the results are rebuilt once there is space
            assert xbench("report", str(run), "--quiet", "--no-gallery").code == 0
            assert json.loads((run / "results.json").read_text())["rows"]


@contextlib.contextmanager
def _full_disk(store_module: Any, what: str) -> Any:
    """Writes of record shards (`records`) or map shards (`maps`) fail as on a full disk. (A shard
    cannot be a link to /dev/full: the store reads shards back, and /dev/full reads endless zeros;
    safetensors replaces a link rather than writing through it.)"""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    class Full(io.StringIO):
        name = "records/shard-0.jsonl"

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\0" * 8)  # a partial file, as a full disk leaves it
        raise SafetensorError("No space left on device (os error 28)")

    original = safetensors.torch.save_file
    if what == "records":
        store_module.open = lambda *args, **kwargs: Full()  # the module's `open` shadows the builtin
    elif what == "maps":
        safetensors.torch.save_file = save_file
    try:
        yield
    finally:
        store_module.__dict__.pop("open", None)
        safetensors.torch.save_file = original


@case("9 a text encoder folder with truncated or malicious weights")
def bad_text_encoder(tmp: Path) -> None:
    from xbench_core.plugins import get_registry

    if "medklip" not in get_registry().models:
        raise Skip("the medklip plugin is not installed")
    from xbench_blocks.fusion import write_tiny_text_encoder

    folder = write_tiny_text_encoder(tmp / "te", ["pneumonia"])
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ("run", *PHANTOM, "--models", "medklip", "--set", "medklip.checkpoint=random",
            "--set", f"medklip.text_encoder={folder}", "--out", str(tmp / "r"), "--quiet", "--no-report")
    user_error(xbench(*args), "model medklip could not be built", str(folder))
    weights.unlink()
    marker = tmp / "payload-ran"
    (folder / "pytorch_model.bin").write_bytes(_payload(f"touch {marker}"))
    user_error(xbench(*args), "model medklip could not be built")
    assert not marker.exists(), "the pickle payload ran"


def _payload(command: str) -> bytes:
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (command,))

    return pickle.dumps({"embeddings.word_embeddings.weight": Payload()})


@case("9 `xbench convert A.pth SOME_DIR`, and the permissions of written files")
def convert_into_folder(tmp: Path) -> None:
    import stat

    import torch

    torch.save({"w": torch.ones(2)}, tmp / "A.pth")
    (tmp / "out").mkdir()
    out = xbench("convert", str(tmp / "A.pth"), str(tmp / "out"))
    assert out.code == 0, out.err
    written = tmp / "out" / "A.safetensors"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~mask, oct(written.stat().st_mode)
    run = tmp / "run"
    assert xbench("run", *PHANTOM, "--out", str(run), "--quiet", "--no-report").code == 0
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert modes == {oct(0o666 & ~mask)}, modes


# ---- 10. a plugin that takes a name already taken ---------------------------------------------
@case("10 a plugin registering a name already taken (random) makes every command fail")
def duplicate_names(tmp: Path) -> None:
    from xbench_core import ModelSpec, hookimpl
    from xbench_core.testing import temporary_plugin

    class Plugin:
        @hookimpl
        def xbench_register_models(self, register: Any) -> None:
            register(ModelSpec(name="random", summary="impostor", factory="x:y"))

    with temporary_plugin(Plugin(), "faults-impostor"):
        listing = xbench("list", "models")
        assert listing.code == 0 and "impostor" not in listing.out and "random" in listing.out, listing
        plugins = xbench("plugins")
        assert plugins.code == 0 and "FAILED faults-impostor" in plugins.out, plugins.out
        assert "two models are named 'random'" in plugins.out
        run = xbench("run", *PHANTOM, "--out", str(tmp / "r"), "--quiet", "--no-report")
        assert run.code == 0, run.err
        user_error(xbench("--strict-plugins", "list"), "two models are named 'random'")


# ---- smaller ----------------------------------------------------------------------------------
@case("11 `xbench inspect X --set X.root=...` as the dataset READMEs show it")
def inspect_set_forms(tmp: Path) -> None:
    for form in ("size=3", "phantom.size=3"):
        out = xbench("inspect", "phantom", "--set", form, "--set", "phantom.resolution=64", "--json")
        assert out.code == 0, out.err
        assert json.loads(out.out)["images"] == 3


@case("12 `xbench install rsna` suggests a name this project does not publish")
def install_names(tmp: Path) -> None:
    import subprocess

    calls: list[list[str]] = []
    original = subprocess.call
    subprocess.call = lambda cmd: calls.append(cmd) or 0  # type: ignore[assignment]
    try:
        assert xbench("install", "rsna").code == 0 and calls[-1][-1] == "xbench-plugin-rsna-pneumonia", calls
        user_error(xbench("install", "totally-unrelated"), "not an XBench plugin this project publishes")
        assert len(calls) == 1
    finally:
        subprocess.call = original  # type: ignore[assignment]


@case("13 `xbench list | head` ends in a BrokenPipeError traceback")
def broken_pipe(tmp: Path) -> None:
    import subprocess

    read, write = os.pipe()
    os.close(read)  # the reader has left before anything is written
    proc = subprocess.run([sys.executable, "-m", "xbench_core", "list"], stdout=write, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.returncode


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
        except Skip as exc:
            return "skipped", str(exc)
        except AssertionError as exc:
            return "silent", str(exc) or traceback.format_exc(limit=-2)
        except Exception:  # noqa: BLE001 - the point: any untyped exception is a finding
            return "traceback", traceback.format_exc()
        finally:
            os.chdir(cwd)
            plugins._cache.clear()


def main(names: list[str] | None = None) -> int:
    verdicts = {"ok": 0, "skipped": 0, "silent": 0, "traceback": 0}
    chosen = [n for n in CASES if not names or any(n.split()[0] == a for a in names)]  # by number
    for name in chosen:
        verdict, detail = run_case(name)
        verdicts[verdict] += 1
        print(f"{verdict:<9}  {name}")
        if detail:
            print("           " + detail.strip().replace("\n", "\n           "))
    total = sum(verdicts.values())
    skipped = f" ({verdicts['skipped']} skipped: plugin not installed)" if verdicts["skipped"] else ""
    print(f"faults: {total} cases, {verdicts['silent']} silent, {verdicts['traceback']} tracebacks{skipped}")
    return 0 if verdicts["silent"] == verdicts["traceback"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
