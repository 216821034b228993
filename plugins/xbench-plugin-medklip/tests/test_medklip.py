"""Tests of the MedKLIP plugin: the full-size network with random weights, the official checkpoint
layout, the entity descriptions, the tokenizer quirk, the query cache and the preprocessing."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from xbench_blocks.fusion import write_tiny_text_encoder
from xbench_blocks.testing import UNPICKLED, EntityQueryModelTests, PickledConfig, random_pixels
from xbench_plugin_medklip import SPEC
from xbench_plugin_medklip import model as model_module
from xbench_plugin_medklip.entities import (
    DESCRIPTIONS_SHA256,
    ENTITIES,
    placeholder_descriptions,
    read_descriptions,
)

from xbench_core import AssetError, CheckpointError, DataError, UnsupportedFinding
from xbench_core.testing import (
    perturbed,
    realdata,
    save_official_checkpoint,
)

# Words of the placeholder and synthetic texts, so that the tiny vocabulary keeps them whole and
# the test embeddings stay cheap.
_WORDS = [*ENTITIES, "text", "of", "covid19", "changed", "seen", "chest", "x", "ray"]


def _write_descriptions(path: Path, *, changed: str | None = None, covid: bool = False) -> Path:
    """A descriptions file in the official format: key order = query order, 'eumonia' typo. The
    texts are the placeholders (so that the query cache already holds most of them)."""
    texts = placeholder_descriptions()
    data = {}
    for name in ENTITIES:
        key = "eumonia" if name == "pneumonia" else name
        data[key] = texts[name] + (" changed" if name == changed else "")
    if covid:
        data["covid19"] = "covid19 is seen on the chest x-ray."
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A private XBENCH_HOME for this module (the query cache lands there)."""
    folder = tmp_path_factory.mktemp("xbench-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XBENCH_HOME", str(folder))
        for name in ("XBENCH_MEDKLIP_CHECKPOINT", "XBENCH_MEDKLIP_TEXT_ENCODER",
                     "XBENCH_MEDKLIP_DESCRIPTIONS"):  # fmt: skip
            patch.delenv(name, raising=False)
        yield folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"), _WORDS)


@pytest.fixture(scope="module")
def shared_model(home: Path, tiny_bert: Path):
    return SPEC.build(checkpoint="random", text_encoder=str(tiny_bert))


class TestMedKLIP(EntityQueryModelTests):
    name = "medklip"
    listing = "medklip_model.json"
    book = "entity_book"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, shared_model):
        return shared_model

    def test_query_book_is_a_buffer_outside_the_state_dict(self, model) -> None:
        assert tuple(model.module.entity_book.shape) == (75, 768)
        assert "entity_book" not in model.module.state_dict()
        assert "entity_book" in dict(model.module.named_buffers())
        assert model.descriptions == placeholder_descriptions()

    def test_scores_and_maps_follow_the_official_rule(self, model) -> None:
        findings = ["pneumonia", "fibrosis", "pleural_effusion"]
        pixels = random_pixels(model, 1)
        with torch.inference_mode():
            queries = model.encode_queries(findings)
            out = model.forward(pixels, queries)
            logits, attention, grid = model.module(pixels)
        assert grid == (14, 14) and len(attention) == 4
        assert tuple(attention[0].shape) == (1, 75, 196)
        rows = [20, ENTITIES.index("tail_abnorm_obs"), ENTITIES.index("effusion")]
        assert rows[0] == ENTITIES.index("pneumonia")
        expected_scores = torch.softmax(logits, dim=-1)[:, rows, 1]
        torch.testing.assert_close(out.scores, expected_scores)
        # official: ws = (ws[-4] + ws[-3] + ws[-2] + ws[-1]) / 4, reshape to 14 x 14, class row
        ws = (attention[-4] + attention[-3] + attention[-2] + attention[-1]) / 4
        expected_maps = ws.reshape(1, 75, 14, 14)[:, rows]
        torch.testing.assert_close(out.maps["cross_attention"], expected_maps)
        # head-averaged softmax over the 196 image tokens: every map sums to one
        torch.testing.assert_close(
            out.maps["cross_attention"].sum(dim=(-2, -1)), torch.ones(1, 3), atol=1e-5, rtol=0
        )
        # the differentiable logit is present minus absent; its sigmoid is the score
        with torch.no_grad():
            difference = model.logits(pixels, queries)
        torch.testing.assert_close(torch.sigmoid(difference), out.scores, atol=1e-6, rtol=1e-5)

    def test_unsupported_findings(self, model) -> None:
        # placeholders have no covid19 entry, and MedKLIP's own file has none either
        for finding in ("covid19", "tuberculosis", "aortic_enlargement", "ild"):
            assert not model.supports(finding)
        with pytest.raises(UnsupportedFinding, match="covid19"):
            model.encode_queries(["pneumonia", "covid19"])


# ---- checkpoints ----------------------------------------------------------------------------


