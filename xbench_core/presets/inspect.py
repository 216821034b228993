"""`xbench inspect --preset NAME`: every dataset of a preset counted, and the total number of cases
beside the one its paper states."""

from __future__ import annotations

from typing import Any

from ..errors import XBenchError
from ..inspect import format_inspection, inspect_dataset
from . import _entries, get, is_pinned, load_config, pin, resolve_pinned

CASE_RULES = {
    "images": "every image of the split",
    "images_with_region": "the images with at least one annotated region",
}


def _options(item: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**item, **sets}.items() if k != "name"}


def inspect_preset(
    preset: str | None,
    config: str | None,
    set_args: list[str],
    registry: Any,
    *,
    skip_images: bool = False,
    progress: bool = False,
    only: str | None = None,
) -> dict[str, Any]:
    """Per dataset its inspection (or why it could not be counted), its cases under the preset's
    rule, the total, and the paper's stated total with the difference."""
    from ..engine.config import parse_set

    meta = get(preset).meta if preset else {}
    rules = meta.get("cases") or {}
    sets = parse_set(set_args)
    datasets: dict[str, Any] = {}
    cases: dict[str, int] = {}
    uncounted: dict[str, str] = {}
    for item in _entries(load_config(config, preset).get("datasets")):
        name = item["name"]
        if only and name != only:
            continue
        rule = rules.get(name, "images")
        try:
            spec = registry.get("datasets", name)
            given = sets.get(name, {})
            if "root" not in given and "root" not in item:
                raise XBenchError(f"no root given (--set {name}.root=DIR)")
            options = spec.resolve_options(_options(resolve_pinned(item, set(given)), given))
            report = inspect_dataset(spec.build(**options), skip_images=skip_images, progress=progress)
        except XBenchError as exc:
            uncounted[name] = str(exc)
            datasets[name] = {"error": str(exc), **_listed(item, sets.get(name, {}))}
            continue
        report["cases"] = report[rule]
        report["case_rule"] = rule
        datasets[name] = report
        cases[name] = report[rule]
    total = sum(cases.values())
    paper = meta.get("paper_cases")
    out: dict[str, Any] = {
        "preset": preset,
        "datasets": datasets,
        "cases": total,
        "cases_per_dataset": cases,
        "case_rules": {n: rules.get(n, "images") for n in datasets},
        "not_counted": uncounted,
    }
    if paper is not None:
        out["paper_cases"] = paper
        out["difference"] = total - paper
        out["explanation"] = _explain(cases, uncounted, rules, total, paper)
    return out


def _explain(cases: dict[str, int], uncounted: dict[str, str], rules: dict[str, str], total: int, paper: int) -> str:
    counted = ", ".join(f"{n} {c:,} ({CASE_RULES[rules.get(n, 'images')]})" for n, c in cases.items())
    text = f"cases counted: {counted or 'none'}; total {total:,} against the paper's {paper:,} ({total - paper:+,})."
    if uncounted:
        text += (
            f" Not counted: {', '.join(uncounted)} (see why above); the paper's total leaves "
            f"{paper - total:,} cases for them."
        )
    return text + " The choices behind each count are in the README's protocol section."


def _listed(item: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """How many images a dataset's split file lists, when it can be read without the dataset."""
    from ..io.files import read_id_list

    try:
        value = given.get("split_file", item.get("split_file"))
        if value is None:
            return {}
        path = pin(item["name"], "split_file", value) if is_pinned(value) else value
        return {"split_file_lists": len(read_id_list(path))}
    except XBenchError:
        return {}


def format_preset_inspection(report: dict[str, Any]) -> str:
    lines = []
    for name, item in report["datasets"].items():
        if "error" in item:
            listed = item.get("split_file_lists")
            also = f" (its split file lists {listed:,} images)" if listed is not None else ""
            lines.append(f"{name}: not counted: {item['error']}{also}")
        else:
            lines.append(format_inspection(item))
            lines.append(f"  cases: {item['cases']} ({CASE_RULES[item['case_rule']]})")
        lines.append("")
    lines.append(f"total cases: {report['cases']:,}")
    if "paper_cases" in report:
        lines.append(f"paper: {report['paper_cases']:,} (difference {report['difference']:+,})")
        lines.append(report["explanation"])
    return "\n".join(lines)
