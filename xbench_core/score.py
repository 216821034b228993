"""`xbench score`: evaluate precomputed saliency maps (and scores) against a dataset, no model run.

Maps (`--maps PATH`, a file or a folder) are read as:
- cheXlocalize pickles `<cxr_id>_<Task>_map.pkl` (a dict with `map` [1, 1, h, w], `prob`, `task`,
  `cxr_dims` (w, h)), through the core's safe unpickler: nothing in them is executed. The map
  covers the whole CXR (`cxr_dims`); `prob` is the score when no `--scores` file is given (a
  14-vector is indexed by the CheXpert task order, as cheXlocalize does);
- arrays: `.npy` (one map), `.npz`, `.safetensors` or `.pt` (tensors only, read without executing
  code), named `<id>/<finding>.<ext>`, `<id>__<finding>.<ext>`, `<id>.<ext>` holding {finding: map},
  or one file for all holding `<id>|<finding>` keys (the layout of a run's saved maps: their
  stored Geometry places them, whatever `--frame` says) or {id: {finding: map}}.
Findings are read through the vocabulary (`Airspace Opacity` is `lung_opacity`).

The frame of a map (`--frame`): `original` (default: the map covers the whole original image, at
any resolution), or the model-input frame and the preprocessing that made it: `squash:S`,
`shortest-side-crop:R:C`, `letterbox:CANVAS:C` (a map on a coarser grid, e.g. 14x14 patches, covers
the whole input). Scores (`--scores FILE`): CSV `id,finding,score` (long) or `id,<finding>...`
(wide), or JSON {id: {finding: score}}.

The output is an ordinary run directory (records, results.json, `xbench report`); problems (maps
for unknown ids or findings, unreadable files, NaN or non-2-D maps, positives without a map) are
listed with their file in the manifest's `problems` and printed; the rest is scored.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, DataError
from .geometry import Geometry

if TYPE_CHECKING:
    from .schema import Record

ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".bin")
CHEXPERT_TASKS = (  # cheXlocalize eval_constants.CHEXPERT_TASKS: the order of a 14-vector `prob`
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)


@dataclass
class MapEntry:
    """One map as read: its values, where it came from, and what the file says about it."""

    values: np.ndarray
    file: str
    prob: float | None = None
    original_size: tuple[int, int] | None = None  # (h, w) a cheXlocalize pickle declares
    geometry: Geometry | None = None  # stored with the map (a run's saved maps): overrides --frame


# ---- frames -------------------------------------------------------------------------------------
def parse_frame(text: str | None) -> tuple[str, tuple[int, ...]]:
    """`original`, `squash:S`, `shortest-side-crop:R:C` or `letterbox:CANVAS:C`."""
    hint = "--frame is original, squash:SIZE, shortest-side-crop:RESIZE:CROP or letterbox:CANVAS:CROP"
    text = (text or "original").strip()
    name, *nums = text.split(":")
    need = {"original": 0, "squash": 1, "shortest-side-crop": 2, "letterbox": 2}
    if name not in need or len(nums) != need[name]:
        raise ConfigError(f"{hint}; got {text!r}")
    try:
        values = tuple(int(v) for v in nums)
    except ValueError:
        raise ConfigError(f"{hint}; got {text!r}") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{hint} (sizes >= 1); got {text!r}")
    return name, values


def frame_geometry(frame: tuple[str, tuple[int, ...]], original: tuple[int, int], grid: tuple[int, int]) -> Geometry:
    """The Geometry from the original image to the frame the map's grid covers."""
    name, v = frame
    if name == "original":
        return Geometry.squash(original, grid)
    if name == "squash":
        return Geometry.squash(original, (v[0], v[0]))
    if name == "shortest-side-crop":
        return Geometry.shortest_side_crop(original, v[0], v[1])
    return Geometry.letterbox_crop(original, v[0], v[1])


