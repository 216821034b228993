"""`report.html`: one page that opens from disk with no server.

Styles and script are inline; figures are referenced relatively (`figures/...png`, next to the
page), so the folder can be zipped or copied as a whole. A sidebar links every dataset, finding
and model; checkboxes hide models' rows in every table.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from ..schema import MEAN
from .figures import FigureFile
from .paper import PAPER_SECTION
from .tables import (
    Table,
    column_groups,
    dataset_keys,
    dataset_label,
    dataset_slug,
    finding_label,
    fmt,
    tau_symbol,
)

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
nav{position:fixed;top:0;left:0;bottom:0;width:230px;overflow:auto;background:#fff;border-right:1px solid #ddd;padding:12px;box-sizing:border-box;font-size:13px}
nav ul{list-style:none;padding-left:10px;margin:2px 0}nav a{color:#1a4f8b;text-decoration:none}nav a:hover{text-decoration:underline}
main{margin-left:230px;padding:16px 28px;max-width:1500px}
h1{margin-top:0}h2{border-bottom:2px solid #1a4f8b;padding-bottom:3px;margin-top:36px}h3{margin-top:24px}
table.results{border-collapse:collapse;margin:8px 0 4px;background:#fff;font-size:13px}
table.results th,table.results td{padding:3px 9px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
table.results th:first-child,table.results td:first-child{text-align:left}
table.results thead th{border-bottom:1.5px solid #333}table.results tr.group th{border-bottom:1px solid #999;text-align:center}
td.best .v{font-weight:700}td.second .v{text-decoration:underline}td .ci{display:block;color:#777;font-size:10.5px}
tr.hidden-model{display:none}.caption{color:#444;max-width:1100px}.note{color:#555;font-size:12px}
.files a{margin-right:8px;font-size:12px}
figure{margin:14px 0;background:#fff;border:1px solid #e3e3e3;padding:8px;display:inline-block;max-width:100%;box-sizing:border-box}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12.5px;color:#444;max-width:1000px}
.warning{background:#fff4e5;border-left:4px solid #e08600;padding:8px 12px;margin:8px 0}
.info{background:#eef5fc;border-left:4px solid #1a4f8b;padding:8px 12px;margin:8px 0}
pre{background:#f3f3f3;padding:8px;overflow:auto;font-size:12px;max-height:480px}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dl.kv dt{font-weight:600}dl.kv dd{margin:0}
"""

