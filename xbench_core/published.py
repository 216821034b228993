"""The plugin distributions this project publishes, with the components each registers: what
`xbench install NAME` resolves NAME against. A name is installed only when it resolves to one of
these (a distribution, its short name, a component's name or the start of one): XBench never
suggests installing a name that someone else may hold on the public package index.
tests/test_published.py keeps this list in step with plugins/.
"""

from __future__ import annotations

import difflib

from .errors import ConfigError

PREFIX = "xbench-plugin-"
PUBLISHED: dict[str, tuple[str, ...]] = {
    "xbench-plugin-biomedclip": ("biomedclip",),
    "xbench-plugin-biovil": ("biovil",),
    "xbench-plugin-carzero": ("carzero",),
    "xbench-plugin-chestx-det10": ("chestx-det10",),
    "xbench-plugin-chestx-ray14-bbox": ("chestx-ray14-bbox",),
    "xbench-plugin-chexlocalize": ("chexlocalize",),
    "xbench-plugin-clip": ("clip",),
    "xbench-plugin-covid-rural": ("covid-rural",),
    "xbench-plugin-devide": ("devide",),
    "xbench-plugin-explainers": ("gradcam", "gradcampp", "rise"),
    "xbench-plugin-gradcam": (
        "ablationcam", "eigencam", "eigengradcam", "finercam", "fullgrad", "gradcam_elementwise",
        "hirescam", "kpcacam", "layercam", "scorecam", "xgradcam",
    ),
    "xbench-plugin-kad": ("kad",),
    "xbench-plugin-lvlm": ("lvlm", "lvlm-attention-mean", "lvlm-gradient-attention", "lvlm-rollout"),
    "xbench-plugin-mavl": ("mavl",),
    "xbench-plugin-medklip": ("medklip",),
    "xbench-plugin-ms-cxr": ("ms-cxr",),
    "xbench-plugin-rsna-pneumonia": ("rsna-pneumonia",),
    "xbench-plugin-siim-pneumothorax": ("siim-pneumothorax",),
    "xbench-plugin-vindr-cxr": ("vindr-cxr",),
}


def _names() -> dict[str, str]:
    """Every name that resolves, to its distribution: full, short and component names. A component
    name wins over another distribution's short name (`gradcam` is the explainer of
    xbench-plugin-explainers, not the short name of xbench-plugin-gradcam)."""
    out: dict[str, str] = {}
    for dist in PUBLISHED:
        out[dist] = out[dist.removeprefix(PREFIX)] = dist
    for dist, components in PUBLISHED.items():
        for c in components:
            out[c] = dist
    return out


def short_name(dist: str) -> str:
    """The shortest name of a published distribution that `xbench install` resolves back to it."""
    short = dist.removeprefix(PREFIX)
    return short if published_distribution(short) == dist else dist


def published_distribution(name: str) -> str | None:
    """The published distribution that provides `name` (exactly, or as the only one whose name
    starts with it: `rsna` is rsna-pneumonia's), else None."""
    key = name.strip().lower().replace("_", "-")
    names = _names()
    if key in names:
        return names[key]
    starting = {d for n, d in names.items() if n.startswith(key)} if len(key) >= 3 else set()
    return starting.pop() if len(starting) == 1 else None


def install_name(name: str) -> str:
    """What to pip-install for `xbench install NAME`: a published distribution, or a local path as
    given; anything else is a ConfigError listing what is published."""
    if name.startswith((".", "/", "~")) or "/" in name or name.endswith((".whl", ".tar.gz", ".zip")):
        return name  # a local checkout or file: the user's own choice
    dist = published_distribution(name)
    if dist is not None:
        return dist
    close = difflib.get_close_matches(name, list(_names()), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{name!r} is not an XBench plugin this project publishes.{hint} Published: "
        + ", ".join(d.removeprefix(PREFIX) for d in PUBLISHED)
        + " (a plugin of your own installs with pip install PATH_OR_NAME)"
    )
