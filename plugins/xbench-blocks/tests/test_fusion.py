"""The shared pieces of the fusion models (xbench_blocks.fusion): the decoder stack's keys and
per-layer attention, the official init, the entity table, and EntityQueryModel on a toy network."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from xbench_blocks.fusion import (  # noqa: E402
    COVID19_ENTITY,
    MEDKLIP_ENTITIES,
    MEDKLIP_FINDINGS,
    EntityQueryModel,
    PreNormDecoder,
    init_normal_weights,
    write_tiny_text_encoder,
)

from xbench_core import FINDINGS, AssetError, UnsupportedFinding  # noqa: E402
from xbench_core.testing import encode_queries, save_official_checkpoint  # noqa: E402


def test_decoder_keys_and_per_layer_attention() -> None:
    torch.manual_seed(0)
    decoder = PreNormDecoder(8, 2, 16, 3).eval()
    keys = list(decoder.state_dict())
    assert keys[0] == "layers.0.self_attn.in_proj_weight"
    assert keys[-2:] == ["norm.weight", "norm.bias"]
    late = PreNormDecoder(8, 2, 16, 1, self_attn_late=True)
    assert list(late.state_dict())[0] == "layers.0.multihead_attn.in_proj_weight"
    queries, memory = torch.randn(5, 2, 8), torch.randn(7, 2, 8)
    with torch.no_grad():
        output, attention = decoder(queries, memory)
        expected = queries
        for layer, weights in zip(decoder.layers, attention):
            expected, layer_weights = layer(expected, memory)
            torch.testing.assert_close(weights, layer_weights)
    torch.testing.assert_close(output, decoder.norm(expected))
    assert len(attention) == 3 and tuple(attention[0].shape) == (2, 5, 7)
    # CARZero-style: no self-attention, no weights; KAD-style: the final norm shared
    shared = nn.LayerNorm(8)
    lean = PreNormDecoder(8, 2, 16, 2, self_attention=False, norm=shared)
    assert lean.norm is shared and lean(queries, memory, need_weights=False)[1] == []


def test_init_normal_weights() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 64), nn.MultiheadAttention(64, 4), nn.LayerNorm(64))
    bias, norm = module[0].bias.clone(), module[2].weight.clone()
    init_normal_weights(module)
    for weight in (module[0].weight, module[1].in_proj_weight, module[1].out_proj.weight):
        assert abs(float(weight.detach().std()) - 0.02) < 0.002
    assert torch.equal(module[0].bias, bias) and torch.equal(module[2].weight, norm)


def test_findings_table() -> None:
    assert set(MEDKLIP_FINDINGS) <= {f.id for f in FINDINGS}
    assert set(MEDKLIP_FINDINGS.values()) <= {*MEDKLIP_ENTITIES, COVID19_ENTITY}
    assert len(MEDKLIP_ENTITIES) == 75 and MEDKLIP_ENTITIES.index("pneumonia") == 20
    # the official ChestX-ray14 and CheXpert mappings, and MAVL's COVID configs
    official = {
        "infiltration": "infiltrate", "pleural_thickening": "thicken",
        "fibrosis": "tail_abnorm_obs", "enlarged_cardiomediastinum": "enlarge",
        "lung_opacity": "opacity", "pleural_effusion": "effusion", "pleural_other": "abnormality",
        "support_devices": "device", "nodule": "nodule", "mass": "mass", "covid19": "covid19",
    }  # fmt: skip
    assert {f: MEDKLIP_FINDINGS[f] for f in official} == official
    assert "tuberculosis" not in MEDKLIP_FINDINGS


class ToyNetwork(nn.Module):
    """conv 4x4 -> tokens; book -> queries; 2-layer decoder; classifier -> 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 4, stride=4)
        self.embed = nn.Linear(768, 8)
        self.decoder = PreNormDecoder(8, 2, 16, 2)
        self.classifier = nn.Linear(8, 2)
        self.register_buffer("toy_book", torch.zeros(0, 768), persistent=False)

    def forward(self, images, entities):
        features = self.backbone(images)
        memory = features.flatten(2).permute(2, 0, 1)
        queries = self.embed(self.toy_book[:entities]).unsqueeze(1).repeat(1, len(images), 1)
        output, attention = self.decoder(queries, memory)
        return self.classifier(output).transpose(0, 1), attention, tuple(features.shape[-2:])


class Toy(EntityQueryModel):
    name, label, book, backbone = "toy", "Toy", "toy_book", "backbone"

    def __init__(self, checkpoint, text_encoder, covid19=False):
        file = self._checkpoint_file(checkpoint, filename="toy.pth", hint="toy hint")
        self._build(ToyNetwork, file, text_encoder, covid19=covid19)

    def query_texts(self):
        return [f"{name} text" for name in self.entities]

    def select_maps(self, attention, rows, entities):
        return attention[-1].index_select(1, rows).float()


def test_entity_query_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XBENCH_TOY_CHECKPOINT", raising=False)
    bert = write_tiny_text_encoder(tmp_path / "bert", [*MEDKLIP_ENTITIES, "covid19", "text"])
    model = Toy("random", str(bert))
    assert model.random_weights and "covid19" not in model.queries
    assert tuple(model.module.toy_book.shape) == (75, 768)
    assert "toy_book" not in model.module.state_dict()
    with pytest.raises(UnsupportedFinding, match="Toy has no entity for covid19"):
        model.encode_queries(["pneumonia", "covid19"])
    pixels = torch.randn(2, 3, 16, 16)
    queries = encode_queries(model, ["pneumonia", "fibrosis"])  # as the engine does
    with torch.inference_mode():
        out = model.forward(pixels, queries)
        logits, attention, _ = model.module(pixels, 75)
    rows = [20, MEDKLIP_ENTITIES.index("tail_abnorm_obs")]
    assert queries.rows.tolist() == rows and queries.entities == 75
    torch.testing.assert_close(out.scores, logits.softmax(-1)[:, rows, 1])
    maps = attention[-1][:, rows].reshape(2, 2, 4, 4)
    torch.testing.assert_close(out.maps["cross_attention"], maps)
    difference = model.logits(pixels, queries)  # the engine's queries, with gradients
    difference.sum().backward()
    torch.testing.assert_close(torch.sigmoid(difference.detach()), out.scores)
    assert model.feature_layer().module is model.module.backbone
    # a checkpoint in the official container, and covid19 appended as a 76th entity
    state = {k: v + 1 for k, v in model.module.state_dict().items()}
    save_official_checkpoint(state, tmp_path / "toy.pth", container="model", prefix="module.")
    loaded = Toy(str(tmp_path / "toy.pth"), str(bert), covid19=True)
    assert all(torch.equal(v, state[k]) for k, v in loaded.module.state_dict().items())
    assert loaded.queries["covid19"] == "covid19"
    assert loaded.encode_queries(["covid19", "pneumonia"]).entities == 76
    with pytest.raises(AssetError, match="XBENCH_TOY_CHECKPOINT"):
        Toy(None, str(bert))
