"""`xbench inspect`: what a dataset holds and what is wrong with it, without running a model."""

from __future__ import annotations

from typing import Any

from .dataset import Dataset, Problem
from .errors import DataError
from .io.layout import image_fit_problem


def inspect_dataset(dataset: Dataset, *, skip_images: bool = False, progress: bool = False) -> dict[str, Any]:
    """Per finding the positive images, the images with regions and the region instances; the number
    of images and of images with at least one region; and every problem (parse problems, and with images, missing or undecodable files).

    With `skip_images` no image file is opened at all.
    """
    findings: dict[str, dict[str, int]] = {
        f: {"positive": 0, "with_region": 0, "instances": 0} for f in dataset.findings
    }
    image_problems: list[Problem] = []
    with_region = 0
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"inspect {dataset.name}", unit="img")
    for i in indices:
        sample = dataset.annotation(i)
        for finding, label in sample.labels.items():
            row = findings.setdefault(finding, {"positive": 0, "with_region": 0, "instances": 0})
            row["positive"] += int(label == 1)
        with_region += bool(sample.regions)
        for finding, region in sample.regions.items():
            row = findings.setdefault(finding, {"positive": 0, "with_region": 0, "instances": 0})
            row["with_region"] += 1
            row["instances"] += region.instances
        if not skip_images:
            try:
                sample = dataset[i]  # the entry point a run uses
                if unfit := image_fit_problem(sample):
                    raise DataError(unfit)
            except Exception as exc:  # every unreadable image is a problem to report, not a crash
                image_problems.append(Problem(str(sample.meta.get("path", "?")), str(exc), sample=sample.id))
    # read after the loop: datasets may find problems lazily while annotating (e.g. header reads)
    problems = list(getattr(dataset, "problems", [])) + image_problems
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "images": len(dataset),
        "images_with_region": with_region,
        "findings": findings,
        "problems": [p.as_dict() for p in problems],
    }


def format_inspection(report: dict[str, Any]) -> str:
    """The human-readable form of `inspect_dataset`'s report."""
    lines = [
        f"{report['dataset']} ({report['split']}): {report['images']} images, "
        f"{report['images_with_region']} with a region"
    ]
    width = max([len(f) for f in report["findings"]] + [7])
    lines.append(f"  {'finding':<{width}}  positive  with_region  instances")
    for f, row in report["findings"].items():
        lines.append(
            f"  {f:<{width}}  {row['positive']:>8}  {row['with_region']:>11}  {row['instances']:>9}"
        )
    probs = report["problems"]
    lines.append(f"  problems: {len(probs)}")
    for p in probs[:50]:
        where = p["file"] + (f":{p['line']}" if p.get("line") is not None else "")
        lines.append(f"    {where}: {p['message']}")
    if len(probs) > 50:
        lines.append(f"    ... and {len(probs) - 50} more (use --json for all)")
    return "\n".join(lines)