def test_official_checkpoint_loads_strictly(shared_model, tiny_bert, tmp_path) -> None:
    state = perturbed(shared_model.module.state_dict())
    save_official_checkpoint(
        state,
        tmp_path / "checkpoint_final.pth",
        container="model",
        prefix="module.",
        extra={
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "lr_scheduler": {"last_epoch": 99},
            "config": PickledConfig(),
            "epoch": 99,
        },
    )
    # with a covid19 entry, as in MAVL's copy of the file used by MAVL's evaluation of MedKLIP
    descriptions = _write_descriptions(tmp_path / "observation explanation.json", covid=True)
    # A folder holding checkpoint_final.pth is accepted as well as the file itself.
    loaded = SPEC.build(
        checkpoint=str(tmp_path), text_encoder=str(tiny_bert), descriptions=str(descriptions)
    )
    assert UNPICKLED == [], "the pickled config object was executed"
    assert loaded.random_weights is False
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    expected_module = copy.deepcopy(shared_model.module)
    expected_module.load_state_dict(state)
    expected_module.entity_book = loaded.module.entity_book
    # the placeholder texts of the file hit the cache filled by shared_model
    torch.testing.assert_close(loaded.module.entity_book[:75], shared_model.module.entity_book)
    pixels = random_pixels(loaded, 1, size=96)
    with torch.inference_mode():
        out = loaded.forward(pixels, loaded.encode_queries(["pneumonia", "atelectasis"]))
        logits, attention, _ = expected_module(pixels, 75)
        covid_queries = loaded.encode_queries(["pneumonia", "covid19"])
        covid = loaded.forward(pixels, covid_queries)
    torch.testing.assert_close(out.scores, torch.softmax(logits, -1)[:, [20, 12], 1])
    torch.testing.assert_close(
        out.maps["cross_attention"], (sum(attention) / 4).reshape(1, 75, 6, 6)[:, [20, 12]]
    )
    # covid19 is appended as a 76th query only when asked for, as the official COVID code does;
    # it takes part in the self-attention, so the other entities' scores move slightly
    assert loaded.queries["covid19"] == "covid19" and loaded.entities[-1] == "covid19"
    assert covid_queries.entities == 76 and covid.maps["cross_attention"].shape == (1, 2, 6, 6)
    assert not torch.equal(covid.scores[:, 0], out.scores[:, 0])
    torch.testing.assert_close(covid.scores[:, 0], out.scores[:, 0], atol=0.05, rtol=0)


def test_corrupted_checkpoint_lists_the_offending_keys(shared_model, tiny_bert, tmp_path) -> None:
    state = dict(shared_model.module.state_dict())
    del state["classifier.weight"]
    state["res_l1.bias"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(1)
    path = save_official_checkpoint(
        state, tmp_path / "bad.pth", container="model", prefix="module."
    )
    descriptions = _write_descriptions(tmp_path / "d.json")
    with pytest.raises(CheckpointError) as info:
        SPEC.build(
            checkpoint=str(path), text_encoder=str(tiny_bert), descriptions=str(descriptions)
        )
    message = str(info.value)
    assert "classifier.weight" in message and "res_l1.bias" in message and "extra.weight" in message
    # a file without the 'model' container says what it holds instead
    flat = save_official_checkpoint(shared_model.module.state_dict(), tmp_path / "flat.pth")
    with pytest.raises(CheckpointError, match="no key 'model'"):
        SPEC.build(
            checkpoint=str(flat), text_encoder=str(tiny_bert), descriptions=str(descriptions)
        )


def test_missing_checkpoint_says_where_to_get_it(home) -> None:
    with pytest.raises(AssetError) as info:
        SPEC.build()
    message = str(info.value)
    assert "Google Drive" in message and "medklip.checkpoint" in message
    assert "XBENCH_MEDKLIP_CHECKPOINT" in message


# ---- descriptions ---------------------------------------------------------------------------


def test_real_descriptions_parse_in_the_official_order() -> None:
    path = realdata("medklip-mavl", "medklip_observation_explanation.json")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DESCRIPTIONS_SHA256
    descriptions = read_descriptions(path)
    assert tuple(descriptions) == ENTITIES and len(descriptions) == 75
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert "eumonia" in raw and "pneumonia" not in raw  # the official typo, kept
    assert descriptions["pneumonia"].startswith(
        "Pneumonia is an inflammatory condition of the lung primarily affecting the small air sacs"
    )
    assert descriptions["tail_abnorm_obs"] == "Some very rare diseases."
    # MAVL's copy (used by MAVL's evaluation of MedKLIP) adds covid19 after the 75
    mavl_copy = read_descriptions(realdata("medklip-mavl", "mavl_observation_explanation.json"))
    assert tuple(mavl_copy)[:75] == ENTITIES and tuple(mavl_copy)[75:] == ("covid19",)


def test_descriptions_download_is_checked_against_the_official_sha256(tmp_path, monkeypatch):
    real = realdata("medklip-mavl", "medklip_observation_explanation.json")
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XBENCH_MEDKLIP_DESCRIPTIONS", raising=False)
    # the real file stands in for the official raw URL
    monkeypatch.setattr(model_module, "DESCRIPTIONS_URL", real.as_uri())
    assert tuple(model_module.load_descriptions(None, random=False)) == ENTITIES
    cached = tmp_path / "home" / "assets" / "medklip-entity-descriptions"
    assert (cached / "observation explanation.json").read_bytes() == real.read_bytes()
    # other content at that URL is refused
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "other-home"))
    other = _write_descriptions(tmp_path / "other.json")
    monkeypatch.setattr(model_module, "DESCRIPTIONS_URL", other.as_uri())
    with pytest.raises(AssetError, match="SHA-256"):
        model_module.load_descriptions(None, random=False)
    assert model_module.load_descriptions(None, random=True) == placeholder_descriptions()


def test_malformed_descriptions_name_the_key(tmp_path) -> None:
    path = _write_descriptions(tmp_path / "d.json")
    data = json.loads(path.read_text())
    keys = list(data)
    keys[8], keys[9] = keys[9], keys[8]  # effusion <-> opacity
    path.write_text(json.dumps({k: data[k] for k in keys}))
    with pytest.raises(DataError, match="entry 8 is 'opacity', expected 'effusion'"):
        read_descriptions(path)
    path.write_text(json.dumps({**data, "something": "x"}))
    with pytest.raises(DataError, match="unexpected entry 'something'"):
        read_descriptions(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="medklip.descriptions"):
        read_descriptions(path)