# ---- reading maps -------------------------------------------------------------------------------
def _finding(name: str) -> str | None:
    from .findings import canonical

    try:
        return canonical(name)
    except ConfigError:
        return None


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def _read_tensors(path: Path) -> tuple[Any, dict[str, Geometry]]:
    """The content of an array file, read without executing code, and the {image id: Geometry} a
    run's saved-map file carries in its metadata (empty for any other file)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), {}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, {}
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:  # torch reads float16/bfloat16 too
            stored = json.loads((fh.metadata() or {}).get("geometries") or "{}")
            content = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        return content, {str(i): Geometry.from_dict(g) for i, g in stored.items()}
    from .checkpoints import read_pickle_safely

    return read_pickle_safely(path), {}


def _chexlocalize_pickle(path: Path, raw: Any) -> tuple[str, str, MapEntry]:
    if not isinstance(raw, dict) or "map" not in raw:
        raise DataError("not a cheXlocalize map pickle (a dict with map, prob, task, cxr_dims)")
    stem = path.name[: -len("_map.pkl")]
    image_id, task = stem.rsplit("_", 1)  # cheXlocalize utils.parse_pkl_filename
    prob = raw.get("prob")
    p: float | None = None
    if prob is not None:
        arr = _array(prob).astype(np.float64).reshape(-1)
        if arr.size == len(CHEXPERT_TASKS) and task in CHEXPERT_TASKS:
            p = float(arr[CHEXPERT_TASKS.index(task)])
        elif arr.size == 1:
            p = float(arr[0])
    dims = raw.get("cxr_dims")
    size = (int(dims[1]), int(dims[0])) if dims is not None and len(dims) == 2 else None
    return image_id, task, MapEntry(_array(raw["map"]).astype(np.float32), str(path), p, size)


def _entries_of(path: Path, content: Any, image_id: str | None, finding: str | None) -> list[tuple[str, str, MapEntry]]:
    """(id, finding name, entry) of one file's content, by the naming rules of the module doc."""
    if image_id is not None and finding is not None:
        return [(image_id, finding, MapEntry(_array(content), str(path)))]
    if not isinstance(content, dict):
        raise DataError("holds one array but its name says no image id and finding "
                        "(name it <id>/<finding>.npy or <id>__<finding>.npy)")
    out = []
    for key, value in content.items():
        key = str(key)
        if isinstance(value, dict):
            out += [(key, str(f), MapEntry(_array(v), str(path))) for f, v in value.items()]
        elif "|" in key:
            i, f = key.split("|", 1)
            out.append((i, f, MapEntry(_array(value), str(path))))
        elif image_id is not None:
            out.append((image_id, key, MapEntry(_array(value), str(path))))
        else:
            raise DataError(f"key {key!r} is not <id>|<finding> (or use one file per image, <id>.npz)")
    return out


def read_maps(root: str | Path, problems: list[dict[str, str]]) -> dict[tuple[str, str], MapEntry]:
    """Every map under `root` keyed by (image id, canonical finding); problems appended."""
    root = Path(root).expanduser()
    if not root.exists():
        raise ConfigError(f"--maps {root}: no such file or folder")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and (p.name.endswith("_map.pkl") or p.suffix.lower() in ARRAY_SUFFIXES)
    )
    if not files:
        raise ConfigError(f"--maps {root}: no map files (*_map.pkl, {', '.join(ARRAY_SUFFIXES)})")
    out: dict[tuple[str, str], MapEntry] = {}
    for path in files:
        try:
            if path.name.endswith("_map.pkl"):
                from .checkpoints import read_pickle_safely

                found = [_chexlocalize_pickle(path, read_pickle_safely(path))]
            else:
                stem = path.name[: -len(path.suffix)]
                image_id = finding = None
                if root.is_dir() and path.parent != root:  # <id>/<finding>.<ext>
                    image_id, finding = path.parent.name, stem
                elif "__" in stem:  # <id>__<finding>.<ext>
                    image_id, finding = stem.rsplit("__", 1)
                elif root.is_dir():  # <id>.<ext> holding {finding: map}
                    image_id = stem
                content, stored = _read_tensors(path)
                found = _entries_of(path, content, image_id, finding)
                for i, _name, entry in found:
                    entry.geometry = stored.get(i)
        except Exception as exc:  # noqa: BLE001 - one bad file is a problem, not the end
            problems.append({"file": str(path), "problem": f"cannot read: {type(exc).__name__}: {exc}"})
            continue
        for image_id, name, entry in found:
            finding = _finding(name)
            if finding is None:
                problems.append({"file": str(path), "problem": f"{image_id}: unknown finding {name!r}; skipped"})
            elif (image_id, finding) in out:
                problems.append({"file": str(path), "problem": f"{image_id} / {finding}: a second map "
                                 f"(the first is in {out[(image_id, finding)].file}); skipped"})
            else:
                out[(image_id, finding)] = entry
    return out


