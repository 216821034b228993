"""The shared pre-norm decoder layer: official key names and order, the math against DETR's
formula, MAVL's late self-attention and CARZero's skipped one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from xbench_blocks.decoder import PreNormDecoderLayer  # noqa: E402

DETR_KEYS = [
    f"{module}.{name}"
    for module, names in [
        ("self_attn", ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]),
        ("multihead_attn", ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]),
        ("linear1", ["weight", "bias"]),
        ("linear2", ["weight", "bias"]),
        ("norm1", ["weight", "bias"]),
        ("norm2", ["weight", "bias"]),
        ("norm3", ["weight", "bias"]),
    ]
    for name in names
]


def test_keys_in_the_official_order() -> None:
    assert list(PreNormDecoderLayer(16, 4, 32).state_dict()) == DETR_KEYS
    late = list(PreNormDecoderLayer(16, 4, 32, self_attn_late=True).state_dict())
    # MAVL: norm1 and self_attn after linear2
    assert late == DETR_KEYS[4:14] + DETR_KEYS[:4] + DETR_KEYS[14:]


def _reference(layer, target, memory, self_attention=True):
    if self_attention:
        x = layer.norm1(target)
        target = target + layer.self_attn(x, x, x)[0]
    x = layer.norm2(target)
    attended, weights = layer.multihead_attn(x, memory, memory)
    target = target + attended
    x = layer.norm3(target)
    return target + layer.linear2(torch.relu(layer.linear1(x))), weights


@pytest.mark.parametrize("self_attention", [True, False])
def test_forward_matches_the_formula(self_attention) -> None:
    torch.manual_seed(0)
    layer = PreNormDecoderLayer(16, 4, 32, self_attention=self_attention).eval()
    target, memory = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    with torch.no_grad():
        out, weights = layer(target, memory)
        expected, expected_weights = _reference(layer, target, memory, self_attention)
        _, none = layer(target, memory, need_weights=False)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    assert tuple(weights.shape) == (2, 5, 7) and none is None
