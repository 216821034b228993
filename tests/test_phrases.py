"""Per-sample phrases (phrase grounding): the Sample contract, the per-batch queries and columns,
the prompt-pair text cache, and a run where each phrase's map must come from its own column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xbench_core import DataError, DatasetSpec, ModelSpec, Option, Phrase, Region, Sample, hookimpl
from xbench_core.builtin.baselines import GRID, _Baseline
from xbench_core.builtin.phantom import Phantom
from xbench_core.engine.config import build_config
from xbench_core.engine.phrases import batch_queries, column_names
from xbench_core.engine.session import execute
from xbench_core.testing import temporary_plugin
from xbench_core.types import ModelOutput


def test_phrases_make_their_findings_positive_with_their_region() -> None:
    box = Region.from_boxes((10, 10), [[1, 1, 4, 4]])
    s = Sample("d", "a", None, labels={"nodule": 0}, phrases=(Phrase("small opacity", "nodule", box),
                                                             Phrase("fluid", "pleural_effusion")))
    assert s.labels == {"nodule": 1, "pleural_effusion": 1}
    assert s.regions == {"nodule": box}
    with pytest.raises(DataError, match="two phrases for nodule"):
        Sample("d", "b", None, phrases=(Phrase("x", "nodule"), Phrase("y", "nodule")))


class _Recorder(_Baseline):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[Phrase]] = []

    def encode_phrases(self, phrases: list[Phrase]) -> list[str]:
        self.calls.append(list(phrases))
        return [p.text for p in phrases]


def test_batch_queries_columns() -> None:
    model = _Recorder()
    a, b = Phrase("left effusion", "pleural_effusion"), Phrase("a nodule", "nodule")
    items = [{"phrases": (a, b)}, {"phrases": (a,)}, {"phrases": (Phrase("x", "hernia"),)}]
    queries, columns = batch_queries(model, ["pleural_effusion", "nodule"], "finding-queries", items)
    assert queries == ["left effusion", "a nodule"] and model.calls == [[a, b]]
    assert columns == [[(0, "pleural_effusion"), (1, "nodule")], [(0, "pleural_effusion")], []]
    # the outputs are checked against one column per distinct phrase, not per finding of the run
    assert column_names(["nodule", "pleural_effusion", "hernia"], columns) == ["pleural_effusion", "nodule"]
    assert column_names(["nodule"], None) == ["nodule"]
    # no phrase of a finding the run scores: the finding queries, no text query of zero columns
    assert batch_queries(model, ["cardiomegaly"], "q", items) == ("q", None)
    # findings-only batches and models without encode_phrases keep the run's finding queries
    assert batch_queries(model, ["nodule"], "q", [{"phrases": ()}]) == ("q", None)
    assert batch_queries(_Baseline(), ["nodule"], "q", items) == ("q", None)
    assert "phrases" in model.capabilities() and "phrases" not in _Baseline().capabilities()


# ---- a run: phrases whose text states their box, a model that draws the box it reads -------------
class _PhrasePhantom(Phantom):
    """Phantom whose positives are phrases: text 'box x1 y1 x2 y2' (fractions of the side), region
    that box (not the finding's mask), so only a map drawn from the sample's own text hits it."""

    def annotation(self, index: int) -> Sample:
        base = super().annotation(index)
        n = self.resolution
        phrases = []
        for k, f in enumerate(sorted(base.regions)):
            rng = np.random.default_rng([index, k])
            x1, y1 = rng.integers(0, 8, size=2) / 14
            x2, y2 = x1 + 4 / 14, y1 + 3 / 14
            box = Region.from_boxes((n, n), [[x1 * n, y1 * n, x2 * n, y2 * n]])
            phrases.append(Phrase(f"box {x1} {y1} {x2} {y2}", f, box))
        return Sample(base.dataset, base.id, None, meta=base.meta, phrases=tuple(phrases))


class _BoxReader(_Baseline):
    """Map of a phrase = 1 inside the box its text states (input grid), 0 elsewhere."""

    map_kind = "similarity"

    def encode_phrases(self, phrases: list[Phrase]) -> list[str]:
        return [p.text for p in phrases]

    def forward(self, pixels: Any, queries: list[str]) -> ModelOutput:
        import torch

        maps = torch.zeros(len(pixels), len(queries), GRID, GRID)
        for j, text in enumerate(queries):
            if text.startswith("box "):
                x1, y1, x2, y2 = (round(float(v) * GRID) for v in text.split()[1:])
                maps[:, j, y1:y2, x1:x2] = 1.0
        return ModelOutput(scores=torch.full(maps.shape[:2], 0.5), maps={"similarity": maps})


class _FindingsOnly(_BoxReader):
    encode_phrases = _Baseline.encode_phrases  # type: ignore[assignment]  # no phrase support


class _Plugin:
    @hookimpl
    def xbench_register_datasets(self, register: Any) -> None:
        register(DatasetSpec(name="phrase-phantom", summary="phantom with box phrases", factory=_PhrasePhantom,
                             findings=Phantom(1).findings,
                             options=(Option("size", int, 8), Option("resolution", int, 112))))

    @hookimpl
    def xbench_register_models(self, register: Any) -> None:
        register(ModelSpec(name="box-reader", summary="draws the box its phrase states", factory=_BoxReader))
        register(ModelSpec(name="findings-only", summary="the same without phrases", factory=_FindingsOnly))


def test_run_reads_each_sample_its_own_phrase(tmp_path: Path) -> None:
    with temporary_plugin(_Plugin(), "phrase-test") as registry:
        cfg = build_config({"datasets": ["phrase-phantom"], "models": ["box-reader", "findings-only"],
                            "out": str(tmp_path / "r"), "batch_size": 3}, registry)
        execute(cfg, registry, quiet=True)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"phrases": true' in text and '"phrases": false' in text

    def records(model: str) -> list[dict[str, Any]]:
        folder = tmp_path / "r" / "records" / "phrase-phantom" / model / "native"
        return [json.loads(x) for f in folder.glob("*.jsonl") for x in f.read_text().splitlines()]

    phrased = [r for r in records("box-reader") if r["finding"]]
    assert len(phrased) >= 8 and all(r["label"] == 1 and r["error"] is None for r in phrased)
    # the map is the phrase's box (bilinear edges aside): the peak is in it, and so is most of
    # the map's mass and of its pixels at >= 0.5
    for r in phrased:
        st = r["stats"]
        assert st["pointing_game"] == 1.0 and st["ebpg"] > 0.8, r["id"]
        inside, above = st["hits_region"][50], st["hits_all"][50]
        assert inside / above > 0.9 and inside / st["region_px"] > 0.9, r["id"]
    # queried by finding (no text), the same model draws nothing: a constant map
    plain = [r for r in records("findings-only") if r["finding"]]
    assert len(plain) == len(phrased) and all(r["stats"]["constant_map"] for r in plain)


def test_the_faithfulness_pass_is_not_run_on_phrase_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its passes read finding columns: on a phrase batch it is not run, and the records say why."""
    from xbench_core.engine.faithfulness import FaithfulnessPass

    ran: list[str] = []
    real = FaithfulnessPass.part

    def spy(self: Any, model: Any, *args: Any) -> Any:
        ran.append(type(model).__name__)
        return real(self, model, *args)

    monkeypatch.setattr(FaithfulnessPass, "part", spy)
    with temporary_plugin(_Plugin(), "phrase-test") as registry:
        cfg = build_config({"datasets": [{"name": "phrase-phantom", "size": 3}], "models": ["box-reader", "findings-only"],
                            "out": str(tmp_path / "r"), "faithfulness": {"steps": 2}}, registry)
        execute(cfg, registry, quiet=True)
    folder = tmp_path / "r" / "records" / "phrase-phantom"
    recs = {m: [json.loads(x) for f in (folder / m / "native").glob("*.jsonl") for x in f.read_text().splitlines()]
            for m in ("box-reader", "findings-only")}
    phrased = [r for r in recs["box-reader"] if r.get("stats")]
    assert phrased and all(r["faithfulness"] == {"error": "faithfulness is not computed for phrase queries"}
                           for r in phrased)
    assert ran == ["_FindingsOnly"]  # the model without phrase support is queried by finding, as usual
    assert all("error" not in (r.get("faithfulness") or {}) for r in recs["findings-only"] if r.get("stats"))
