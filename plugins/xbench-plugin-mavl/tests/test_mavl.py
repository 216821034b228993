"""Tests of the MAVL plugin: the full-size network with random weights, the official checkpoint
layout, the descriptions and aspects, the tokenizer quirk, the query cache and the preprocessing."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from xbench_blocks.frozen_text import embed_texts
from xbench_blocks.fusion import write_tiny_text_encoder
from xbench_blocks.testing import UNPICKLED, EntityQueryModelTests, PickledConfig, random_pixels
from xbench_plugin_mavl import SPEC
from xbench_plugin_mavl import model as model_module
from xbench_plugin_mavl.entities import (
    ASPECTS,
    ASPECTS_SHA256,
    DESCRIPTIONS_SHA256,
    ENTITIES,
    placeholder_aspects,
    placeholder_descriptions,
    read_aspects,
    read_descriptions,
)

from xbench_core import AssetError, CheckpointError, DataError, UnsupportedFinding
from xbench_core.testing import (
    perturbed,
    realdata,
    save_official_checkpoint,
)

# Words of the placeholder texts, so that the tiny vocabulary keeps them whole and the test
# embeddings stay cheap.
_WORDS = [*ENTITIES, *ASPECTS, "covid19", "changed", "seen", "chest", "x", "ray", "the", "of"]
PNEUMONIA, EFFUSION = ENTITIES.index("pneumonia"), ENTITIES.index("effusion")


def _write_files(folder: Path, *, covid: bool = True) -> tuple[Path, Path]:
    """Descriptions and aspects files in the official formats (objects keyed by entity name; the
    descriptions in a shuffled key order, since MAVL reads them by name). The texts are the
    placeholders, so that the query cache already holds them."""
    descriptions, aspects = placeholder_descriptions(), placeholder_aspects()
    names = list(reversed(ENTITIES)) + (["covid19"] if covid else [])
    (folder / "observation explanation.json").write_text(
        json.dumps({name: descriptions[name] for name in names}, indent=1), encoding="utf-8"
    )
    (folder / "gpt4_mimic.json").write_text(
        json.dumps({name: aspects[name] for name in names}, indent=1), encoding="utf-8"
    )
    return folder / "observation explanation.json", folder / "gpt4_mimic.json"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A private XBENCH_HOME for this module (the query cache lands there)."""
    folder = tmp_path_factory.mktemp("xbench-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XBENCH_HOME", str(folder))
        for name in ("CHECKPOINT", "TEXT_ENCODER", "DESCRIPTIONS", "ASPECTS"):
            patch.delenv(f"XBENCH_MAVL_{name}", raising=False)
        yield folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"), _WORDS)


@pytest.fixture(scope="module")
def shared_model(home: Path, tiny_bert: Path):
    return SPEC.build(checkpoint="random", text_encoder=str(tiny_bert))


