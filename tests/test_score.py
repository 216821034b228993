"""`xbench score`: precomputed maps scored into an ordinary run directory.

The cheXlocalize test reads the 20 real sample pickles and the real ground truth from
../shared/realdata (skipped when absent) and checks the values the official cheXlocalize pipeline
(`heatmap_to_segmentation.py` then `eval.py --metric iou` / `--metric hitmiss`, commit 2a79492) gives
on them, measured by running that pipeline (per task: mIoU over true positives, hit rate)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xbench_core.cli import main
from xbench_core.testing import realdata

# eval.py's iou_results_per_cxr.csv / hitmiss_results_per_cxr.csv on the sample (NaN rows left out
# of each task's mean, as pandas does): {finding: (IoU, hit)}; None where every CXR is NaN.
OFFICIAL = {
    "cardiomegaly": (0.36620622920151663, 1.0),
    "enlarged_cardiomediastinum": (0.46234707294166755, 1.0),
    "lung_opacity": (0.0, 0.0),
    "support_devices": (0.03329038603556568, 0.0),
    "atelectasis": (None, None),
    "consolidation": (None, None),
    "edema": (None, None),
    "lung_lesion": (None, None),
    "pleural_effusion": (None, None),
    "pneumothorax": (None, None),
}


@pytest.fixture
def chexlocalize_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "CheXpert").mkdir(parents=True)
    (root / "CheXlocalize").mkdir()
    (root / "CheXpert" / "val_labels.csv").symlink_to(realdata("chexlocalize", "valid.csv"))
    for name in ("gt_segmentations_val.json", "gt_annotations_val.json"):
        (root / "CheXlocalize" / name).symlink_to(realdata("chexlocalize", name))
    return root


def _rows(out: Path) -> dict[str, dict]:
    return {r["finding"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


def test_chexlocalize_protocol_matches_the_official_pipeline(chexlocalize_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("xbench_plugin_chexlocalize")
    maps = realdata("chexlocalize", "gradcam_maps_val")
    out = tmp_path / "run"
    code = main(["score", "--dataset", "chexlocalize", "--set", f"chexlocalize.root={chexlocalize_root}",
                 "--set", "chexlocalize.split=val", "--maps", str(maps), "--protocol", "chexlocalize",
                 "--out", str(out), "--quiet"])
    assert code == 0
    rows = _rows(out)
    for finding, (iou, hit) in OFFICIAL.items():
        row = rows[finding]
        iou_field = next(k for k in row if k.endswith("_iou") and not k.endswith("_ci"))
        hit_field = next(k for k in row if "hit" in k and not k.endswith("_ci"))
        assert (iou_field, hit_field) == ("chexlocalize_iou", "chexlocalize_hit")
        if iou is None:
            assert row[iou_field] is None and row[hit_field] is None
        else:
            assert row[iou_field] == pytest.approx(iou, abs=1e-9)
            assert row[hit_field] == hit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["grounding"]["protocol"]["name"] == "chexlocalize"
    assert manifest["problems"] == []
    # the probabilities in the pickles are the scores: recognition rows exist
    assert rows["cardiomegaly"]["n_images"] == 2
    # tune_heatmap_threshold.py (commit d9c2fad) on the sample: 0.3, 0.3, 0.2, 0.8 (and 0.2 for the
    # tasks without a positive region); heatmap_to_segmentation.py --threshold_path with them, then
    # eval.py, gives these IoUs
    tuned = {"cardiomegaly": (0.3, 0.3665913623461847), "enlarged_cardiomediastinum": (0.3, 0.46106360212653025),
             "lung_opacity": (0.2, 0.0), "support_devices": (0.8, 0.05667319921609407)}
    for finding, (threshold, iou) in tuned.items():
        assert rows[finding]["chexlocalize_threshold"] == threshold
        assert rows[finding]["chexlocalize_iou_tuned"] == pytest.approx(iou, abs=1e-9)
    csv_path = tmp_path / "tuning_results.csv"
    csv_path.write_text("threshold,task\n" + "".join(f"{t},{n}\n" for n, t in (
        ("Airspace Opacity", 0.2), ("Cardiomegaly", 0.3), ("Enlarged Cardiomediastinum", 0.3), ("Support Devices", 0.8))))
    config = tmp_path / "tuned.yaml"
    config.write_text(f"grounding:\n  protocol: {{name: chexlocalize, threshold: {csv_path}}}\n")
    assert main(["score", "-c", str(config), "--dataset", "chexlocalize", "--set", f"chexlocalize.root={chexlocalize_root}",
                 "--set", "chexlocalize.split=val", "--maps", str(maps), "--out", str(tmp_path / "tuned"), "--quiet"]) == 0
    rows = _rows(tmp_path / "tuned")
    for finding, (_, iou) in tuned.items():
        assert rows[finding]["chexlocalize_iou"] == pytest.approx(iou, abs=1e-9)


def test_xbench_protocol_equals_the_run_path(tmp_path: Path) -> None:
    """Maps the `center` baseline produces, given as files, score as `xbench run` scores them."""
    ran = tmp_path / "ran"
    assert main(["run", "--datasets", "phantom", "--models", "center", "--set", "phantom.size=6",
                 "--set", "phantom.resolution=96", "--out", str(ran), "--quiet", "--no-report"]) == 0
    c = (np.arange(14, dtype=np.float32) + 0.5) / 14 - 0.5
    import torch

    ct = torch.from_numpy(c)
    g = torch.exp(-(ct[:, None] ** 2 + ct[None, :] ** 2) / (2 * 0.25**2)).numpy()
    records = [json.loads(line) for p in sorted(ran.glob("records/*/*/*/*.jsonl")) for line in p.read_text().splitlines()]
    keys = {f"{r['id']}|{r['finding']}": g for r in records if r.get("finding")}
    np.savez(tmp_path / "maps.npz", **keys)
    with open(tmp_path / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "finding", "score"])
        for r in records:
            if r.get("finding"):
                w.writerow([r["id"], r["finding"], r["score"]])
    scored = tmp_path / "scored"
    assert main(["score", "--dataset", "phantom", "--set", "phantom.size=6", "--set", "phantom.resolution=96",
                 "--maps", str(tmp_path / "maps.npz"), "--scores", str(tmp_path / "scores.csv"),
                 "--frame", "squash:224", "--model", "center", "--explainer", "native",
                 "--out", str(scored), "--quiet"]) == 0
    a, b = _rows(ran), _rows(scored)
    versions = [json.loads((d / "manifest.json").read_text())["xbench"] for d in (ran, scored)]
    assert versions[0] and versions[0] == versions[1]  # the core's version, as a run records it
    assert set(a) == set(b)
    for finding in a:
        for k in ("n_images", "n_regions", "pointing_game", "ebpg", "dice_fixed", "dice_best", "iou_fixed",
                  "iou_best", "auroc", "pointing_game_ci", "dice_best_ci", "cnr", "pixel_recall"):
            assert a[finding].get(k) == b[finding].get(k), (finding, k)


class _CroppedCenter:
    """The `center` baseline on a center crop of its input: maps that do not cover the whole image."""

    from xbench_core import hookimpl

    @hookimpl
    def xbench_register_models(self, register: Any) -> None:
        import torch

        from xbench_core import ModelSpec
        from xbench_core.builtin.baselines import CenterBaseline
        from xbench_core.geometry import shortest_side_crop

        class Cropped(CenterBaseline):
            def preprocess(self, image: np.ndarray) -> Any:
                pixels, geometry = shortest_side_crop(image, 128, 64)
                return torch.from_numpy(pixels)[None], geometry

        register(ModelSpec(name="cropped", summary="center maps on a center crop", factory=Cropped))


def test_a_runs_saved_maps_are_placed_by_their_stored_geometry(tmp_path: Path) -> None:
    """A run's own map files (input-frame maps, float16, Geometry in their metadata) score as the run
    scored them, whatever --frame says (the default, `original`, would stretch a crop's map over the
    whole image)."""
    from xbench_core.testing import temporary_plugin

    ran, scored, stretched = tmp_path / "ran", tmp_path / "scored", tmp_path / "stretched"
    data = ["--set", "phantom.size=6", "--set", "phantom.resolution=96"]
    with temporary_plugin(_CroppedCenter(), "cropped-center"):
        assert main(["run", "--datasets", "phantom", "--models", "cropped", *data, "--out", str(ran), "--quiet",
                     "--no-report"]) == 0
        (saved,) = sorted(ran.glob("maps/phantom/split-test/cropped/native/*.safetensors"))
        assert main(["score", "--dataset", "phantom", *data, "--maps", str(saved), "--model", "cropped",
                     "--explainer", "native", "--out", str(scored), "--quiet"]) == 0
        # the same maps without their geometry: --frame original stretches them
        from safetensors.numpy import save_file
        from safetensors.torch import load_file

        save_file({k: v.float().numpy() for k, v in load_file(str(saved)).items()}, str(tmp_path / "bare.safetensors"))
        assert main(["score", "--dataset", "phantom", *data, "--maps", str(tmp_path / "bare.safetensors"),
                     "--model", "cropped", "--explainer", "native", "--out", str(stretched), "--quiet"]) == 0
    a, b, c = _rows(ran), _rows(scored), _rows(stretched)
    assert set(a) == set(b)
    for finding in a:
        assert a[finding]["n_regions"] == b[finding]["n_regions"]
        assert a[finding]["pointing_game"] == b[finding]["pointing_game"], finding
        if a[finding]["n_regions"]:  # float16 storage moves a few pixels across a threshold at most
            for k in ("dice_best", "iou_fixed"):
                assert b[finding][k] == pytest.approx(a[finding][k], abs=0.01), (finding, k)
    assert any(c[f]["iou_fixed"] != pytest.approx(a[f]["iou_fixed"], abs=0.01) for f in a if a[f]["n_regions"])


def test_problems_are_listed_and_the_rest_scored(tmp_path: Path) -> None:
    d = tmp_path / "maps"
    d.mkdir()
    from xbench_core.builtin.phantom import Phantom

    ds = Phantom(size=4, resolution=64)
    ids = ds.ids()
    positives = [(s.id, f) for s in (ds.annotation(i) for i in range(len(ds))) for f in s.regions]
    good = {f"{i}|{f}": np.random.default_rng(0).random((8, 8)).astype(np.float32) for i, f in positives[1:]}
    bad = {positives[0][0]: {positives[0][1]: np.full((8, 8), np.nan, np.float32)}}
    np.savez(d / "all.npz", **good)
    np.save(d / f"{ids[0]}__not_a_finding.npy", np.zeros((8, 8), np.float32))
    np.save(d / "nobody__cardiomegaly.npy", np.zeros((8, 8), np.float32))
    (d / "broken.npy").write_bytes(b"not numpy")
    from safetensors.numpy import save_file

    save_file({f"{k}": v for k, v in bad[positives[0][0]].items()}, str(d / f"{positives[0][0]}.safetensors"))
    out = tmp_path / "run"
    assert main(["score", "--dataset", "phantom", "--set", "phantom.size=4", "--set", "phantom.resolution=64",
                 "--maps", str(d), "--out", str(out), "--quiet"]) == 0
    problems = json.loads((out / "manifest.json").read_text())["problems"]
    text = "\n".join(f"{p['file']}: {p['problem']}" for p in problems)
    assert "broken.npy: cannot read" in text
    assert "not_a_finding" in text and "nobody: not an image of phantom" in text
    assert f"{positives[0][0]} / {positives[0][1]}: map has NaN" in text
    results = json.loads((out / "results.json").read_text())
    assert any(e["error"] == "map has NaN or infinite values" for e in results["errors"])
    assert sum(r["n_regions"] for r in results["rows"] if r["finding"] != "__mean__") == len(positives) - 1


def test_score_needs_readable_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--dataset", "phantom", "--maps", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "--maps" in capsys.readouterr().err
    np.save(tmp_path / "a__cardiomegaly.npy", np.zeros((4, 4), np.float32))
    assert main(["score", "--dataset", "phantom", "--maps", str(tmp_path), "--frame", "squash", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--frame" in capsys.readouterr().err
