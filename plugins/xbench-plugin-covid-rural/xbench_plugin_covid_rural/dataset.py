"""COVID-19 rural opacity annotations (Tang, Sun and Li 2020) on TCIA COVID-19-AR radiographs.

The annotations are LabelMe 4.5.6 JSON files, one per JPEG, released in GitHub
`haimingt/opacity_segmentation_covid_chest_X_ray` (folder `covid_rural_annot/`): polygons labelled
`right_lung`, `left_lung` (lung fields), `groud_glass_opacity` (sic) and `consolidation`. The
images are `jpgs/<stem>.jpg`; in that repository the JSON files sit in `jpgs/jsons/`, and a
`jsons/` folder beside `jpgs/` is accepted too.

Findings: `covid19` (the benchmark's single class) is the union of every opacity polygon (every
label that is not a lung field, as MedKLIP's COVID rural grounding test uses it); an image with
lung polygons only is a negative. With `findings: separate` the opacity types are their own
findings, `ground_glass_opacity` and `consolidation`; `all` gives the three. Polygons keep their
source form and are filled with Pillow as the core rasterizes polygons; `imageHeight` and
`imageWidth` of the JSON give the size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from xbench_core import DataError, Dataset, Problem, Region, Sample
from xbench_core.io.layout import select_listed

LAYOUT = """\
  covid_rural_annot/                          (from github.com/haimingt/opacity_segmentation_covid_chest_X_ray)
    jpgs/<stem>.jpg                           221 radiographs, e.g. COVID-19-AR-16406488_01-15-2012-XR.jpg
    jpgs/jsons/<stem>.json                    221 LabelMe files (a jsons/ folder beside jpgs/ works too)
  root may be covid_rural_annot/ or the repository folder that holds it."""

LUNG_LABELS = frozenset({"right_lung", "left_lung"})
# Spellings of the two opacity types (the released files write "groud_glass_opacity").
OPACITY_LABELS: dict[str, str] = {
    "groud_glass_opacity": "ground_glass_opacity",
    "ground_glass_opacity": "ground_glass_opacity",
    "ggo": "ground_glass_opacity",
    "consolidation": "consolidation",
}
FINDING_SETS: dict[str, tuple[str, ...]] = {
    "covid19": ("covid19",),
    "separate": ("ground_glass_opacity", "consolidation"),
    "all": ("covid19", "ground_glass_opacity", "consolidation"),
}
_STEM = re.compile(r"^(?P<patient>COVID-19-AR-\d+)_(?P<date>\d{2}-\d{2}-\d{4})")


def _label_key(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


class _Entry:
    """One annotated image: its size and polygons (or rectangles) by opacity type."""

    __slots__ = ("stem", "json_path", "size", "parts", "lungs", "labels_seen")

    def __init__(self, stem: str, json_path: Path) -> None:
        self.stem = stem
        self.json_path = json_path
        self.size: tuple[int, int] | None = None
        # opacity type (or the raw label of an unknown one) -> polygons / boxes
        self.parts: dict[str, list[np.ndarray]] = {}
        self.lungs = 0
        self.labels_seen: list[str] = []


class CovidRural(Dataset):
    """221 COVID-19-AR chest radiographs with manually drawn opacity polygons (evaluation only)."""

    def __init__(
        self,
        root: str,
        split: str = "test",
        split_file: str | None = None,
        findings: str = "covid19",
        image_dir: str | None = None,
    ) -> None:
        if findings not in FINDING_SETS:
            raise DataError(
                f"covid-rural.findings must be one of {', '.join(FINDING_SETS)}; got {findings!r}"
            )
        if split != "test":
            raise DataError(
                f"covid-rural has one split, 'test' (the 221 annotated images are an evaluation "
                f"set); got split={split!r}. Use split_file to select images."
            )
        self.name = "covid-rural"
        self.split = split
        self.mode = findings
        self.findings = FINDING_SETS[findings]
        self.problems: list[Problem] = []
        self.root = Path(root).expanduser()
        json_dir, default_images = self._layout(self.root)
        self.json_dir = json_dir
        self.image_dir = Path(image_dir).expanduser() if image_dir else default_images
        entries = {}
        for path in sorted(json_dir.glob("*.json")):
            entry = self._read(path)
            if entry is not None:
                entries[entry.stem] = entry
        if not entries:
            raise DataError(f"no LabelMe .json files in {json_dir}\nExpected layout:\n{LAYOUT}")
        ids = sorted(entries)
        if split_file:
            ids = select_listed(
                split_file,
                entries,
                self.problems,
                lambda stem: f"image id {stem!r} has no annotation in {json_dir}; left out",
            )
        self._entries = [entries[i] for i in ids]

    # ------------------------------------------------------------------ layout and parsing
    @staticmethod
    def _layout(root: Path) -> tuple[Path, Path]:
        if not root.is_dir():
            raise DataError(
                f"covid-rural root not found or not a folder: {root}\nExpected layout:\n{LAYOUT}"
            )
        for base in (root, root / "covid_rural_annot"):
            for json_dir, image_dir in (
                (base / "jpgs" / "jsons", base / "jpgs"),
                (base / "jsons", base / "jpgs"),
            ):
                if json_dir.is_dir():
                    return json_dir, image_dir
        raise DataError(
            f"no LabelMe annotation folder under {root} (looked for jpgs/jsons/ and jsons/, also "
            f"inside covid_rural_annot/)\nExpected layout:\n{LAYOUT}"
        )

    def _problem(self, path: Path, message: str, sample: str | None = None) -> None:
        self.problems.append(Problem(str(path), message, sample=sample))

    def _read(self, path: Path) -> _Entry | None:
        stem = path.stem
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            shapes = doc["shapes"]
            if not isinstance(shapes, list):
                raise TypeError("'shapes' is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._problem(
                path, f"not a readable LabelMe file ({type(exc).__name__}: {exc}); skipped", stem
            )
            return None
        entry = _Entry(stem, path)
        try:
            h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
            if h <= 0 or w <= 0:
                raise ValueError
            entry.size = (h, w)
        except (KeyError, TypeError, ValueError):
            self._problem(
                path,
                "imageHeight/imageWidth missing or invalid: the size is taken from the image "
                "when it is decoded",
                stem,
            )
        for k, shape in enumerate(shapes):
            label = str(shape.get("label", "")) if isinstance(shape, dict) else ""
            key = _label_key(label)
            where = f"shape {k} ({label!r})"
            if not isinstance(shape, dict) or not label:
                self._problem(path, f"shape {k} has no label; skipped", stem)
                continue
            entry.labels_seen.append(label)
            if key in LUNG_LABELS:
                entry.lungs += 1
                continue
            kind = shape.get("shape_type") or "polygon"
            try:
                points = np.asarray(shape.get("points"), dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                self._problem(path, f"{where}: points are not [[x, y], ...]; skipped", stem)
                continue
            if not np.isfinite(points).all():
                self._problem(path, f"{where}: non-finite coordinates; skipped", stem)
                continue
            if kind == "polygon" and len(points) >= 3:
                part = points
            elif kind == "rectangle" and len(points) == 2:
                (xa, ya), (xb, yb) = points
                part = np.array([[min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]])
            else:
                self._problem(
                    path,
                    f"{where}: a {kind} with {len(points)} point(s) is not an area (needs a "
                    "polygon of 3+ points or a rectangle); skipped",
                    stem,
                )
                continue
            target = OPACITY_LABELS.get(key)
            if target is None:
                # Not a lung field and not a known opacity type: still part of the covid19 union
                # (every non-lung label is opacity), but it has no finding of its own.
                self._problem(
                    path,
                    f"unknown label {label!r}: counted in covid19 (union of non-lung labels), "
                    "not in the separate findings",
                    stem,
                )
                target = "?" + label
            if entry.size is not None:
                self._check_bounds(path, stem, where, kind, part, entry.size)
            entry.parts.setdefault(target, []).append(
                part if kind == "polygon" else part.reshape(1, 4)
            )
        return entry

    def _check_bounds(
        self, path: Path, stem: str, where: str, kind: str, part: np.ndarray, size: tuple[int, int]
    ) -> None:
        h, w = size
        xs, ys = (
            (part[:, [0, 2]], part[:, [1, 3]]) if kind == "rectangle" else (part[:, 0], part[:, 1])
        )
        if xs.min() < 0 or ys.min() < 0 or xs.max() > w or ys.max() > h:
            self._problem(
                path,
                f"{where} extends beyond the {w}x{h} image (x {xs.min():.1f}..{xs.max():.1f}, "
                f"y {ys.min():.1f}..{ys.max():.1f}); the part outside is clipped",
                stem,
            )

    # ------------------------------------------------------------------ samples
    def __len__(self) -> int:
        return len(self._entries)

    def _region(self, parts: list[np.ndarray], size: tuple[int, int]) -> Region:
        polygons = tuple(p for p in parts if p.shape[1] == 2)
        boxes = [p for p in parts if p.shape[1] == 4]
        arr = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        if len(arr):  # rectangles: clipped like boxes; polygons are clipped by the fill itself
            h, w = size
            arr = arr.copy()
            arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0, w)
            arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0, h)
        return Region(size, boxes=arr, polygons=polygons)

    def _sample(self, entry: _Entry, size: tuple[int, int] | None) -> Sample:
        by_type = entry.parts
        groups: dict[str, list[np.ndarray]] = {
            "covid19": [p for parts in by_type.values() for p in parts],
            "ground_glass_opacity": by_type.get("ground_glass_opacity", []),
            "consolidation": by_type.get("consolidation", []),
        }
        labels = {f: int(bool(groups[f])) for f in self.findings}
        regions = {f: self._region(groups[f], size or (0, 0)) for f in self.findings if groups[f]}
        match = _STEM.match(entry.stem)
        meta: dict[str, Any] = {
            "path": str(self.image_dir / f"{entry.stem}.jpg"),
            "size": size,
            "annotation": str(entry.json_path),
            "patient_id": match["patient"] if match else None,
            "study_date": match["date"] if match else None,  # TCIA's shifted date, MM-DD-YYYY
            "lung_polygons": entry.lungs,
            "source_labels": sorted(set(entry.labels_seen)),
        }
        return Sample(self.name, entry.stem, None, labels=labels, regions=regions, meta=meta)

    def annotation(self, index: int) -> Sample:
        entry = self._entries[index]
        return self._sample(entry, entry.size)

    def fit_regions(self, sample: Sample) -> Sample:
        """If the JSON had no usable size or a different one than the image, rebuild the regions
        at the image's size (polygons are in pixel units)."""
        assert sample.image is not None  # called on a decoded sample (Dataset.__getitem__)
        size = (int(sample.image.shape[0]), int(sample.image.shape[1]))
        if sample.meta.get("size") != size:
            entry = next(e for e in self._entries if e.stem == sample.id)
            if sample.meta.get("size") is not None:
                self._problem(
                    Path(sample.meta["path"]),
                    f"image is {size[1]}x{size[0]} but its LabelMe file "
                    f"says {sample.meta['size'][1]}x{sample.meta['size'][0]}; polygons kept in "
                    "pixel units, region sized to the image",
                    sample.id,
                )
            fresh = self._sample(entry, size)
            sample.regions, sample.meta["size"] = fresh.regions, size
        return sample