class TestMAVL(EntityQueryModelTests):
    name = "mavl"
    listing = "mavl_model.json"
    book = "concept_book"

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, shared_model):
        return shared_model

    def test_concept_book_is_entity_major_and_outside_the_state_dict(self, model) -> None:
        # 76 entities (the placeholders include covid19) x 9 concepts
        assert model.entities[-1] == "covid19" and len(model.entities) == 76
        assert tuple(model.module.concept_book.shape) == (76 * 9, 768)
        assert "concept_book" not in model.module.state_dict()
        # row 9 * e is the description of entity e, rows 9 * e + 1 .. + 8 its aspects
        encoder = model.text_encoder
        texts = [model.descriptions["effusion"], model.aspects["effusion"][5]]
        book = embed_texts(encoder, texts, tag="mavl-test")
        torch.testing.assert_close(model.module.concept_book[9 * EFFUSION], book[0])
        torch.testing.assert_close(model.module.concept_book[9 * EFFUSION + 6], book[1])

    def test_scores_and_maps_follow_the_official_rule(self, model) -> None:
        findings = ["pneumonia", "fibrosis", "pleural_effusion"]
        rows = [PNEUMONIA, ENTITIES.index("tail_abnorm_obs"), EFFUSION]
        pixels = random_pixels(model, 1)
        with torch.inference_mode():
            queries = model.encode_queries(findings)
            out = model.forward(pixels, queries)
            logits, attention, grid = model.module(pixels, 75)
        assert queries.entities == 75 and grid == (14, 14) and len(attention) == 4
        assert tuple(logits.shape) == (1, 75, 2) and tuple(attention[0].shape) == (1, 675, 196)
        torch.testing.assert_close(out.scores, torch.softmax(logits, dim=-1)[:, rows, 1])
        # official: average the 4 layers, view [B, 75, 9, 196], keep concepts [0, 6, 7, 8], mean
        ws = (attention[-4] + attention[-3] + attention[-2] + attention[-1]) / 4
        ws = ws.view(1, 75, 9, -1)[:, :, [0, 6, 7, 8]].mean(2)
        torch.testing.assert_close(out.maps["cross_attention"], ws.reshape(1, 75, 14, 14)[:, rows])
        torch.testing.assert_close(
            out.maps["cross_attention"].sum(dim=(-2, -1)), torch.ones(1, 3), atol=1e-5, rtol=0
        )
        with torch.no_grad():
            difference = model.logits(pixels, queries)
        torch.testing.assert_close(torch.sigmoid(difference), out.scores, atol=1e-6, rtol=1e-5)

    def test_classifier_reads_the_nine_concepts_of_an_entity(self, model) -> None:
        # The classifier sees [concept 0 | concept 1 | ... | concept 8] of one entity: changing one
        # entity's concept queries changes that entity's logits and (through self-attention)
        # only slightly the others'.
        net = copy.deepcopy(model.module)
        pixels = random_pixels(model, 1, size=64)
        with torch.no_grad():
            before, _, _ = net(pixels, 75)
            net.concept_book[9 * PNEUMONIA : 9 * PNEUMONIA + 9] = net.concept_book[0:9]
            after, _, _ = net(pixels, 75)
        change = (after - before).abs().amax(dim=-1)[0]
        assert float(change[PNEUMONIA]) > 10 * float(change[EFFUSION])

    def test_covid19_is_appended_only_when_asked_for(self, model) -> None:
        pixels = random_pixels(model, 1, size=96)
        with torch.inference_mode():
            alone = model.forward(pixels, model.encode_queries(["pneumonia"]))
            queries = model.encode_queries(["pneumonia", "covid19"])
            both = model.forward(pixels, queries)
        assert queries.entities == 76 and queries.rows.tolist() == [PNEUMONIA, 75]
        assert both.maps["cross_attention"].shape == (1, 2, 6, 6)
        # the appended 9 queries take part in the self-attention (official COVID configs)
        assert not torch.equal(alone.scores[:, 0], both.scores[:, 0])
        torch.testing.assert_close(alone.scores[:, 0], both.scores[:, 0], atol=0.05, rtol=0)

    def test_unsupported_findings(self, model) -> None:
        for finding in ("tuberculosis", "aortic_enlargement", "ild", "copd"):
            assert not model.supports(finding)
        with pytest.raises(UnsupportedFinding, match="tuberculosis"):
            model.encode_queries(["pneumonia", "tuberculosis"])


# ---- checkpoints ----------------------------------------------------------------------------


def test_official_checkpoint_loads_strictly(shared_model, tiny_bert, tmp_path) -> None:
    state = perturbed(shared_model.module.state_dict())
    save_official_checkpoint(
        {**state, "temp": torch.full((9,), 0.07)},  # the per-aspect temperature, dropped
        tmp_path / "checkpoint_full_46.pth",
        container="model",
        prefix="module.",
        extra={
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "config": PickledConfig(),
            "epoch": 46,
        },
    )
    descriptions, aspects = _write_files(tmp_path)
    # a folder and variant=full_46 find checkpoint_full_46.pth in it
    loaded = SPEC.build(
        checkpoint=str(tmp_path),
        variant="full_46",
        text_encoder=str(tiny_bert),
        descriptions=str(descriptions),
        aspects=str(aspects),
    )
    assert UNPICKLED == [], "the pickled config object was executed"
    assert loaded.random_weights is False
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    # read by name: same texts as the placeholders, so the same (cached) concept book
    torch.testing.assert_close(loaded.module.concept_book, shared_model.module.concept_book)
    expected_module = copy.deepcopy(shared_model.module)
    expected_module.load_state_dict(state)
    pixels = random_pixels(loaded, 1, size=96)
    with torch.inference_mode():
        out = loaded.forward(pixels, loaded.encode_queries(["pneumonia", "pleural_effusion"]))
        logits, attention, _ = expected_module(pixels, 75)
    torch.testing.assert_close(out.scores, torch.softmax(logits, -1)[:, [PNEUMONIA, EFFUSION], 1])
    ws = (sum(attention) / 4).view(1, 75, 9, 36)[:, :, [0, 6, 7, 8]].mean(2)
    torch.testing.assert_close(
        out.maps["cross_attention"], ws.reshape(1, 75, 6, 6)[:, [PNEUMONIA, EFFUSION]]
    )


