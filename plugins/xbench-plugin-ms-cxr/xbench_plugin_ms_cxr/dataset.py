"""MS-CXR (`MS_CXR_Local_Alignment_v1.x.0.csv` / `.json`) over MIMIC-CXR-JPG images.

The CSV has one row per box: `dicom_id, category_name, label_text, path, x, y, w, h, image_width,
image_height` (v1.1.0 adds `split`: train/val/test, patient-level). `x, y` is the top-left corner
and `w, h` the size, in pixels of the `image_width x image_height` image; `path` is the image
relative to the MIMIC-CXR-JPG root (`files/p10/p10.../s5.../<dicom_id>.jpg`). The JSON holds the
same in COCO form (`images`, `annotations` with `bbox` [x, y, w, h], `category_id`, `label_text`,
`categories`). A sentence with several boxes has several rows: the evaluation unit is the
(image, category, sentence) triple, whose region is the union of its boxes, read half-open as
[x, y, x + w, y + h] (the core's convention). One sample per triple, id `<dicom_id>-<k>` (k-th
sentence of that image, in file order), queried with its sentence (`Sample.phrases`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from xbench_core import ConfigError, DataError, Dataset, Phrase, Problem, Region, Sample
from xbench_core.dataset import require_file
from xbench_core.io import open_text
from xbench_core.io.layout import clip_box, read_json, require_choice, select_listed, under_root

from . import CATEGORIES, FINDINGS, SPLITS

LAYOUT = """\
  <root>/
    MS_CXR_Local_Alignment_v1.1.0.csv    (or v1.0.0, or the .json) from physionet.org/content/ms-cxr
  <image_root>/                          MIMIC-CXR-JPG (default: root)
    files/p10/p10233088/s54276838/675d792f-a3521e48-5eec8573-1e81d644-e60c34f8.jpg ..."""
CATEGORY_NAMES = {finding: name for name, finding in CATEGORIES.items()}  # finding id -> category_name
COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")


def _files(root: Path, pattern: str) -> list[Path]:
    """The files (not folders) of `root` matching `pattern`, by name."""
    return sorted(p for p in root.glob(pattern) if p.is_file())


@dataclass
class _Pair:
    """One (image, category, sentence) of the release and its boxes."""

    dicom_id: str
    finding: str
    text: str
    path: str
    size: tuple[int, int]  # (H, W) of the image the boxes are drawn on
    split: str | None
    boxes: list[list[float]] = field(default_factory=list)


class MSCXR(Dataset):
    """MS-CXR phrase grounding: one sample per (image, sentence), its region the sentence's boxes."""

    def __init__(
        self,
        root: str,
        split: str = "all",
        annotations: str | None = None,
        image_root: str | None = None,
        split_file: str | None = None,
    ) -> None:
        require_choice("ms-cxr.split", split, SPLITS)
        self.name = "ms-cxr"
        self.split = split
        self.findings = FINDINGS
        self.problems: list[Problem] = []
        self.root = require_file(Path(root).expanduser(), "ms-cxr root folder", LAYOUT, folder=True)
        if annotations:
            self.file = require_file(under_root(self.root, annotations), "ms-cxr.annotations", LAYOUT)
        else:
            found = _files(self.root, "MS_CXR_Local_Alignment_v*.csv") or _files(
                self.root, "MS_CXR_Local_Alignment_v*.json"
            )
            if not found:
                require_file(self.root / "MS_CXR_Local_Alignment_v1.1.0.csv", "MS-CXR annotation file", LAYOUT)
            self.file = found[-1]  # the newest version
        self.image_root = (
            require_file(under_root(self.root, image_root), "ms-cxr.image_root", LAYOUT, folder=True).resolve()
            if image_root
            else self.root.resolve()
        )
        rows = self._read_json() if self.file.suffix == ".json" else self._read_csv()
        pairs = self._pairs(rows)
        if split != "all":
            if any(p.split is None for p in pairs):
                raise ConfigError(
                    f"ms-cxr.split={split}: {self.file.name} has no split (v1.0.0); use split=all, or "
                    "the v1.1.0 release, whose `split` column holds train/val/test"
                )
            pairs = [p for p in pairs if p.split == split]
        if split_file:
            keep = set(
                select_listed(
                    split_file,
                    {p.dicom_id for p in pairs},
                    self.problems,
                    lambda sid: f"dicom_id {sid!r} is not in {self.file.name} ({split}); skipped",
                )
            )
            pairs = [p for p in pairs if p.dicom_id in keep]
        self._pairs_by_id = self._number(pairs)
        self._ids = sorted(self._pairs_by_id)

    # -- reading ----------------------------------------------------------------------------------
    def _read_csv(self) -> list[tuple[int | None, dict[str, str]]]:
        out: list[tuple[int | None, dict[str, str]]] = []
        with open_text(self.file) as (fh, _):
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{self.file}: not an MS-CXR annotation CSV (missing columns {', '.join(missing)}); "
                    "pass the MS_CXR_Local_Alignment_v1.x.0.csv of the release as ms-cxr.annotations"
                )
            for row in reader:
                out.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
        return out

    def _read_json(self) -> list[tuple[int | None, dict[str, str]]]:
        data = read_json(self.file, "download the release again from physionet.org/content/ms-cxr")
        try:
            categories = {c["id"]: c["name"] for c in data["categories"]}
            images = {im["id"]: im for im in data["images"]}
            out: list[tuple[int | None, dict[str, str]]] = []
            for ann in data["annotations"]:
                image = images[ann["image_id"]]
                path = str(image.get("path") or image["file_name"])
                x, y, w, h = ann["bbox"]
                row = {
                    "dicom_id": str(image.get("dicom_id") or PurePosixPath(path).stem),
                    "category_name": str(categories[ann["category_id"]]),
                    "label_text": str(ann["label_text"]),
                    "path": path,
                    "x": str(x), "y": str(y), "w": str(w), "h": str(h),
                    "image_width": str(image["width"]),
                    "image_height": str(image["height"]),
                }  # fmt: skip
                split = ann.get("split", image.get("split"))
                if split is not None:
                    row["split"] = str(split)
                out.append((None, row))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{self.file}: not the MS-CXR COCO layout (categories, images with width/height and "
                f"path or file_name, annotations with bbox, category_id, label_text): {exc!r}; pass "
                "the release's CSV as ms-cxr.annotations instead"
            ) from None
        return out

    def _pairs(self, rows: list[tuple[int | None, dict[str, str]]]) -> list[_Pair]:
        where = str(self.file)
        pairs: dict[tuple[str, str, str], _Pair] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for line, row in rows:
            dicom_id = row.get("dicom_id", "")
            finding = CATEGORIES.get(row.get("category_name", ""))
            text = " ".join(row.get("label_text", "").split())
            if not dicom_id or not text:
                self.problems.append(Problem(where, "row without dicom_id or label_text; skipped", line=line))
                continue
            if finding is None:
                self.problems.append(
                    Problem(where, f"unknown category_name {row.get('category_name')!r} (MS-CXR has "
                            f"{', '.join(CATEGORIES)}); skipped", line=line, sample=dicom_id)
                )  # fmt: skip
                continue
            try:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
                size = (int(float(row["image_height"])), int(float(row["image_width"])))
            except (KeyError, ValueError):
                self.problems.append(
                    Problem(where, "box or image size is not numeric; skipped", line=line, sample=dicom_id)
                )
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or min(size) <= 0:
                self.problems.append(
                    Problem(where, f"empty or malformed box [{x}, {y}, {w}, {h}]; skipped", line=line, sample=dicom_id)
                )
                continue
            if sizes.setdefault(dicom_id, size) != size:
                self.problems.append(
                    Problem(where, f"image size {size[1]}x{size[0]} differs from an earlier row's "
                            f"{sizes[dicom_id][1]}x{sizes[dicom_id][0]}; skipped", line=line, sample=dicom_id)
                )  # fmt: skip
                continue
            box, fate = clip_box([x, y, x + w, y + h], size)
            if fate == "outside":
                self.problems.append(
                    Problem(where, f"box {[x, y, w, h]} lies outside the image; skipped", line=line, sample=dicom_id)
                )
                continue
            if fate != "inside":
                self.problems.append(
                    Problem(where, f"box {[x, y, w, h]} reaches outside the image; clipped", line=line, sample=dicom_id)
                )
            key = (dicom_id, finding, text)
            pair = pairs.setdefault(
                key, _Pair(dicom_id, finding, text, row.get("path", ""), size, row.get("split") or None)
            )
            pair.boxes.append(box)
        return list(pairs.values())

    def _number(self, pairs: list[_Pair]) -> dict[str, _Pair]:
        """`<dicom_id>-<k>`: the k-th sentence of the image in file order (stable for a file)."""
        counts: dict[str, int] = {}
        out = {}
        for pair in pairs:
            k = counts.get(pair.dicom_id, 0)
            counts[pair.dicom_id] = k + 1
            out[f"{pair.dicom_id}-{k}"] = pair
        return out

    # -- samples ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """The sample ids without building each sample (no image-path lookups on disk)."""
        return list(self._ids)

    def _image_path(self, pair: _Pair) -> Path:
        """The image under image_root (files/... or, when image_root is the files/ folder, below it);
        a path that would leave image_root is refused."""
        rel = PurePosixPath(pair.path or f"{pair.dicom_id}.jpg")
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{self.file}: image path {pair.path!r} leaves the image root; fix the file")
        rel = rel.with_suffix(".jpg")  # v1.0.0 names the DICOM; MIMIC-CXR-JPG has the same path in .jpg
        candidates = [self.image_root / rel]
        if rel.parts and rel.parts[0] == "files":
            candidates.append(self.image_root / PurePosixPath(*rel.parts[1:]))
        return next((c for c in candidates if c.is_file()), candidates[0])

    def annotation(self, index: int) -> Sample:
        sid = self._ids[index]
        pair = self._pairs_by_id[sid]
        region = Region.from_boxes(pair.size, pair.boxes)
        parts = PurePosixPath(pair.path).parts
        meta: dict[str, Any] = {
            "path": str(self._image_path(pair)),
            "size": pair.size,
            "dicom_id": pair.dicom_id,
            "category_name": CATEGORY_NAMES[pair.finding],
            "label_text": pair.text,
        }
        if len(parts) >= 4 and parts[0] == "files":
            meta["patient_id"], meta["study_id"] = parts[2][1:], parts[3][1:]
        if pair.split:
            meta["split"] = pair.split
        return Sample(self.name, sid, None, meta=meta, phrases=(Phrase(pair.text, pair.finding, region),))
