"""Reports: tables (CSV, Markdown, LaTeX), figures (PNG, SVG), an overlay gallery and one HTML page.

    write_report(["runs/a", "runs/b"], out="report/")

writes into `out` (default: the first run's directory):

    tables/<table>.csv|.md|.tex      grounding, Pointing Game per finding, recognition, strata,
                                     threshold modes (per dataset) and a grounding overview;
                                     the paper's Table 1 and Tables 2-5 (paper_table*)
    figures/<figure>.png|.svg        recognition vs grounding, Dice fixed vs best, per-finding
                                     Pointing Game, strata, Dice curves; figures/gallery/...
    report.html                      everything above on one page, with the runs' manifests
    merged-results.json              (several runs only) the merged, re-aggregated results

Matplotlib is needed (the `report` extra); without it `write_report` raises ReportUnavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import XBenchError

__all__ = ["ReportUnavailable", "write_report"]


class ReportUnavailable(XBenchError):
    """The report needs matplotlib: pip install 'xbench-cxr[report]'."""


def write_report(
    runs: list[str | Path] | str | Path,
    out: str | Path | None = None,
    *,
    registry: Any = None,
    gallery: bool = True,
    quiet: bool = True,
) -> Path:
    """Write the report of one or more runs; returns the path of report.html."""
    try:  # figures are drawn on matplotlib.figure.Figure (Agg), never through pyplot
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportUnavailable("the report needs matplotlib: pip install 'xbench-cxr[report]'") from exc
    from ..store import RunStore
    from .figures import all_figures
    from .gallery import gallery as make_gallery
    from .html import render
    from .sources import load_sources, merge_sources
    from .tables import build_tables, to_csv, to_latex, to_markdown

    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    run_list = [runs] if isinstance(runs, (str, Path)) else list(runs)
    sources = load_sources(run_list, registry)
    merged = merge_sources(sources, registry)
    folder = Path(out) if out is not None else Path(run_list[0])
    folder.mkdir(parents=True, exist_ok=True)
    if len(sources) > 1:
        RunStore(folder).write_json(folder / "merged-results.json", merged.results)

    from .marks import metric_directions
    from .paper import paper_figures, paper_tables

    tables = build_tables(merged.results) + paper_tables(merged.results)
    directions = metric_directions(registry)
    for t in tables:  # best and second marks follow each metric's higher_is_better (a table's own win)
        t.directions = {**directions, **t.directions}
    table_dir = folder / "tables"
    table_dir.mkdir(exist_ok=True)
    table_files: dict[str, dict[str, str]] = {}
    for t in tables:
        files = {}
        for ext, render_table in (("csv", to_csv), ("md", to_markdown), ("tex", to_latex)):
            path = table_dir / f"{t.name}.{ext}"
            path.write_text(render_table(t), encoding="utf-8")
            files[ext.upper() if ext != "tex" else "LaTeX"] = path.relative_to(folder).as_posix()
        table_files[t.name] = files

    figures = all_figures(merged.results, folder / "figures", folder) + paper_figures(
        merged.results, folder / "figures", folder)
    notes: list[str] = []
    shown: list[Any] = []
    if gallery:
        shown, notes = make_gallery(merged, folder / "figures" / "gallery", folder, registry)
    page = render(merged.results, tables, table_files, figures, shown,
                  [(str(s.path), s.manifest) for s in sources], notes)
    target = folder / "report.html"
    target.write_text(page, encoding="utf-8")
    if not quiet:
        for note in [*merged.notes, *notes]:
            print(f"note: {note}")
        print(f"report: {target} ({len(tables)} tables, {len(figures) + len(shown)} figures)")
    return target
