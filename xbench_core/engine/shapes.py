"""Checks a model's and an explainer's output against the batch it was given, before anything is
scored: a map with one extra finding channel would otherwise be scored on the wrong channel, and a
score vector of the wrong rank would end the whole run. A mismatch is a message naming the
component, the expected and the actual shape; the runner turns it into error records for that
model and batch only."""

from __future__ import annotations

from collections.abc import Sequence


def _shape(x: object) -> tuple[int, ...] | None:
    shape = getattr(x, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def scores_problem(model: str, scores: object, images: int, findings: Sequence[str]) -> str | None:
    """None when `scores` is [B, F] for B images and F findings; else what is wrong."""
    expected = (images, len(findings))
    actual = _shape(scores)
    if actual == expected:
        return None
    return (
        f"model {model} returned scores of shape {_text(actual)}, expected "
        f"[{images} images, {len(findings)} findings] = {list(expected)}"
    )


def maps_problem(
    component: str, maps: object, images: int, findings: Sequence[str]
) -> str | None:
    """None when `maps` is [B, F, gh, gw] (a 2-D grid of at least 1x1); else what is wrong."""
    actual = _shape(maps)
    if actual is not None and len(actual) == 4 and actual[:2] == (images, len(findings)) and min(actual[2:]) >= 1:
        return None
    return (
        f"{component} returned maps of shape {_text(actual)}, expected "
        f"[{images} images, {len(findings)} findings, grid height, grid width] = "
        f"[{images}, {len(findings)}, gh, gw]"
    )


def _text(shape: tuple[int, ...] | None) -> str:
    return "(no shape)" if shape is None else str(list(shape))
