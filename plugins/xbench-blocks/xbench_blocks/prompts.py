"""Prompt pairs for CLIP-style dual encoders: a finding is scored by "{finding}" against
"no {finding}".

Used by the CLIP plugin (xbench-plugin-clip, OpenAI CLIP) and the BiomedCLIP plugin
(xbench-plugin-biomedclip). Both follow the recipe of ../shared/reference/models.md, sections 1
and 2 (CheXzero's positive/negative prompt softmax):

- queries: each canonical finding becomes a lower-case phrase (`PROMPT_PHRASES`), put into a
  positive and a negative template; a list of templates per side is a prompt ensemble, whose
  text embedding is the mean of the L2-normalized embeddings, normalized again (openai/CLIP
  notebooks/Prompt_Engineering_for_ImageNet);
- score: softmax over the pair of scaled cosine similarities [s(neg), s(pos)], i.e.
  sigmoid(s(pos) - s(neg)); `logits` returns s(pos) - s(neg) for gradient explainers;
- map: cosine similarity of each projected position of the image tower with the positive prompt;
- preprocessing: open_clip's inference transform (shortest side, bicubic, center crop, mean/std)
  of the gray image repeated to three channels.

`PromptPairMixin` implements these on top of two plugin methods: `_image` (the image tower: the
pooled embedding and the per-position embeddings) and `_encode_text` (tokenizer and text tower).
Checkpoints, towers and feature layers stay in the plugins. The last section holds the bits of
open_clip plumbing both plugins need. Nothing heavy is imported at module level: plugins read
`PROMPT_OPTIONS` while they register, which `xbench list` runs.

Public (through `xbench_core`): `PROMPT_PHRASES`, `PROMPT_OPTIONS`, `PromptEmbeddings`,
`PromptPairMixin`, `quiet_open_clip`, `strip_open_clip_schema`, `open_clip_weights_in`,
`create_open_clip`, `load_open_clip_weights`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbench_core import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelOutput,
    Option,
    UnsupportedFinding,
)

# Canonical finding id -> lower-case phrase put into the templates. CLIP-style models have no fixed
# label set, so every finding that a phrase can state is supported. The three catch-all labels (no
# finding, other diseases, other lesion) state nothing a "{finding}" versus "no {finding}" pair can
# test, so they are absent: unsupported, never scored.
PROMPT_PHRASES: dict[str, str] = {
    "aortic_enlargement": "aortic enlargement",
    "atelectasis": "atelectasis",
    "calcification": "calcification",
    "cardiomegaly": "cardiomegaly",
    "clavicle_fracture": "clavicle fracture",
    "consolidation": "consolidation",
    "copd": "chronic obstructive pulmonary disease",
    "covid19": "covid-19",
    "diffuse_nodule": "diffuse nodules",
    "edema": "edema",
    "emphysema": "emphysema",
    "enlarged_cardiomediastinum": "enlarged cardiomediastinum",
    "enlarged_pa": "enlarged pulmonary artery",
    "fibrosis": "fibrosis",
    "fracture": "fracture",
    "ground_glass_opacity": "ground-glass opacity",
    "hernia": "hernia",
    "ild": "interstitial lung disease",
    "infiltration": "infiltration",
    "lung_cavity": "lung cavity",
    "lung_cyst": "lung cyst",
    "lung_lesion": "lung lesion",
    "lung_opacity": "lung opacity",
    "lung_tumor": "lung tumor",
    "mass": "mass",
    "mediastinal_shift": "mediastinal shift",
    "nodule": "nodule",
    "nodule_mass": "nodule or mass",
    "pleural_effusion": "pleural effusion",
    "pleural_other": "pleural abnormality",
    "pleural_thickening": "pleural thickening",
    "pneumonia": "pneumonia",
    "pneumothorax": "pneumothorax",
    "rib_fracture": "rib fracture",
    "support_devices": "support devices",
    "tuberculosis": "tuberculosis",
}

PLACEHOLDER = "{finding}"

# The prompt options of a prompt-pair model; they reach `PromptPairMixin.__init__`.
PROMPT_OPTIONS: tuple[Option, ...] = (
    Option(
        "positive_template",
        str,
        default="{finding}",
        help="prompt stating the finding; {finding} is replaced by the query phrase",
    ),
    Option(
        "negative_template",
        str,
        default="no {finding}",
        help="prompt denying the finding; {finding} is replaced by the query phrase",
    ),
    Option(
        "templates",
        list,
        help="prompt ensemble: positive templates whose normalized embeddings are averaged "
        "(replaces positive_template)",
    ),
    Option(
        "negative_templates",
        list,
        help="prompt ensemble for the negative side (replaces negative_template)",
    ),
)


def check_templates(templates: Sequence[str], option: str) -> tuple[str, ...]:
    """Validate the prompt templates of `option` (e.g. "clip.templates"): a non-empty list of
    strings, each holding `{finding}`."""
    if isinstance(templates, str):
        templates = [templates]
    out = tuple(str(t) for t in templates)
    if not out:
        raise ConfigError(f"{option} is empty; give at least one template with {PLACEHOLDER}")
    for template in out:
        if PLACEHOLDER not in template:
            raise ConfigError(
                f"{option}: template {template!r} lacks {PLACEHOLDER}, so every finding "
                f"would get the same prompt; write it like 'no {PLACEHOLDER}'"
            )
    return out


def fill(template: str, phrase: str) -> str:
    """The prompt of one template for one phrase (plain replacement: other braces stay as they are)."""
    return template.replace(PLACEHOLDER, phrase)


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text side of one run: per finding, the L2-normalized positive and negative prompt
    embeddings ([F, D] each, ensembles already averaged) on the model's device."""

    findings: tuple[str, ...]
    positive: Any
    negative: Any
    positive_prompts: tuple[tuple[str, ...], ...]
    negative_prompts: tuple[tuple[str, ...], ...]