def read_scores(path: str | Path) -> dict[tuple[str, str], float]:
    """Scores {(id, finding): score} from a CSV (long: id,finding,score; wide: id,<finding>...) or JSON."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--scores {path}: no such file")
    out: dict[tuple[str, str], float] = {}

    def put(i: Any, f: Any, s: Any, where: str) -> None:
        finding = _finding(str(f))
        if finding is None:
            raise DataError(f"{path}{where}: unknown finding {f!r}")
        if s is None or s == "":
            return
        try:
            out[(str(i), finding)] = float(s)
        except (TypeError, ValueError):
            raise DataError(f"{path}{where}: score {s!r} is not a number") from None

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            for i, row in data.items():
                if not isinstance(row, dict):
                    raise DataError(f"{path}: {i!r} must map findings to scores")
                for f, s in row.items():
                    put(i, f, s, f" ({i})")
        elif isinstance(data, list):
            for k, row in enumerate(data):
                if not isinstance(row, dict) or not {"id", "finding", "score"} <= set(row):
                    raise DataError(f"{path}: entry {k} needs id, finding and score")
                put(row["id"], row["finding"], row["score"], f" (entry {k})")
        else:
            raise DataError(f"{path}: expected {{id: {{finding: score}}}} or [{{id, finding, score}}]")
        return out
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        if "id" not in cols:
            raise DataError(f"{path}: the header needs an `id` column (long: id,finding,score; wide: id,<finding>...)")
        long = {"finding", "score"} <= set(cols)
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            if long:
                put(row["id"], row["finding"], row["score"], f" line {line}")
            else:
                for c in cols:
                    if c != "id":
                        put(row["id"], c, row.get(c), f" line {line}")
    return out


# ---- scoring ------------------------------------------------------------------------------------
def _image_size(dataset: Any, sample: Any) -> tuple[int, int]:
    size = sample.meta.get("size") if sample.meta else None
    if size is None:
        for region in sample.regions.values():
            size = getattr(region, "size", None)
            if size is not None:
                break
    if size is None:
        size = dataset.load_image(sample).shape[:2]
    return int(size[0]), int(size[1])


def score_records(
    dataset: Any, maps: dict[tuple[str, str], MapEntry], scores: dict[tuple[str, str], float],
    *, frame: tuple[str, tuple[int, ...]], cfg: Any, model: str, explainer: str,
    problems: list[dict[str, str]], split: str | None = None,
) -> list[Record]:
    """The records of every dataset image that has a map or a score, as the runner writes them."""
    from .engine.runner import eval_size
    from .grounding import evaluate_maps
    from .protocols import protocol_values
    from .schema import make_record

    ids = dataset.ids()
    known = set(ids)
    wanted = {i for i, _ in maps} | {i for i, _ in scores}
    for (i, _finding), given in sorted(maps.items()):
        if i not in known:
            problems.append({"file": given.file, "problem": f"{i}: not an image of {dataset.name}; skipped"})
    for i, _finding in sorted(scores):
        if i not in known:
            problems.append({"file": "--scores", "problem": f"{i}: not an image of {dataset.name}; skipped"})
    by_image: dict[str, list[tuple[str, MapEntry]]] = defaultdict(list)
    for (i, f), given in maps.items():
        by_image[i].append((f, given))
    order = sorted(range(len(ids)), key=lambda k: ids[k])
    if cfg.limit is not None:
        order = order[: cfg.limit]
    records: list[Record] = []
    for index in order:
        if ids[index] not in wanted:
            continue
        sample = dataset.annotation(index)
        sid = sample.id
        original = _image_size(dataset, sample)
        size = eval_size(original, cfg.eval_size)
        rows: dict[str, dict[str, Any]] = {}
        for f, label in sample.labels.items():
            if label is None or f not in dataset.findings:
                continue
            entry = maps.get((sid, f))
            score = scores.get((sid, f), entry.prob if entry is not None else None)
            row: dict[str, Any] = {"label": int(label), "score": score}
            if score is not None and not np.isfinite(score):
                row["score"], row["error"] = None, "score is NaN or infinite"
            region = sample.regions.get(f)
            if label == 1 and region is not None and "error" not in row:
                row.update(_grounding(entry, region, original, size, frame, cfg, protocol_values, evaluate_maps, f))
            if row.get("error") and entry is not None:
                problems.append({"file": entry.file, "problem": f"{sid} / {f}: {row['error']}"})
            elif row.get("error") and label == 1 and region is not None:
                problems.append({"file": "--maps", "problem": f"{sid} / {f}: {row['error']}"})
            rows[f] = row
        for f, unlabeled in by_image.get(sid, []):
            if f not in rows:
                problems.append({"file": unlabeled.file, "problem": f"{sid} / {f}: the dataset has no label for it; skipped"})
        for f, row in rows.items():
            records.append(make_record(dataset.name, split, sid, model, explainer, f, len(rows), **row))
        if not rows:
            records.append(make_record(dataset.name, split, sid, model, explainer, None, 1))
    return records


def _grounding(entry: MapEntry | None, region: Any, original: tuple[int, int], size: tuple[int, int],
               frame: tuple[str, tuple[int, ...]], cfg: Any, protocol_values: Any, evaluate_maps: Any,
               finding: str) -> dict[str, Any]:
    if entry is None:
        return {"error": "no map for this positive finding"}
    values = np.squeeze(np.asarray(entry.values, np.float32))
    if values.ndim != 2 or min(values.shape) < 1:
        return {"error": f"map has shape {list(entry.values.shape)}, expected a 2-D map (or 1 x 1 x h x w)"}
    if not np.isfinite(values).all():
        return {"error": "map has NaN or infinite values"}
    if entry.original_size is not None and tuple(entry.original_size) != tuple(original):
        return {"error": f"map is for a {entry.original_size[1]}x{entry.original_size[0]} image, "
                         f"the dataset's image is {original[1]}x{original[0]}"}
    if entry.geometry is not None:  # a run's saved map: the geometry it was saved with, whatever --frame says
        geometry = entry.geometry
        if tuple(geometry.original_size) != tuple(original):
            return {"error": f"map was saved for a {geometry.original_size[1]}x{geometry.original_size[0]} image, "
                             f"the dataset's image is {original[1]}x{original[0]}"}
    else:  # a cheXlocalize pickle's map covers the whole CXR whatever --frame says
        geometry = frame_geometry(("original", ()) if entry.original_size is not None else frame, original, values.shape)
    mask = region.rasterize(size)
    st = evaluate_maps(values[None], geometry, size, [mask]).rows()[0]
    if st["region_px"] == 0:
        return {"error": "region is empty at the eval frame (raise grounding.eval_size)"}
    if cfg.protocol.name != "xbench":
        st["extra"].update(protocol_values(cfg.protocol, values, geometry, mask, entry.prob, finding))
    return {"stats": st}


def run_score(args: Any, registry: Any) -> int:
    """The `xbench score` command: read, score, write the run directory, aggregate, print."""
    from .engine.config import build_config, load_yaml
    from .engine.runner import _jsonable
    from .engine.session import rebuild_results, versions
    from .plugins import CORE_DISTRIBUTION
    from .schema import SCHEMA_VERSION
    from .store import RunStore

    data = load_yaml(args.config) if args.config else {}
    data["datasets"] = [d for d in (data.get("datasets") or []) if (d if isinstance(d, str) else d.get("name")) == args.dataset] or [{"name": args.dataset}]
    data["models"] = [{"name": "random"}]  # validated below as a placeholder: no model is built
    grounding = dict(data.get("grounding") or {})
    if args.protocol is not None:
        grounding["protocol"] = args.protocol
    if args.pointing is not None:
        grounding["pointing"] = args.pointing
    data["grounding"] = grounding
    for key in ("out", "limit", "metrics"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    if isinstance(data.get("metrics"), str):
        data["metrics"] = [m.strip() for m in data["metrics"].split(",")]
    cfg = build_config(data, registry, sets=args.sets)
    from .engine.config import Component

    cfg.models = [Component(args.model)]
    cfg.explainers = [args.explainer]
    cfg.save_maps = False
    if not cfg.out:
        raise ConfigError("xbench score needs --out DIR (the run directory to write)")
    frame = parse_frame(args.frame)
    problems: list[dict[str, str]] = []
    maps = read_maps(args.maps, problems)
    scores = read_scores(args.scores) if args.scores else {}
    comp = cfg.datasets[0]
    dataset = registry.datasets[comp.name].build(**comp.options)
    dataset.name = comp.name
    out = Path(cfg.out)
    store = RunStore(out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"{out} is not empty; pass --overwrite to replace it, or --out NEW_DIR")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    records = score_records(dataset, maps, scores, frame=frame, cfg=cfg, model=args.model,
                            explainer=args.explainer, problems=problems, split=comp.options.get("split"))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    installed = versions(registry)
    manifest = {
        "xbench": installed["plugins"].get(CORE_DISTRIBUTION),
        "schema": SCHEMA_VERSION,
        "config": _jsonable(cfg.as_dict()),
        "identity": _jsonable(cfg.evaluation_identity()),
        "versions": installed,
        "command": sys.argv,
        "started": now,
        "finished": now,
        "score": {"maps": str(args.maps), "scores": args.scores, "frame": args.frame or "original"},
        "models": {args.model: {"random_weights": False, "map_kind": None, "options": {},
                                "note": f"precomputed maps from {args.maps} (xbench score)"}},
        "datasets": {comp.name: {"images": len(dataset.ids()), "scored": len({r['id'] for r in records}),
                                 "problems": len(getattr(dataset, "problems", []))}},
        "skipped_explainers": [],
        "problems": problems,
    }
    store.write_json(store.manifest_path, manifest)
    by_sample: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_sample[r["id"]].append(r)
    for sid in sorted(by_sample):
        store.append(comp.name, args.model, args.explainer, "0", by_sample[sid])
    store.close()
    results = rebuild_results(store, registry)
    if not args.quiet:
        from .cli import print_summary

        print_summary(results, store)
        for p in problems[:20]:
            print(f"problem: {p['file']}: {p['problem']}")
        if len(problems) > 20:
            print(f"... {len(problems) - 20} more problems in {store.manifest_path}")
    return 0
