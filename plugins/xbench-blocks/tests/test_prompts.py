"""Prompt pairs of CLIP-style models (xbench_blocks.prompts), on a toy model with known towers."""

from __future__ import annotations

import logging
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from xbench_blocks.prompts import (  # noqa: E402
    PROMPT_OPTIONS,
    PROMPT_PHRASES,
    PromptPairMixin,
    quiet_open_clip,
    strip_open_clip_schema,
)

from xbench_core import (  # noqa: E402
    FINDINGS,
    ConfigError,
    DataError,
    Geometry,
    Model,
    Phrase,
    UnsupportedFinding,
)
from xbench_core.testing import encode_queries  # noqa: E402


def text_embedding(prompt: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(4, generator=gen)


class Toy(PromptPairMixin, Model):
    """Text tower: a fixed random vector per prompt. Image tower: the three channels plus the
    first one again as a 4-D embedding per pixel, pooled by the mean."""

    name = "toy"
    input_size = 8
    mean = np.full((3, 1, 1), 0.5, np.float32)
    std = np.full((3, 1, 1), 0.25, np.float32)
    text_width = 4

    def __init__(self, **prompts):
        super().__init__(**prompts)
        self.module = torch.nn.Module()
        self.module.logit_scale = torch.nn.Parameter(torch.tensor(np.log(10.0)))
        self.texts = []

    def _encode_text(self, prompts):
        self.texts.append(list(prompts))
        return torch.stack([text_embedding(p) for p in prompts])

    def _image(self, pixels, dense):
        grid = torch.cat([pixels, pixels[:, :1]], dim=1)  # [B, 4, h, w]
        return grid.mean(dim=(2, 3)), grid if dense else None


def test_templates_default_ensemble_and_errors():
    toy = Toy()
    assert (toy.positive_templates, toy.negative_templates) == (("{finding}",), ("no {finding}",))
    toy = Toy(
        templates=["{finding}", "a chest x-ray showing {finding}"],
        negative_template="{finding} absent",
    )
    assert toy.positive_templates == ("{finding}", "a chest x-ray showing {finding}")
    assert toy.negative_templates == ("{finding} absent",)
    assert Toy(negative_templates="not {finding}").negative_templates == ("not {finding}",)
    with pytest.raises(ConfigError, match=r"toy\.negative_template: template 'absent' lacks"):
        Toy(negative_template="absent")
    with pytest.raises(ConfigError, match=r"toy\.templates: template 'x' lacks \{finding\}"):
        Toy(templates=["{finding}", "x"])


def test_queries_are_normalized_ensemble_means():
    toy = Toy(templates=["{finding}", "a chest x-ray showing {finding}"])
    with torch.inference_mode():
        q = toy.encode_queries(["rib_fracture", "pleural_effusion"])
    assert q.findings == ("rib_fracture", "pleural_effusion")
    assert q.positive_prompts[0] == ("rib fracture", "a chest x-ray showing rib fracture")
    assert q.negative_prompts == (("no rib fracture",), ("no pleural effusion",))
    # one text-tower call per side, all prompts of that side in one batch
    assert toy.texts[1] == ["no rib fracture", "no pleural effusion"]
    parts = F.normalize(torch.stack([text_embedding(p) for p in q.positive_prompts[0]]), dim=-1)
    torch.testing.assert_close(q.positive[0], F.normalize(parts.mean(dim=0), dim=0))
    assert not torch.allclose(q.positive[0], parts[0], atol=1e-3)
    torch.testing.assert_close(
        q.negative[1], F.normalize(text_embedding("no pleural effusion"), dim=0)
    )
    empty = toy.encode_queries([])
    assert empty.positive.shape == (0, 4) and empty.negative.shape == (0, 4)


def test_unsupported_finding_names_the_plugin():
    with pytest.raises(
        UnsupportedFinding, match="toy cannot express no_finding, other_lesion; supported: aortic"
    ):
        Toy().encode_queries(["mass", "no_finding", "other_lesion"])


def test_phrase_table_covers_the_vocabulary():
    ids = {f.id for f in FINDINGS}
    assert set(PROMPT_PHRASES) <= ids
    assert ids - set(PROMPT_PHRASES) == {"no_finding", "other_diseases", "other_lesion"}
    assert all(p == p.lower() and p.strip() == p for p in PROMPT_PHRASES.values())
    assert Toy().queries == PROMPT_PHRASES and Toy().queries is not PROMPT_PHRASES


def test_scores_maps_and_logits_by_hand():
    toy = Toy()
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    q = encode_queries(toy, ["pneumonia", "mass"])  # as the engine does
    with torch.inference_mode():
        out = toy.forward(pixels, q)
    grid = torch.cat([pixels, pixels[:, :1]], dim=1)
    image = F.normalize(grid.mean(dim=(2, 3)), dim=-1)
    s_pos, s_neg = 10 * image @ q.positive.T, 10 * image @ q.negative.T
    expected = torch.exp(s_pos) / (torch.exp(s_pos) + torch.exp(s_neg))
    torch.testing.assert_close(out.scores, expected)
    maps = torch.einsum("bdhw,fd->bfhw", F.normalize(grid, dim=1), q.positive)
    torch.testing.assert_close(out.maps["similarity"], maps)
    assert out.maps["similarity"].shape == (2, 2, 8, 8)
    # under bf16 autocast the similarities and the softmax stay in float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = toy.forward(pixels, q)
    assert half.scores.dtype == half.maps["similarity"].dtype == torch.float32
    torch.testing.assert_close(half.scores, out.scores, rtol=0, atol=0)
    # logits: differentiable with the engine's queries; the score is the sigmoid
    x = pixels.clone().requires_grad_(True)
    logits = toy.logits(x, q)
    logits[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(torch.sigmoid(logits.detach()), out.scores)
    assert toy.capabilities() == {"logits", "phrases"}


def test_preprocess_shortest_side_crop_and_normalization():
    toy = Toy()
    image = np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    pixels, geometry = toy.preprocess(image)
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32
    assert geometry == Geometry.shortest_side_crop((12, 20), 8, 8)
    assert torch.equal(pixels[0], pixels[2])
    gray = pixels[0] * 0.25 + 0.5
    assert float(gray.min()) >= 0.0 and float(gray.max()) <= 1.0  # bicubic overshoot clipped
    with pytest.raises(DataError, match=r"toy\.preprocess expects a gray H x W image"):
        toy.preprocess(np.zeros((4, 4, 3), np.float32))


def test_prompt_options_match_the_mixin_defaults():
    assert [o.name for o in PROMPT_OPTIONS] == [
        "positive_template",
        "negative_template",
        "templates",
        "negative_templates",
    ]
    assert [o.default for o in PROMPT_OPTIONS] == ["{finding}", "no {finding}", None, None]


def test_open_clip_helpers(caplog):
    assert strip_open_clip_schema("hf-hub:org/repo") == "org/repo"
    assert strip_open_clip_schema("local-dir:/x/y") == "/x/y"
    assert strip_open_clip_schema("/x/hf-hub:y") == "/x/hf-hub:y"
    log = logging.getLogger()  # open_clip logs through the root logger (`logging.warning`)
    with caplog.at_level(logging.WARNING):
        with quiet_open_clip():
            log.warning("No pretrained weights loaded for model 'RN50'.")
            log.warning("Local config loaded, but no CLIP weights found")
            log.warning("something else")
        log.warning("No pretrained weights loaded again")
    assert [r.getMessage() for r in caplog.records] == [
        "something else",
        "No pretrained weights loaded again",
    ]


def test_import_is_light():
    code = (
        "import sys, xbench_blocks.prompts; "
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_phrases_and_text_cache() -> None:
    """Phrases are encoded as their text (positive) and the finding's negative prompt; each text
    once per model (a cache shared with the finding queries)."""
    import torch
    from xbench_blocks.prompts import PromptPairMixin

    from xbench_core.model import Model

    class Toy(PromptPairMixin, Model):
        name = "toy"
        text_width = 4

        def __init__(self) -> None:
            super().__init__()
            self.module = torch.nn.Linear(1, 1)
            self.encoded: list[str] = []

        def _encode_text(self, prompts: list[str]) -> torch.Tensor:
            self.encoded += prompts
            return torch.stack([torch.tensor([len(p), p.count("e"), 1.0, ord(p[0])]) for p in prompts])

    toy = Toy()
    phrases = [Phrase("right effusion", "pleural_effusion"), Phrase("big heart", "cardiomegaly")]
    q = toy.encode_phrases(phrases)
    assert q.positive_prompts == (("right effusion",), ("big heart",))
    assert q.negative_prompts == (("no pleural effusion",), ("no cardiomegaly",))
    by_hand = torch.nn.functional.normalize(toy._encode_text(["big heart"]), dim=-1)[0]
    assert torch.allclose(q.positive[1], by_hand)
    toy.encoded.clear()
    again = toy.encode_phrases([phrases[1], Phrase("left effusion", "pleural_effusion")])
    assert toy.encoded == ["left effusion"]  # everything else came from the cache
    assert torch.equal(again.positive[0], q.positive[1]) and torch.equal(again.negative[1], q.negative[0])
    # the finding queries share the cache and give what they gave before
    assert torch.equal(toy.encode_queries(["cardiomegaly"]).negative[0], q.negative[1])