class PromptPairMixin:
    """Queries, preprocessing, scores, maps and logits of a prompt-pair model; put it before
    `xbench_core.Model`: `class OpenAICLIP(PromptPairMixin, Model)`.

    The plugin sets `name` (its model name, used in option names and messages), calls
    `PromptPairMixin.__init__` with the `PROMPT_OPTIONS` values, and sets `module` (with a
    `logit_scale`), `input_size`, `mean` and `std` (float32 [3, 1, 1]) and `text_width` (the text
    embedding size); it implements `_image` and `_encode_text`.
    """

    name: str = ""
    map_kind = "similarity"
    module: Any
    device: Any
    input_size: int
    mean: Any
    std: Any
    text_width: int

    def __init__(
        self,
        positive_template: str = "{finding}",
        negative_template: str = "no {finding}",
        templates: Sequence[str] | None = None,
        negative_templates: Sequence[str] | None = None,
    ) -> None:
        name = self.name
        self.positive_templates = (
            check_templates(templates, f"{name}.templates")
            if templates
            else check_templates([positive_template], f"{name}.positive_template")
        )
        self.negative_templates = (
            check_templates(negative_templates, f"{name}.negative_templates")
            if negative_templates
            else check_templates([negative_template], f"{name}.negative_template")
        )
        self.queries: Mapping[str, Any] = dict(PROMPT_PHRASES)

    # ---- what the plugin provides ------------------------------------------------------------
    def _image(self, pixels: Any, dense: bool) -> tuple[Any, Any]:
        """One pass of the image tower: the pooled embedding [B, D] and, if `dense`, the
        per-position embeddings in the joint space [B, D, gh, gw] (not normalized), else None."""
        raise NotImplementedError

    def _encode_text(self, prompts: list[str]) -> Any:
        """Tokenize the prompts and run the text tower: [N, D] embeddings (not normalized)."""
        raise NotImplementedError

    # ---- preprocessing -----------------------------------------------------------------------
    def preprocess(self, image: Any) -> tuple[Any, Any]:
        """Gray H x W [0, 1] -> 3 x S x S, S = input_size: shortest side to S (bicubic), center
        crop, normalized with mean and std."""
        import numpy as np
        import torch

        from xbench_core.geometry import shortest_side_crop

        array = np.asarray(image, dtype=np.float32)
        if array.ndim != 2:
            raise DataError(
                f"{self.name}.preprocess expects a gray H x W image, got shape {array.shape}"
            )
        pixels, geometry = shortest_side_crop(array, self.input_size, self.input_size, "bicubic")
        # The official pipeline resizes an 8-bit RGB PIL image, whose bicubic overshoot is clipped.
        np.clip(pixels, 0.0, 1.0, out=pixels)
        rgb = (np.broadcast_to(pixels, (3, *pixels.shape)) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)), geometry

    # ---- text side ---------------------------------------------------------------------------
    def encode_queries(self, findings: Sequence[str]) -> PromptEmbeddings:
        """Embed the positive and negative prompts of these findings once (ensembles averaged)."""
        findings = tuple(findings)
        self._text_cache: dict[str, Any] = {}  # a new run's text side: nothing stale from other weights
        unknown = [f for f in findings if f not in self.queries]
        if unknown:
            raise UnsupportedFinding(
                f"{self.name} cannot express {', '.join(unknown)}; supported: "
                f"{', '.join(self.queries)}"
            )
        positive_prompts = tuple(
            tuple(fill(t, self.queries[f]) for t in self.positive_templates) for f in findings
        )
        negative_prompts = tuple(
            tuple(fill(t, self.queries[f]) for t in self.negative_templates) for f in findings
        )
        return PromptEmbeddings(
            findings=findings,
            positive=self._embed(positive_prompts, len(self.positive_templates)),
            negative=self._embed(negative_prompts, len(self.negative_templates)),
            positive_prompts=positive_prompts,
            negative_prompts=negative_prompts,
        )

    def encode_phrases(self, phrases: Sequence[Any]) -> PromptEmbeddings:
        """Phrase grounding: each phrase's text is its positive prompt as it is (a sentence, no
        template), its finding's negative prompt(s) the negative side; one column per phrase."""
        unknown = sorted({p.finding for p in phrases if p.finding not in self.queries})
        if unknown:
            raise UnsupportedFinding(f"{self.name} cannot express {', '.join(unknown)}")
        positive_prompts = tuple((p.text,) for p in phrases)
        negative_prompts = tuple(
            tuple(fill(t, self.queries[p.finding]) for t in self.negative_templates) for p in phrases
        )
        return PromptEmbeddings(
            findings=tuple(p.finding for p in phrases),
            positive=self._embed(positive_prompts, 1),
            negative=self._embed(negative_prompts, len(self.negative_templates)),
            positive_prompts=positive_prompts,
            negative_prompts=negative_prompts,
        )

    def _embed(self, prompts: tuple[tuple[str, ...], ...], per: int) -> Any:
        """[F, D]: per finding, the normalized mean of its `per` normalized prompt embeddings.

        Normalized embeddings are cached by text (phrases are encoded batch after batch, and a
        negative prompt repeats for every phrase of its finding)."""
        import torch
        import torch.nn.functional as F

        if not prompts:
            return torch.zeros(0, self.text_width, device=self.device)
        cache: dict[str, Any] = self.__dict__.setdefault("_text_cache", {})
        flat = [p for group in prompts for p in group]
        new = list(dict.fromkeys(p for p in flat if p not in cache))
        if new:
            with torch.no_grad():
                cache.update(zip(new, F.normalize(self._encode_text(new).float(), dim=-1)))
        emb = torch.stack([cache[p] for p in flat])
        return F.normalize(emb.reshape(len(prompts), per, -1).mean(dim=1), dim=-1)

    # ---- scores and maps ---------------------------------------------------------------------
    def _similarities(self, pooled: Any, queries: PromptEmbeddings) -> tuple[Any, Any, Any]:
        import torch
        import torch.nn.functional as F

        image = F.normalize(pooled.float(), dim=-1)
        positive = queries.positive.to(image.device, torch.float32)
        negative = queries.negative.to(image.device, torch.float32)
        scale = self.module.logit_scale.float().exp()
        return scale * image @ positive.T, scale * image @ negative.T, positive

    def forward(self, pixels: Any, queries: PromptEmbeddings) -> ModelOutput:
        """Scores [B, F] = softmax([s(neg), s(pos)])[1]; maps {"similarity": [B, F, gh, gw]}."""
        import torch
        import torch.nn.functional as F

        pooled, dense = self._image(pixels, dense=True)
        # Similarities and the softmax in float32 even under bf16/fp16 autocast.
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            s_pos, s_neg, positive = self._similarities(pooled, queries)
            scores = torch.softmax(torch.stack([s_neg, s_pos], dim=-1), dim=-1)[..., 1]
            patches = F.normalize(dense.float(), dim=1)
            maps = torch.einsum("bdhw,fd->bfhw", patches, positive)
        return ModelOutput(scores=scores, maps={"similarity": maps})

    def logits(self, pixels: Any, queries: PromptEmbeddings) -> Any:
        """Differentiable s(pos) - s(neg) [B, F]: the score is its sigmoid."""
        import torch

        pooled, _ = self._image(pixels, dense=False)
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            s_pos, s_neg, _ = self._similarities(pooled, queries)
            return s_pos - s_neg


