"""Reports from a phantom run: tables (LaTeX well-formed without compiling, Markdown and CSV agreeing
with results.json, best and second best marked), figures (non-empty PNGs of the expected size,
valid SVGs), the HTML page (self-contained, every link resolves), merging runs (the newer wins, a
validation split pairs with the test split), and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from xbench_core.cli import main
from xbench_core.engine.session import rebuild_results
from xbench_core.plugins import get_registry
from xbench_core.report.sources import load_sources, merge_sources
from xbench_core.report.tables import Column, Line, Table, to_latex, to_markdown
from xbench_core.store import RunStore

SLUGS = ("grounding__phantom", "pointing_game_per_finding__phantom", "recognition__phantom", "strata__phantom",
         "thresholds__phantom", "grounding_overview")
FIGURES = {"recognition_vs_grounding": (640, 480), "dice_fixed_vs_best": (440, 340),
           "pointing_game_per_finding__phantom": None, "strata__phantom": (960, 380), "dice_curve__phantom": (640, 420)}
FINDINGS = ("nodule", "mass", "consolidation", "pleural_effusion", "pneumothorax", "cardiomegaly")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom run; `xbench run` writes its report at the end."""
    out = tmp_path_factory.mktemp("report") / "run"
    rc = main(["run", "--set", "phantom.size=16", "--set", "phantom.resolution=96", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def _mean(results: dict[str, Any], model: str) -> dict[str, Any]:
    return next(r for r in results["rows"] if r["model"] == model and r["finding"] == "__mean__")


def test_run_writes_tables_figures_gallery_and_page(run: Path) -> None:
    for slug in SLUGS:
        for ext in ("csv", "md", "tex"):
            assert (run / "tables" / f"{slug}.{ext}").stat().st_size > 100, (slug, ext)
    for name in FIGURES:
        assert (run / "figures" / f"{name}.png").exists() and (run / "figures" / f"{name}.svg").exists()
    gallery = sorted(p.name for p in (run / "figures" / "gallery").glob("*.png"))
    findings_with_regions = {r["finding"] for r in _results(run)["rows"] if r["finding"] != "__mean__" and r["n_regions"]}
    assert gallery == sorted(f"gallery__phantom__{f}.png" for f in findings_with_regions)
    assert (run / "report.html").stat().st_size > 5000


# ---- tables ---------------------------------------------------------------------------------------
def _cells(line: str) -> int:
    """Columns a LaTeX row spans (multicolumns counted by their span, escaped \\& not a separator)."""
    body = line.rstrip().removesuffix("\\\\")
    parts = re.split(r"(?<!\\)&", body)
    spans = [int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", p)) else 1 for p in parts]
    return sum(spans)


def _check_latex(text: str) -> None:
    assert text.count("\\begin{table}") == text.count("\\end{table}") == 1
    assert text.count("\\begin{tabular}") == text.count("\\end{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", text).group(1)
    ncols = len(re.findall(r"[lrc]", spec))
    lines = text.splitlines()
    top, mid, bottom = lines.index("\\toprule"), lines.index("\\midrule"), lines.index("\\bottomrule")
    assert top < mid < bottom, "booktabs rules in order"
    rows = [ln for ln in lines[top + 1 : bottom] if ln.rstrip().endswith("\\\\")]
    assert len(rows) >= 3  # header and at least two models
    for ln in rows:
        assert _cells(ln) == ncols, ln
    # braces balance and every underscore, percent, ampersand in text is escaped
    assert text.count("{") - text.count("\\{") == text.count("}") - text.count("\\}")
    for ln in lines:
        if ln.startswith("%"):
            continue
        plain = re.sub(r"\$[^$]*\$", "", ln)
        assert not re.search(r"(?<!\\)[_%#]", plain), ln
    assert "\\textbf{" in text


def test_latex_tables_are_well_formed(run: Path) -> None:
    for slug in SLUGS:
        _check_latex((run / "tables" / f"{slug}.tex").read_text())


def test_latex_escapes_names_and_marks_best_and_second() -> None:
    cols = [Column("a", "a_b"), Column("g", "gap", rank=False)]
    lines = [Line(f"model_{i} & co", f"model_{i}", "native", {"a": v, "g": v}, {"a": None, "g": None})
             for i, v in enumerate([0.5, 0.7, 0.7004, 0.2, None])]
    t = Table("t_1", "T", "caption with tau and 50% #1", None, cols, lines)
    assert t.marks() == {(1, "a"): "best", (2, "a"): "best", (0, "a"): "second"}  # ties at the shown digits
    tex = to_latex(t)
    _check_latex(tex)
    assert "model\\_1 \\& co & \\textbf{0.700}" in tex and "\\underline{0.500}" in tex and "$\\tau$" in tex
    assert "0.200 & 0.200" in tex and "- & -" in tex
    md = to_markdown(t)
    assert "| model\\_1 & co | **0.700** | 0.700 |" in md and "<ins>0.500</ins>" in md


def test_marks_treat_overlapping_intervals_as_ties() -> None:
    """Issue 16 item 8: a value whose 95% interval overlaps the leader's shares its mark, in every
    format; without intervals only equal shown values tie."""
    cols = [Column("a", "a")]
    values = [(0.8, [0.7, 0.9]), (0.75, [0.72, 0.78]), (0.5, [0.45, 0.55]), (0.48, [0.40, 0.52]), (0.2, [0.1, 0.3]),
              (0.6, None)]
    lines = [Line(f"m{i}", f"m{i}", "native", {"a": v}, {"a": ci}) for i, (v, ci) in enumerate(values)]
    t = Table("t", "T", "c", None, cols, lines)
    assert t.marks() == {(0, "a"): "best", (1, "a"): "best", (5, "a"): "second"}
    lines[5].values["a"] = None  # without m5 the second place is shared by m2 and m3
    assert t.marks() == {(0, "a"): "best", (1, "a"): "best", (2, "a"): "second", (3, "a"): "second"}
    md = to_markdown(t)
    assert "**0.800**" in md and "**0.750**" in md and "<ins>0.500</ins>" in md and "<ins>0.480</ins>" in md


def test_markdown_and_csv_agree_with_results(run: Path) -> None:
    results = _results(run)
    with open(run / "tables" / "grounding__phantom.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    for model in ("random", "center"):
        mean = _mean(results, model)
        assert float(rows[model]["PG"]) == pytest.approx(mean["pointing_game"])
        assert float(rows[model]["Dice*"]) == pytest.approx(mean["dice_best"])
        assert [float(rows[model]["Dice* ci_low"]), float(rows[model]["Dice* ci_high"])] == pytest.approx(mean["dice_best_ci"])
    md = (run / "tables" / "grounding__phantom.md").read_text().splitlines()
    table = [ln for ln in md if ln.startswith("|")]
    assert len({ln.count("|") for ln in table}) == 1  # every row has the same number of cells
    best = max(("random", "center"), key=lambda m: round(_mean(results, m)["dice_best"], 3))
    line = next(ln for ln in table if ln.startswith(f"| {best} "))
    assert f"**{_mean(results, best)['dice_best']:.3f}**" in line
    per_finding = (run / "tables" / "pointing_game_per_finding__phantom.csv").read_text().splitlines()[0]
    assert "Pleural effusion" in per_finding and "Mean" in per_finding


# ---- figures --------------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.scripts_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("script", "link") and ("src" in a or "href" in a):
            self.scripts_src.append(a.get("src") or a.get("href", ""))


def _page(run: Path) -> _Page:
    p = _Page()
    p.feed((run / "report.html").read_text())
    return p


def _colors(pixels: np.ndarray) -> int:
    rgb = pixels.astype(np.int32)
    return len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))


def test_figures_are_non_empty_pngs_of_the_expected_size(run: Path) -> None:
    page = _page(run)
    assert len(page.images) == len(FIGURES) + len(list((run / "figures" / "gallery").glob("*.png")))
    for img in page.images:
        path = run / img["src"]
        size = _png_size(path)
        assert size == (int(img["width"]), int(img["height"])), img["src"]
        name = Path(img["src"]).stem
        if FIGURES.get(name):
            assert size == FIGURES[name], name
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert pixels.std() > 10, f"{name} looks blank"
        assert _colors(pixels) > 50, name
    for name in FIGURES:
        root = ET.parse(run / "figures" / f"{name}.svg").getroot()
        assert root.tag.endswith("svg") and len(list(root.iter())) > 50


def test_gallery_shows_every_model_on_the_same_images(run: Path) -> None:
    path = run / "figures" / "gallery" / "gallery__phantom__pleural_effusion.png"
    width, height = _png_size(path)
    assert width == round(2.3 * 3 * 100)  # the X-ray plus one column per model
    rows = round((height / 100 - 0.3) / 2.5)
    assert 1 <= rows <= 3


# ---- the page -------------------------------------------------------------------------------------
def test_html_is_self_contained_and_every_link_resolves(run: Path) -> None:
    page = _page(run)
    html = (run / "report.html").read_text()
    assert not page.scripts_src, "styles and scripts are inline"
    assert "http://" not in html and "https://" not in html
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        else:
            assert (run / href).exists(), href
    for anchor in ("overview", "models", "model-random", "model-center", "dataset-phantom", "manifest", "methods",
                   *(f"dataset-phantom-finding-{f}" for f in FINDINGS)):
        assert anchor in page.ids, anchor
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["versions"]["torch"] in html and "model-filter" in html
    for name, version in {**manifest["versions"]["plugins"], **manifest["versions"]["libraries"]}.items():
        assert f"{name}</dt><dd>{version}</dd>" in html, name


# ---- merging runs ---------------------------------------------------------------------------------
def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("figures", "tables", "report.html"))
    return to


def test_merge_newer_run_wins_and_report_says_so(run: Path, tmp_path: Path) -> None:
    newer = _copy(run, tmp_path / "newer")
    shard = newer / "records" / "phantom" / "random" / "native" / "shard-0.jsonl"
    lines = [json.loads(x) for x in shard.read_text().splitlines()]
    for r in lines:
        if r.get("score") is not None:
            r["score"] = 1.0 - r["score"]
    shard.write_text("".join(json.dumps(r) + "\n" for r in lines))
    time.sleep(1.1)  # creation times have a resolution of seconds
    rebuilt = rebuild_results(RunStore(newer), get_registry())
    out = tmp_path / "merged"
    assert main(["report", str(newer), str(run), "--out", str(out), "--quiet", "--no-gallery"]) == 0
    merged = json.loads((out / "merged-results.json").read_text())
    assert _mean(merged, "random")["auroc"] == pytest.approx(_mean(rebuilt, "random")["auroc"])
    assert _mean(merged, "random")["auroc"] != pytest.approx(_mean(_results(run), "random")["auroc"])
    replaced = merged["merged_from"]["replaced"]
    assert len(replaced) == 2 and all(str(newer) in n and "replaces" in n for n in replaced)
    assert "replaces" in (out / "report.html").read_text()
    assert (out / "tables" / "grounding__phantom.tex").exists() and not (out / "figures" / "gallery").exists()


def test_merge_pairs_a_validation_run_with_a_test_run(run: Path, tmp_path: Path) -> None:
    val = _copy(run, tmp_path / "val")
    manifest = json.loads((val / "manifest.json").read_text())
    manifest["config"]["datasets"][0]["split"] = "val"
    (val / "manifest.json").write_text(json.dumps(manifest))
    for shard in RunStore(val).shard_files():  # records carry their split
        lines = [json.loads(line) for line in shard.read_text().splitlines()]
        shard.write_text("".join(json.dumps({**r, "split": "val"}) + "\n" for r in lines))
    registry = get_registry()
    merged = merge_sources(load_sources([run, val], registry), registry).results
    assert merged["analysis"]["val_pairs"] == [{"dataset": "phantom", "test_split": "test", "val_split": "val"}]
    test_rows = [r for r in merged["rows"] if r["split"] == "test" and r["finding"] != "__mean__" and r["n_regions"]]
    assert test_rows and not merged["merged_from"]["replaced"]
    for r in test_rows:  # the same records on both sides: the validation tau is the test's best tau
        assert r["val_threshold"] == r["best_threshold"] and r["dice_val"] == pytest.approx(r["dice_best"])
    assert all("dice_val" not in r for r in merged["rows"] if r["split"] == "val")


def test_no_report_flag(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(["run", "--set", "phantom.size=3", "--set", "phantom.resolution=64", "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    assert (out / "results.json").exists() and not (out / "report.html").exists()


# ---- a real browser -------------------------------------------------------------------------------
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600"]


class WebDriver:
    """Just enough of the W3C WebDriver protocol, over urllib, to drive chromedriver."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = None if body is None else json.dumps(body).encode()
        url = self.base + (path if not self.session else path.replace("{sid}", self.session))
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"WebDriver {method} {path}: {exc.read().decode(errors='replace')[:2000]}") from None

    def script(self, code: str) -> Any:
        return self.call("POST", "/session/{sid}/execute/sync", {"script": code, "args": []})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium_bins() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver_bin = shutil.which("chromedriver")
    if browser is None or driver_bin is None:
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    return browser, driver_bin


@contextlib.contextmanager
def chromium_page(page: Path, tmp_path: Path) -> Iterator[WebDriver]:
    """`page` open in a headless Chromium driven through chromedriver, every image loaded."""
    browser, driver_bin = _chromium_bins()
    port = _free_port()
    proc = subprocess.Popen([driver_bin, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = WebDriver(port)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if wd.call("GET", "/status", timeout=5).get("ready"):
                    break
            except (OSError, AssertionError):
                pass
            assert time.time() < deadline, "chromedriver did not start"
            time.sleep(0.2)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": [*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]}}
        wd.session = wd.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, timeout=120)["sessionId"]
        wd.call("POST", "/session/{sid}/url", {"url": page.resolve().as_uri()}, timeout=120)
        deadline = time.time() + 60
        while not wd.script("return document.readyState === 'complete' && "
                            "Array.from(document.images).every(function(i){ return i.complete; });"):
            assert time.time() < deadline, "the page did not finish loading"
            time.sleep(0.2)
        yield wd
    finally:
        if wd.session:
            try:
                wd.call("DELETE", "/session/{sid}", timeout=30)
            except (OSError, AssertionError):
                pass
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.browser
def test_report_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    with chromium_page(run / "report.html", tmp_path) as wd:
        images = wd.script("return Array.from(document.images).map(function(i){"
                           " return [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]; });")
        assert len(images) == len(FIGURES) + len(list((run / "figures" / "gallery").glob("*.png")))
        for src, w, h in images:
            assert w > 0 and h > 0, f"{src} did not load"
        assert wd.script("return document.body.getAttribute('data-images-failed');") == "0"
        # navigation by finding, and the model filter hides that model's rows
        assert wd.script("return !!document.getElementById('dataset-phantom-finding-pleural_effusion');")
        hidden = wd.script("document.querySelector('input.model-filter[value=\"random\"]').click();"
                           "return [document.querySelectorAll('tr.hidden-model').length,"
                           " document.querySelectorAll('tr[data-model=\"random\"]').length];")
        assert hidden[0] == hidden[1] > 0
        shot = Image.open(io.BytesIO(base64.b64decode(wd.call("GET", "/session/{sid}/screenshot"))))
        pixels = np.asarray(shot.convert("RGB"))
        assert shot.size[0] >= 800 and shot.size[1] >= 600
        assert pixels.std() > 20 and _colors(pixels) > 100, "blank screenshot"
        if os.environ.get("XBENCH_KEEP_SCREENSHOT"):
            shot.save(os.environ["XBENCH_KEEP_SCREENSHOT"])


def test_report_imports_no_torch(run: Path, tmp_path: Path) -> None:
    """`xbench report` (gallery included) reads the map cache in numpy: no torch import, which
    alone took 1.5-3.5 s of a report on the development machine."""
    import subprocess
    import sys

    code = ("import sys; from xbench_core.report import write_report; "
            "write_report([sys.argv[1]], out=sys.argv[2], quiet=True); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    done = subprocess.run([sys.executable, "-c", code, str(run), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert list((tmp_path / "out" / "figures" / "gallery").glob("*.png"))


# ---- the gallery needs no model -------------------------------------------------------------------
class _CroppedRandom:
    """A `random` baseline whose input is a center crop: a geometry the gallery must get right."""

    builds = 0

    @staticmethod
    def build(**options: Any) -> Any:
        import torch

        from xbench_core.builtin.baselines import RandomBaseline
        from xbench_core.geometry import shortest_side_crop

        _CroppedRandom.builds += 1

        class Cropped(RandomBaseline):
            def preprocess(self, image: np.ndarray) -> Any:
                pixels, geometry = shortest_side_crop(image, 128, 96)
                return torch.from_numpy(pixels)[None], geometry

        return Cropped(**options)


class _CroppedPlugin:
    from xbench_core import hookimpl

    @hookimpl
    def xbench_register_models(self, register: Any) -> None:
        from xbench_core import ModelSpec

        register(ModelSpec(name="cropped", summary="random maps on a center crop", factory=_CroppedRandom.build))


def test_report_draws_the_gallery_from_the_run_directory_alone(tmp_path: Path) -> None:
    """Maps are saved with their Geometry: `xbench report` redraws the gallery with the model's
    plugin gone and without building any model."""
    from xbench_core.builtin.phantom import Phantom
    from xbench_core.engine.config import build_config
    from xbench_core.engine.session import execute
    from xbench_core.report import write_report
    from xbench_core.testing import temporary_plugin

    out = tmp_path / "run"
    with temporary_plugin(_CroppedPlugin(), "cropped") as registry:
        cfg = build_config({"datasets": [{"name": "phantom", "size": 6, "resolution": 80}], "models": ["cropped"],
                            "out": str(out), "batch_size": 4}, registry)
        execute(cfg, registry, quiet=True)
        write_report([out], registry=registry, quiet=True)
        model = _CroppedRandom.build()
    drawn = {p.name: p.read_bytes() for p in (out / "figures" / "gallery").glob("*.png")}
    assert drawn
    # the stored geometry is the one preprocess gives (floats exact through JSON)
    store = RunStore(out)
    phantom = Phantom(size=6, resolution=80)
    keys = {f"{phantom.annotation(i).id}|{f}" for i in range(6) for f in phantom.annotation(i).regions}
    maps, geometries = store.load_maps("phantom", "test", "cropped", "native", keys)
    assert maps and set(geometries) == {k.rpartition("|")[0] for k in maps}
    for i in range(6):
        sample = phantom[i]
        if sample.id in geometries:
            assert geometries[sample.id] == model.preprocess(sample.image)[1]
    shutil.rmtree(out / "figures")
    _CroppedRandom.builds = 0
    registry = get_registry()
    assert "cropped" not in registry.models
    assert main(["report", str(out), "--quiet"]) == 0
    assert _CroppedRandom.builds == 0
    again = {p.name: p.read_bytes() for p in (out / "figures" / "gallery").glob("*.png")}
    assert set(again) == set(drawn)
    for name in drawn:  # the same pixels as the report written while the plugin was there
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(again[name]))), np.asarray(Image.open(io.BytesIO(drawn[name]))))


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The xbench-paper preset on synthetic data of its seven datasets, with the two baselines."""
    import importlib.util

    _chromium_bins()  # skip before the run when no browser is at hand
    spec = importlib.util.spec_from_file_location("paper_fixtures", Path(__file__).parent / "paper_fixtures.py")
    assert spec is not None and spec.loader is not None
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    base = tmp_path_factory.mktemp("paper")
    args = ["run", "--preset", "xbench-paper", "--models", "random,center", "--limit", "2", "--out",
            str(base / "run"), "--quiet", "--device", "cpu"]
    for s in fx.write_paper_data(base / "data"):
        args += ["--set", s]
    assert main(args) == 0
    return base / "run"


@pytest.mark.browser
def test_paper_tables_in_headless_chromium(paper_run: Path, tmp_path: Path) -> None:
    """The paper's section: Table 1 with the seven dataset groups in the paper's order, Tables 2-5,
    best and second marked, and Figures 3-4 loaded."""
    with chromium_page(paper_run / "report.html", tmp_path) as wd:
        assert wd.script("return !!document.querySelector('nav a[href=\"#paper\"]');")
        titles = wd.script("return Array.from(document.querySelectorAll('#paper .table h4')).map(function(h){"
                           " return h.textContent; });")
        assert titles[0] == "Table 1: grounding across datasets"
        assert [t.split(":")[0] for t in titles] == ["Table 1", "Table 2", "Table 2", "Table 3", "Table 4", "Table 5"]
        groups = wd.script("return Array.from(document.querySelectorAll('#paper .table')[0]"
                           ".querySelectorAll('tr.group th')).map(function(h){ return h.textContent; });")
        assert groups[1:] == ["COVID-19", "Pneumonia", "Pneumothorax", "CheXDet-10", "CheXlocalize", "VinDR-CXR",
                              "ChestX-ray14"]
        marks = wd.script("var t = document.querySelectorAll('#paper .table')[0];"
                          "return [t.querySelectorAll('td.best').length, t.querySelectorAll('td.second').length,"
                          " t.querySelectorAll('tbody tr').length];")
        assert marks[2] == 2 and marks[0] >= 21  # two models: every column has a best (ties: both)
        figures = wd.script("return Array.from(document.querySelectorAll('#paper img')).map(function(i){"
                            " return [i.getAttribute('src'), i.naturalWidth]; });")
        assert sorted(src for src, _ in figures) == ["figures/paper_figure3.png", "figures/paper_figure4.png"]
        assert all(w > 0 for _, w in figures)


# ---- best and second marks follow each metric's direction ------------------------------------------
def test_rank_marks_compare_as_shown_in_the_metric_direction() -> None:
    from xbench_core.report.marks import rank_marks

    values = {"a": 0.8004, "b": 0.8001, "c": 0.7, "d": None, "e": 0.2}
    assert rank_marks(values) == {"a": "best", "b": "best", "c": "second"}  # 0.800 twice as shown
    assert rank_marks(values, higher_is_better=False) == {"e": "best", "c": "second"}
    assert rank_marks(values, digits=None) == {"a": "best", "b": "second"}
    assert rank_marks({"a": 0.5, "b": None}) == {}


def test_tables_mark_the_lowest_value_of_a_lower_is_better_metric() -> None:
    from xbench_core import MetricSpec, hookimpl
    from xbench_core.report.marks import metric_directions
    from xbench_core.report.tables import Column, Line, Table
    from xbench_core.testing import temporary_plugin

    class Plugin:
        @hookimpl
        def xbench_register_metrics(self, register: Any) -> None:
            register(MetricSpec(name="brier", summary="Brier score", kind="classification", fields=("brier",),
                                factory=lambda: (lambda d: {"brier": 0.0}), higher_is_better=False))

    with temporary_plugin(Plugin(), "brier") as registry:
        directions = metric_directions(registry)
    assert directions["brier"] is False and directions["pointing_game"] is True and directions["dice_best"] is True
    lines = [Line(m, m, "native", {"brier": b, "auroc": a, "small|brier": b, "pneumonia": b}, {})
             for m, b, a in (("x", 0.30, 0.9), ("y", 0.10, 0.7), ("z", 0.20, 0.8))]
    cols = [Column("brier", "Brier"), Column("auroc", "AUROC"), Column("small|brier", "Brier"),
            Column("pneumonia", "Pneumonia", field="brier")]
    table = Table("t", "t", "", None, cols, lines, directions=directions)
    marks = table.marks()
    for key in ("brier", "small|brier", "pneumonia"):
        assert (marks[(1, key)], marks[(2, key)]) == ("best", "second") and (0, key) not in marks
    assert (marks[(0, "auroc")], marks[(2, "auroc")]) == ("best", "second")
    assert "**0.100**" in to_markdown(table) and "\\textbf{0.100}" in to_latex(table)
    assert Table("t", "t", "", None, cols, lines).marks()[(0, "brier")] == "best"  # no directions: higher


def test_faithfulness_table_marks_lower_deletion_auc_best() -> None:
    from xbench_core.report.faithfulness import faithfulness_tables

    rows = [{"dataset": "d", "split": "test", "model": m, "explainer": "native", "finding": "__mean__", "n_faithfulness": 4,
             "deletion_auc": dele, "insertion_auc": ins, "deletion_auc_random": 0.5}
            for m, dele, ins in (("x", 0.3, 0.6), ("y", 0.1, 0.4), ("z", 0.2, 0.5))]
    (table,) = faithfulness_tables({"rows": rows})
    marks = table.marks()
    assert (marks[(1, "deletion_auc")], marks[(2, "deletion_auc")]) == ("best", "second")  # lower is better
    assert (marks[(0, "insertion_auc")], marks[(2, "insertion_auc")]) == ("best", "second")
    assert not any(k == "deletion_auc_random" for _, k in marks)  # a control: not ranked


def test_report_states_protocol_and_tie_rule() -> None:
    from xbench_core.report.html import protocol_html

    results = {"config": {"grounding": {"protocol": {"name": "chexlocalize", "threshold": 0.4}, "pointing": "first"}},
               "analysis": {"pointing_game": {"tie_rule": "first"}},
               "rows": [{"dataset": "d", "model": "m", "explainer": "e", "finding": "cardiomegaly",
                         "chexlocalize_iou": 0.25, "chexlocalize_hit": 1.0}]}
    html = protocol_html(results)
    assert "<b>chexlocalize</b> (threshold: 0.4)" in html and "tie rule: <b>first</b>" in html
    assert "chexlocalize_iou" in html and "0.250" in html
    assert "<b>xbench</b>" in protocol_html({"rows": []})