def test_corrupted_checkpoint_lists_the_offending_keys(shared_model, tiny_bert, tmp_path) -> None:
    state = dict(shared_model.module.state_dict())
    del state["pool.positional_embedding"]
    state["classifier.weight"] = torch.zeros(2, 256)  # a MedKLIP-shaped classifier
    path = save_official_checkpoint(
        state, tmp_path / "checkpoint_full_40.pth", container="model", prefix="module."
    )
    descriptions, aspects = _write_files(tmp_path)
    with pytest.raises(CheckpointError) as info:
        SPEC.build(
            checkpoint=str(path),
            text_encoder=str(tiny_bert),
            descriptions=str(descriptions),
            aspects=str(aspects),
        )
    message = str(info.value)
    assert "pool.positional_embedding" in message and "classifier.weight" in message
    assert "(2, 2304)" in message and "(2, 256)" in message


def test_missing_checkpoint_says_where_to_get_it(home) -> None:
    with pytest.raises(AssetError) as info:
        SPEC.build(variant="full_46")
    message = str(info.value)
    assert "checkpoint_full_46.pth" in message and "Google Drive" in message
    assert "mavl.checkpoint" in message and "XBENCH_MAVL_CHECKPOINT" in message


# ---- descriptions and aspects ----------------------------------------------------------------


def test_real_files_parse_into_75_entities_of_9_concepts() -> None:
    description_file = realdata("medklip-mavl", "mavl_observation_explanation.json")
    aspect_file = realdata("medklip-mavl", "mavl_gpt4_mimic.json")
    assert hashlib.sha256(description_file.read_bytes()).hexdigest() == DESCRIPTIONS_SHA256
    assert hashlib.sha256(aspect_file.read_bytes()).hexdigest() == ASPECTS_SHA256
    descriptions, aspects = read_descriptions(description_file), read_aspects(aspect_file)
    assert tuple(descriptions)[:75] == ENTITIES and tuple(descriptions)[75:] == ("covid19",)
    assert tuple(aspects)[:75] == ENTITIES and tuple(aspects)[75:] == ("covid19",)
    assert all(len(texts) == 8 for texts in aspects.values())
    concepts = {name: [descriptions[name], *aspects[name]] for name in ENTITIES}
    assert len(concepts) == 75 and {len(c) for c in concepts.values()} == {9}
    assert descriptions["pneumonia"].startswith("Pneumonia is an inflammatory condition")
    # concept 7 (shape) of pneumothorax, the example in the reference notes
    assert concepts["pneumothorax"][7] == (
        "shape: a clear, distinct line indicating the edge of the lung, which has collapsed or "
        "become compressed."
    )
    for name in ENTITIES:
        labels = [text.split(":")[0].strip() for text in aspects[name]]
        assert labels[:4] == ["border", "fluid", "location", "opacity"]
        assert labels[5:] == ["patterns", "shape", "texture"]


def test_downloads_are_checked_against_the_official_sha256(tmp_path, monkeypatch) -> None:
    real_descriptions = realdata("medklip-mavl", "mavl_observation_explanation.json")
    real_aspects = realdata("medklip-mavl", "mavl_gpt4_mimic.json")
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    for name in ("DESCRIPTIONS", "ASPECTS"):
        monkeypatch.delenv(f"XBENCH_MAVL_{name}", raising=False)
    # the real files stand in for the official raw URLs
    monkeypatch.setattr(model_module, "DESCRIPTIONS_URL", real_descriptions.as_uri())
    monkeypatch.setattr(model_module, "ASPECTS_URL", real_aspects.as_uri())
    assert tuple(model_module.load_descriptions(None, random=False))[:75] == ENTITIES
    assert tuple(model_module.load_aspects(None, random=False))[:75] == ENTITIES
    # the aspects URL serving the descriptions file is refused by its SHA-256
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "other-home"))
    monkeypatch.setattr(model_module, "ASPECTS_URL", real_descriptions.as_uri())
    with pytest.raises(AssetError, match="SHA-256"):
        model_module.load_aspects(None, random=False)


def test_malformed_files_name_the_problem(tmp_path) -> None:
    descriptions, aspects = _write_files(tmp_path, covid=False)
    data = json.loads(descriptions.read_text())
    del data["hernia"]
    descriptions.write_text(json.dumps(data))
    with pytest.raises(DataError, match="no description for 1 MAVL entities: hernia"):
        read_descriptions(descriptions)
    data = json.loads(aspects.read_text())
    data["mass"] = data["mass"][1:] + data["mass"][:1]  # border moved to the end
    aspects.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'mass': expected the 'border' aspect"):
        read_aspects(aspects)
    data["mass"] = data["mass"][:7]
    aspects.write_text(json.dumps(data))
    with pytest.raises(DataError, match="'mass' has 7 aspects"):
        read_aspects(aspects)


def test_without_covid19_entries_covid19_is_unsupported(tmp_path) -> None:
    descriptions, aspects = _write_files(tmp_path, covid=False)
    assert "covid19" not in read_descriptions(descriptions)
    assert "covid19" not in read_aspects(aspects)