# ---- open_clip plumbing shared by the plugins that build their model with open_clip ------------
def strip_open_clip_schema(value: str) -> str:
    """A checkpoint value without open_clip's model-name schema (`hf-hub:`, `local-dir:`), which
    the plugins accept as a convenience."""
    for prefix in ("hf-hub:", "local-dir:"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


class _DropMessages(logging.Filter):
    """Drops open_clip's warnings that a model was built without weights (ours come afterwards)."""

    PREFIXES = ("No pretrained weights loaded", "Local config loaded, but no CLIP weights")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Around `open_clip.create_model(..., load_weights=False)`: its warnings that no weights were
    loaded are dropped (the plugin loads them afterwards); every other message passes."""
    root = logging.getLogger()
    drop = _DropMessages()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def open_clip_weights_in(folder: Path, names: Sequence[str], label: str, option: str) -> Path:
    """The weights file of a checkpoint folder: the first of `names` in it, else its only
    *.safetensors/.bin/.pt/.pth file; otherwise a CheckpointError that lists the folder."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    suffixes = (".safetensors", ".bin", ".pt", ".pth")
    found = sorted(p for p in folder.iterdir() if p.suffix in suffixes and p.is_file())
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(
        f"{label} checkpoint folder {folder} holds no single weights file (looked for "
        f"{', '.join(names)} or one *.safetensors/*.bin/*.pt/*.pth file); it holds {listing}. "
        f"Pass the weights file itself with --set {option}=FILE."
    )


def create_open_clip(name: str, kind: str, label: str, hint: str, **options: Any) -> Any:
    """`open_clip.create_model(name, **options)` on the CPU in eval mode, no weights loaded: random
    weights drawn with seed 0 (the caller's RNG untouched), no warnings about the missing weights.
    A failure, or a model that is not an `open_clip.<kind>` (`label` in words), is a CheckpointError
    ending in `hint`."""
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]), quiet_open_clip():
        torch.manual_seed(0)
        try:
            model = open_clip.create_model(
                name,
                load_weights=False,
                pretrained_image=False,
                pretrained_text=False,
                device="cpu",
                **options,
            )
        except (ValueError, RuntimeError, OSError, KeyError) as error:
            raise CheckpointError(
                f"open_clip could not build {label} from {name}: {error}. {hint}"
            ) from error
    if not isinstance(model, getattr(open_clip, kind)):
        raise CheckpointError(f"{name} describes a {type(model).__name__}, not {label}. {hint}")
    return model.eval()


def load_open_clip_weights(module: Any, weights: Path, drop: Sequence[str] = ()) -> None:
    """Read an open_clip state_dict with the core's safe reader ('module.' stripped, the keys in
    `drop` left out) and load it strictly (key diff on mismatch); a 1-element logit_scale fits a
    scalar one, as open_clip's load_checkpoint allows."""
    from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

    state_dict = load_checkpoint(weights, strip_prefixes=("module.",), drop=drop)
    scale = state_dict.get("logit_scale")
    if scale is not None and scale.ndim != module.logit_scale.ndim and scale.numel() == 1:
        state_dict["logit_scale"] = scale.reshape(module.logit_scale.shape)
    load_state_dict_strict(module, state_dict, source=str(weights))