SCRIPT = """
(function(){
  function apply(){
    var off = {};
    document.querySelectorAll('input.model-filter').forEach(function(box){ if(!box.checked){ off[box.value] = true; } });
    document.querySelectorAll('tr[data-model]').forEach(function(tr){
      tr.classList.toggle('hidden-model', !!off[tr.getAttribute('data-model')]);
    });
  }
  document.querySelectorAll('input.model-filter').forEach(function(box){ box.addEventListener('change', apply); });
  var failed = [];
  function check(){
    failed = [];
    document.querySelectorAll('img').forEach(function(img){ if(img.complete && img.naturalWidth === 0){ failed.push(img.getAttribute('src')); } });
    document.body.setAttribute('data-images-failed', String(failed.length));
    var box = document.getElementById('image-errors');
    if(box){ box.hidden = failed.length === 0; box.textContent = failed.length ? 'Images that did not load: ' + failed.join(', ') : ''; }
  }
  window.addEventListener('load', check);
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)



def anchor(*parts: str) -> str:
    return "-".join("".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in p) for p in parts)


def table_html(t: Table, files: dict[str, str]) -> str:
    marks = t.marks()
    out = [f'<div class="table" id="{_e(anchor("table", t.name))}"><h4>{_e(t.title)}</h4>',
           f'<p class="caption">{_e(tau_symbol(t.caption))}</p>', '<table class="results"><thead>']
    groups = column_groups(t.columns)
    if any(g for g, _ in groups):
        out.append('<tr class="group"><th></th>' + "".join(f'<th colspan="{n}">{_e(g)}</th>' for g, n in groups) + "</tr>")
    out.append("<tr><th>Model</th>" + "".join(f"<th>{_e(tau_symbol(c.label))}</th>" for c in t.columns) + "</tr></thead><tbody>")
    for i, ln in enumerate(t.lines):
        cells = [f"<td>{_e(ln.label)}</td>"]
        for c in t.columns:
            v = ln.values[c.key]
            ci = ln.cis.get(c.key)
            mark = marks.get((i, c.key))
            cls = f' class="{mark}"' if mark else ""
            ci_text = f'<span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci and v is not None else ""
            cells.append(f'<td{cls}><span class="v">{_e(fmt(v, c.digits))}</span>{ci_text}</td>')
        out.append(f'<tr data-model="{_e(ln.model)}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    for n in t.notes:
        out.append(f'<p class="note">{_e(n)}</p>')
    out.append('<p class="files">' + " ".join(f'<a href="{_e(p)}">{_e(k)}</a>' for k, p in files.items()) + "</p></div>")
    return "\n".join(out)


def figure_html(f: FigureFile, anchor_id: str | None = None) -> str:
    ident = f' id="{_e(anchor_id)}"' if anchor_id else ""
    return (f'<figure{ident}><img src="{_e(f.png)}" alt="{_e(f.title)}" width="{f.size[0]}" height="{f.size[1]}">'
            f'<figcaption><b>{_e(f.title)}.</b> {_e(tau_symbol(f.caption))}'
            + (f' <a href="{_e(f.svg)}">SVG</a>' if f.svg else "") + "</figcaption></figure>")


def render(
    results: dict[str, Any],
    tables: Sequence[Table],
    table_files: dict[str, dict[str, str]],
    figures: Sequence[FigureFile],
    gallery: Sequence[FigureFile],
    manifests: Sequence[tuple[str, dict[str, Any]]],
    notes: Sequence[str],
) -> str:
    rows = results.get("rows", [])
    keys = dataset_keys(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    flagged = results.get("random_weights", [])
    body: list[str] = []
    nav: list[str] = ['<b>XBench report</b><ul>', '<li><a href="#overview">Overview</a></li>', '<li><a href="#models">Models</a><ul>']
    nav += [f'<li><a href="#{_e(anchor("model", m))}">{_e(m)}</a></li>' for m in models]
    nav.append('</ul></li><li>Datasets<ul>')
    for k in keys:
        slug = dataset_slug(k, keys)
        nav.append(f'<li><a href="#{_e(anchor("dataset", slug))}">{_e(dataset_label(k, keys))}</a><ul>')
        for f in dict.fromkeys(r["finding"] for r in rows if (r["dataset"], r.get("split")) == k and r["finding"] != MEAN):
            nav.append(f'<li><a href="#{_e(anchor("dataset", slug, "finding", f))}">{_e(finding_label(f))}</a></li>')
        nav.append("</ul></li>")
    nav.append('</ul></li><li><a href="#manifest">Run manifest</a></li><li><a href="#methods">Methods</a></li></ul>')
    nav.append('<p><b>Show models</b><br>' + "".join(
        f'<label><input type="checkbox" class="model-filter" value="{_e(m)}" checked> {_e(m)}</label><br>' for m in models) + "</p>")

    # ---- header and warnings
    runs = results.get("runs") or [results.get("run")]
    body.append("<h1>XBench report</h1>")
    body.append(f'<p>Run(s): {", ".join(_e(r) for r in runs if r)} · results created {_e(results.get("created", ""))} · '
                f'xbench {_e(results.get("xbench") or "")}</p>')
    body.append(protocol_html(results))
    body.append('<div id="image-errors" class="warning" hidden></div>')
    if flagged:
        body.append(f'<div class="warning"><b>Random weights</b> (a smoke test, not a real result): {_e(", ".join(flagged))}</div>')
    for m, note in (results.get("model_notes") or {}).items():
        body.append(f'<div class="info">Note on {_e(m)}: {_e(note)}</div>')
    for s in results.get("skipped_explainers") or []:
        body.append(f'<div class="info">Skipped explainer {_e(s.get("explainer"))} for {_e(s.get("model"))}: {_e(s.get("reason"))}</div>')
    for n in [*((results.get("merged_from") or {}).get("replaced") or []), *notes, *((results.get("analysis") or {}).get("warnings") or [])]:
        body.append(f'<div class="info">{_e(n)}</div>')
    if results.get("errors"):
        body.append(f'<div class="warning">{len(results["errors"])} per-sample errors (see <a href="#manifest">below</a>).</div>')
    for dataset, p in (results.get("problems") or {}).items():
        kinds = ", ".join(f"{n} {k}" for k, n in p.get("by_kind", {}).items())
        body.append(f'<div class="warning"><b>{p["count"]} label problems in {_e(dataset)}</b> ({_e(kinds)}); '
                    f'all in <code>{_e(p.get("file"))}</code> of the run folder<pre>'
                    + _e("\n".join(p.get("first", []))) + "</pre></div>")
    constant = [r for r in rows if r["finding"] != MEAN and r.get("n_constant_maps")]
    if constant:
        body.append('<div class="warning"><b>Constant maps</b> (scored as uniform): ' + "; ".join(
            _e(f'{r["model"]}/{r["explainer"]} on {r["dataset"]} {r["finding"]}: {r["n_constant_maps"]} of {r.get("n_regions", 0)}')
            for r in constant) + "</div>")

    # ---- overview
    body.append('<section id="overview"><h2>Overview</h2>')
    for f in results.get("recognition_vs_grounding", {}).get("fits", []):
        over = f'Recognition vs grounding ({_e(f["explainer"])}, over {"models" if f["level"] == "model" else "(model, dataset) pairs"})'
        if f.get("slope") is None:
            body.append(f'<p>{over}: no fit (n = {f["n"]}){": " + _e(f["undefined"]) if f.get("undefined") else ""}</p>')
            continue
        r2 = "undefined" if f.get("r2") is None else f"{f['r2']:.3f}"
        ci = f.get("slope_ci")
        interval = f" (95% interval of the slope [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""
        body.append(f'<p>{over}: AUROC = {f["slope"]:.3f} × PG + {f["intercept"]:.3f}{interval}, '
                    f'R² = {r2} (n = {f["n"]}){" — " + _e(f["undefined"]) if f.get("undefined") else ""}</p>')
    for t in tables:
        if t.section is None:
            body.append(table_html(t, table_files[t.name]))
    for f in figures:
        if f.section is None:
            body.append(figure_html(f))
    body.append("</section>")
    paper = [table_html(t, table_files[t.name]) for t in tables if t.section == PAPER_SECTION]
    paper += [figure_html(f) for f in figures if f.section == PAPER_SECTION]
    if paper:
        body.append('<section id="paper"><h2>The paper\'s tables and figures</h2>' + "".join(paper) + "</section>")
        nav.insert(2, '<li><a href="#paper">Paper layout</a></li>')

    # ---- models
    body.append('<section id="models"><h2>Models</h2>')
    for m in models:
        mine = [r for r in rows if r["model"] == m and r["finding"] == MEAN]
        body.append(f'<h3 id="{_e(anchor("model", m))}">{_e(m)}{" (random weights)" if m in flagged else ""}</h3>')
        body.append('<table class="results"><thead><tr><th>Dataset</th><th>Explainer</th><th>PG</th><th>Dice@fixed</th>'
                    '<th>Dice*</th><th>IoU@fixed</th><th>AUROC</th><th>F1</th><th>n regions</th></tr></thead><tbody>')
        for r in mine:
            k = (r["dataset"], r.get("split"))
            cells = "".join(f"<td>{_e(fmt(r.get(f)))}</td>" for f in ("pointing_game", "dice_fixed", "dice_best", "iou_fixed", "auroc", "f1"))
            body.append(f'<tr data-model="{_e(m)}"><td><a href="#{_e(anchor("dataset", dataset_slug(k, keys)))}">'
                        f'{_e(dataset_label(k, keys))}</a></td><td>{_e(r["explainer"])}</td>{cells}<td>{r.get("n_regions", 0)}</td></tr>')
        body.append("</tbody></table>")
    body.append("</section>")

    # ---- datasets
    for k in keys:
        slug = dataset_slug(k, keys)
        body.append(f'<section id="{_e(anchor("dataset", slug))}"><h2>{_e(dataset_label(k, keys))}</h2>')
        for t in tables:
            if t.section == k:
                body.append(table_html(t, table_files[t.name]))
        for f in figures:
            if f.section == k:
                body.append(figure_html(f))
        findings = list(dict.fromkeys(r["finding"] for r in rows if (r["dataset"], r.get("split")) == k and r["finding"] != MEAN))
        body.append("<h3>Findings</h3>")
        for fnd in findings:
            body.append(f'<h4 id="{_e(anchor("dataset", slug, "finding", fnd))}">{_e(finding_label(fnd))}</h4>')
            body.append(_finding_summary([r for r in rows if (r["dataset"], r.get("split")) == k and r["finding"] == fnd]))
            for g in gallery:
                if g.section == k and g.finding == fnd:
                    body.append(figure_html(g))
        body.append("</section>")

    # ---- manifest and methods
    body.append('<section id="manifest"><h2>Run manifest</h2>')
    for path, man in manifests:
        body.append(f"<h3>{_e(path)}</h3><dl class=\"kv\">")
        versions = man.get("versions") or {}
        for label, value in (("xbench", man.get("xbench")), ("git", man.get("git")), ("device", man.get("device")),
                             ("started", man.get("started")), ("finished", man.get("finished")),
                             ("python", versions.get("python")), ("torch", versions.get("torch")),
                             ("numpy", versions.get("numpy")), ("command", " ".join(man.get("command") or []))):
            body.append(f"<dt>{_e(label)}</dt><dd>{_e(value if value is not None else '-')}</dd>")
        for name, ver in (versions.get("plugins") or {}).items():
            body.append(f"<dt>plugin {_e(name)}</dt><dd>{_e(ver)}</dd>")
        for name, ver in (versions.get("libraries") or {}).items():
            body.append(f"<dt>library {_e(name)}</dt><dd>{_e(ver)}</dd>")
        for name, info in (man.get("models") or {}).items():
            if info.get("random_weights"):
                body.append(f"<dt>{_e(name)}</dt><dd><b>random weights</b></dd>")
        body.append("</dl><details><summary>config</summary><pre>" + _e(json.dumps(man.get("config"), indent=2)) + "</pre></details>")
    errors = results.get("errors") or []
    if errors:
        body.append(f"<details><summary>{len(errors)} per-sample errors</summary><pre>" + _e("\n".join(
            f"{e.get('dataset')}/{e.get('model')}/{e.get('explainer')} {e.get('id')} {e.get('finding') or ''}: {e.get('error')}"
            for e in errors[:500])) + "</pre></details>")
    body.append("</section>")
    body.append('<section id="methods"><h2>Methods</h2><pre>' + _e(json.dumps(results.get("analysis", {}), indent=2)) + "</pre></section>")

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>XBench report</title>"
            f"<style>{STYLE}</style></head><body><nav>{''.join(nav)}</nav><main>{''.join(body)}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")


def _finding_summary(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = ['<table class="results"><thead><tr><th>Model</th><th>n</th><th>n+</th><th>regions</th><th>PG</th><th>Dice@fixed</th>'
           '<th>Dice*</th><th>tau*</th><th>Dice CV</th><th>AUROC</th><th>constant maps</th></tr></thead><tbody>']
    for r in rows:
        def cell(k: str, r: dict[str, Any] = r) -> str:
            v, ci = r.get(k), r.get(f"{k}_ci")
            extra = f'<span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci and v is not None else ""
            return f"<td>{_e(fmt(v, 2 if k == 'best_threshold' else 3))}{extra}</td>"

        label = r["model"] + (f" / {r['explainer']}" if len({x['explainer'] for x in rows}) > 1 else "")
        out.append(f'<tr data-model="{_e(r["model"])}"><td>{_e(label)}</td><td>{r.get("n_images", 0)}</td><td>{r.get("n_positive", 0)}</td>'
                   f'<td>{r.get("n_regions", 0)}</td>' + "".join(cell(k) for k in ("pointing_game", "dice_fixed", "dice_best", "best_threshold", "dice_crossval", "auroc"))
                   + f'<td>{r.get("n_constant_maps", 0)}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def protocol_html(results: dict[str, Any]) -> str:
    """The run's grounding protocol and pointing-game tie rule, and the protocol's fields per row."""
    from ..metrics.extra import PROTOCOL_FIELDS

    grounding = (results.get("config") or {}).get("grounding") or {}
    proto = grounding.get("protocol") or "xbench"
    name = proto if isinstance(proto, str) else str(proto.get("name", "xbench"))
    options = {} if isinstance(proto, str) else {k: v for k, v in proto.items() if k != "name"}
    tie = ((results.get("analysis") or {}).get("pointing_game") or {}).get("tie_rule") or grounding.get("pointing") or "share"
    shown = ", ".join(f"{k}: {v}" for k, v in options.items())
    out = [f'<p>Grounding protocol: <b>{_e(name)}</b>{" (" + _e(shown) + ")" if shown else ""} · '
           f'pointing game tie rule: <b>{_e(tie)}</b> (see README, "Comparing with published numbers")</p>']
    fields = PROTOCOL_FIELDS.get(name, ())
    rows = [r for r in results.get("rows", []) if any(r.get(f) is not None for f in fields)]
    if rows:
        out.append('<table class="results"><thead><tr><th>Dataset</th><th>Model</th><th>Explainer</th><th>Finding</th>'
                   + "".join(f"<th>{_e(f)}</th>" for f in fields) + "</tr></thead><tbody>")
        for r in rows:
            cells = "".join(f"<td>{_e(fmt(r.get(f)))}</td>" for f in fields)
            out.append(f'<tr data-model="{_e(r["model"])}"><td>{_e(r["dataset"])}</td><td>{_e(r["model"])}</td>'
                       f'<td>{_e(r["explainer"])}</td><td>{_e(r["finding"])}</td>{cells}</tr>')
        out.append("</tbody></table>")
    return "".join(out)
