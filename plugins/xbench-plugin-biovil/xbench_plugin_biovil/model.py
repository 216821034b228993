"""BioViL and BioViL-T wrapped for XBench: prompt-pair cosine scores and the official similarity map.

Followed: microsoft/hi-ml (b67c1d2), hi-ml-multimodal/src/health_multimodal/
- image/utils.py `get_image_inference`: BioViL resize 512 + center crop 480 (15 x 15 patches),
  BioViL-T resize 512 + center crop 448 (14 x 14); image/data/transforms.py
  `create_chest_xray_transform_for_inference`: Resize(512) (shortest side, PIL bilinear on the
  8-bit image), CenterCrop, ToTensor (no mean/std), grey copied to 3 channels; image/data/io.py
  `load_image` / `remap_to_uint8`: the pixel array min-max stretched to 0..255 and truncated to uint8;
- image/model/pretrained.py: the image weights `biovil_image_resnet50_proj_size_128.pt` (Hub
  microsoft/BiomedVLP-CXR-BERT-specialized, revision v1.1) and `biovil_t_image_model_proj_size_128.pt`
  (microsoft/BiomedVLP-BioViL-T, revision v1.0); text/utils.py: the text model of each
  (CXR-BERT-specialized v1.1 for BioViL, the BioViL-T repository's BERT v1.0 for BioViL-T);
- text/data/io.py `TextInput.tokenize_input_prompts`: trailing "!?." stripped, [CLS] ... [SEP],
  padded to the longest; text/inference_engine.py `get_embeddings_from_prompt`;
- vlp/inference_engine.py `ImageTextInferenceEngine`: the score of a prompt list is the cosine of
  the L2-normalized global image embedding with the normalized MEAN of the prompts' unnormalized
  embeddings (`get_similarity_score_from_raw_data`); the map is the cosine of each normalized
  projected patch embedding with the normalized prompt embedding, Gaussian-smoothed with sigma 1.5
  on the patch grid (`get_similarity_map_from_raw_data`), which XBench maps back to the original
  image through the Geometry (the official engine pads NaN outside the center crop; the core
  gives pixels the crop never covered the map's minimum);
- test_multimodal/vlp/test_zero_shot_classification.py: zero-shot classification compares the
  score of positive prompts ("Findings suggesting pneumonia", ...) with that of negative prompts
  ("No evidence of pneumonia", ...). XBench needs a probability: score = (2 + cos_pos - cos_neg) / 4,
  in [0, 1], above 0.5 exactly when the official rule says positive, ranked as cos_pos - cos_neg.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from xbench_blocks.prompts import PROMPT_PHRASES, check_templates, fill
from xbench_blocks.text import BERT_BASE

from xbench_core import (
    AssetError,
    CheckpointError,
    ConfigError,
    DataError,
    FeatureLayer,
    Geometry,
    Model,
    ModelOutput,
    Phrase,
    UnsupportedFinding,
)
from xbench_core.assets import resolve_asset
from xbench_core.checkpoints import load_checkpoint, load_state_dict_strict

from .network import BioViLNetwork, ImageModel, TextModel, initialize, smooth

RESIZE = 512  # image/utils.py TRANSFORM_RESIZE
IMAGE_ENV = "XBENCH_BIOVIL_CHECKPOINT"
TEXT_ENV = "XBENCH_BIOVIL_TEXT_ENCODER"
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# Keys of the released text weights that the embedding does not use: the masked-LM head, and the
# position ids that older transformers saved as a buffer.
TEXT_DROP_CONTAINS = ("cls.predictions.",)
TEXT_DROP = ("bert.embeddings.position_ids",)
RANDOM_SEED = 0

# CXR-BERT: BERT-base, uncased, its own 30522-token vocabulary, projection to 128.
CXR_BERT_SHAPE: dict[str, Any] = {"vocab_size": 30522, **BERT_BASE, "projection_size": 128}


@dataclass(frozen=True)
class Variant:
    """Where one variant's weights live and how its input is cut."""

    name: str
    crop: int
    multi_image: bool
    image_file: str
    image_repo: str
    image_revision: str
    text_repo: str
    text_revision: str


CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"
BIOVIL_T = "microsoft/BiomedVLP-BioViL-T"
VARIANTS: dict[str, Variant] = {
    "biovil": Variant("biovil", 480, False, "biovil_image_resnet50_proj_size_128.pt", CXR_BERT, "v1.1", CXR_BERT, "v1.1"),
    "biovil-t": Variant("biovil-t", 448, True, "biovil_t_image_model_proj_size_128.pt", BIOVIL_T, "v1.0", BIOVIL_T, "v1.0"),
}  # fmt: skip

# test_zero_shot_classification.py `_get_default_text_prompts_for_pneumonia`, as published.
PNEUMONIA_POSITIVE = (
    "Findings consistent with pneumonia",
    "Findings suggesting pneumonia",
    "This opacity can represent pneumonia",
    "Findings are most compatible with pneumonia",
)
PNEUMONIA_NEGATIVE = (
    "There is no pneumonia",
    "No evidence of pneumonia",
    "No evidence of acute pneumonia",
    "No signs of pneumonia",
)
# The same sentences as templates for the other findings (the two that only fit pneumonia, "This
# opacity can represent" and "acute", left out).
POSITIVE_TEMPLATES = (
    "Findings consistent with {finding}",
    "Findings suggesting {finding}",
    "Findings are most compatible with {finding}",
)
NEGATIVE_TEMPLATES = ("There is no {finding}", "No evidence of {finding}", "No signs of {finding}")


@dataclass(frozen=True)
class BioViLQueries:
    """Per column: L2-normalized positive and negative text embeddings [F, 128] (prompt lists
    averaged before normalization, as the official score does) and the prompts behind them."""

    findings: tuple[str, ...]
    positive: torch.Tensor
    negative: torch.Tensor
    positive_prompts: tuple[tuple[str, ...], ...]
    negative_prompts: tuple[tuple[str, ...], ...]


def remap_to_uint8(image: np.ndarray) -> np.ndarray:
    """`remap_to_uint8` of the official loader on XBench's [0, 1] image: min-max to 0..255 in float64,
    truncated to uint8. An 8-bit source (every value a multiple of 1/255, as JPEG and PNG decode) is
    first brought back to its integer levels, so the result equals the official one on the file."""
    array = np.asarray(image, dtype=np.float64)
    levels = np.round(array * 255.0)
    if np.all(np.abs(array * 255.0 - levels) < 1e-3):
        array = levels
    array = array - array.min()
    top = array.max()
    if top <= 0:  # a constant image: the official division by zero gives NaN; black here
        return np.zeros(array.shape, np.uint8)
    array /= top
    array *= 255
    return array.astype(np.uint8)


class BioViL(Model):
    """BioViL / BioViL-T: score from positive and negative prompts, map = smoothed patch-text cosine."""

    map_kind = "similarity"

    def __init__(
        self,
        variant: str = "biovil-t",
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        templates: Sequence[str] | None = None,
        negative_templates: Sequence[str] | None = None,
    ) -> None:
        from transformers import BertConfig, BertModel

        if variant not in VARIANTS:
            raise ConfigError(f"biovil.variant is {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.variant = VARIANTS[variant]
        self.random_weights = str(checkpoint or "").strip().lower() == "random"
        self.positive_templates = (
            check_templates(templates, "biovil.templates") if templates else None
        )
        self.negative_templates = (
            check_templates(negative_templates, "biovil.negative_templates")
            if negative_templates
            else None
        )
        self.queries = dict(PROMPT_PHRASES)
        # Files are found before anything is built, so that a missing one fails fast.
        image_path = None if self.random_weights else self._image_weights(checkpoint)
        with tempfile.TemporaryDirectory(prefix="xbench-biovil-") as scratch:
            text = self._text_files(text_encoder, Path(scratch))
            self.tokenizer = _tokenizer(
                text["vocab.txt"], text.get("tokenizer_config.json"), Path(scratch)
            )
            config_dict = _read_json(text["config.json"])
        projection = int(config_dict.get("projection_size", CXR_BERT_SHAPE["projection_size"]))
        config = BertConfig(**{k: v for k, v in config_dict.items() if k not in _NOT_BERT})
        if self.tokenizer.vocab_size != config.vocab_size:
            raise AssetError(
                f"BioViL text encoder: the vocabulary ({text['vocab.txt']}) has "
                f"{self.tokenizer.vocab_size} word-pieces, its config.json says {config.vocab_size}; "
                "pass the folder of the CXR-BERT files (config.json, vocab.txt, weights)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)  # random weights are the same on every build
            text_model = TextModel(BertModel(config, add_pooling_layer=False), projection)
            self.module = BioViLNetwork(ImageModel(self.variant.multi_image), text_model)
            initialize(self.module)
        if image_path is not None:
            state = load_checkpoint(image_path, strip_prefixes=("module.",))
            load_state_dict_strict(self.module.image, state, source=str(image_path))
        if "weights" in text:
            state = load_checkpoint(
                text["weights"], drop=TEXT_DROP, drop_contains=TEXT_DROP_CONTAINS
            )
            load_state_dict_strict(self.module.text, state, source=str(text["weights"]))
        self.module.eval()
        self.max_tokens = int(config.max_position_embeddings)
        self._text_cache: dict[str, torch.Tensor] = {}

    # ---- assets ------------------------------------------------------------------------------
    def _image_weights(self, checkpoint: str | None) -> Path:
        """The image weights: a file, a folder holding the variant's file, a Hub id, or the variant's
        repository at its pinned revision (`resolve_asset` does the search and the messages)."""
        v = self.variant
        return resolve_asset(
            f"{v.name} image weights", checkpoint, env=IMAGE_ENV, hub_repo=v.image_repo,
            filename=v.image_file, revision=v.image_revision, option="biovil.checkpoint",
            hint=f"{v.image_file} of the Hugging Face repository {v.image_repo} (MIT licence)",
        )  # fmt: skip

    def _text_files(self, text_encoder: str | None, scratch: Path) -> dict[str, Path]:
        """config.json, vocab.txt, tokenizer_config.json (optional) and, unless the checkpoint is
        random, the weights: a local folder, a Hub id, or the variant's repository."""
        v = self.variant
        given = text_encoder or os.environ.get(TEXT_ENV) or None
        if given is None and self.random_weights:
            from xbench_blocks.text import write_bert_folder

            write_bert_folder(scratch, **CXR_BERT_SHAPE)
            return {"vocab.txt": scratch / "vocab.txt", "config.json": scratch / "config.json"}
        if given and Path(given).expanduser().is_dir():
            folder = Path(given).expanduser()
            found = {
                n: folder / n
                for n in ("config.json", "vocab.txt", "tokenizer_config.json")
                if (folder / n).is_file()
            }
            weights = [folder / n for n in TEXT_WEIGHTS if (folder / n).is_file()]
            missing = [n for n in ("config.json", "vocab.txt") if n not in found]
            if not self.random_weights and not weights:
                missing.append(" or ".join(TEXT_WEIGHTS))
            if missing:
                raise AssetError(
                    f"biovil.text_encoder is the folder {folder}, which lacks {', '.join(missing)}; "
                    f"pass the folder of the {v.text_repo} files"
                )
            if not self.random_weights:
                found["weights"] = weights[0]
            return found
        wanted = ["config.json", "vocab.txt"] + (
            [] if self.random_weights else ["pytorch_model.bin"]
        )
        out: dict[str, Path] = {}
        for name in wanted:
            out["weights" if name.endswith(".bin") else name] = resolve_asset(
                f"{v.name} text encoder {name}", text_encoder, env=TEXT_ENV, hub_repo=v.text_repo,
                filename=name, revision=v.text_revision, option="biovil.text_encoder",
                hint=f"the files of the Hugging Face repository {v.text_repo}",
            )  # fmt: skip
        return out

    # ---- preprocessing -----------------------------------------------------------------------
    @property
    def crop(self) -> int:
        return self.variant.crop

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """8-bit levels (official loader), shortest side to 512 (PIL bilinear on the 8-bit image),
        center crop (448 BioViL-T, 480 BioViL), /255, grey copied to 3 channels."""
        from PIL import Image

        array = np.asarray(image)
        if array.ndim != 2:
            raise DataError(
                f"biovil.preprocess expects a gray H x W image, got shape {array.shape}"
            )
        geometry = Geometry.shortest_side_crop(array.shape, RESIZE, self.crop)
        rh, rw = _resized_size(array.shape)
        resized = Image.fromarray(remap_to_uint8(array), mode="L").resize((rw, rh), Image.Resampling.BILINEAR)
        top, left = int(-geometry.offset[0]), int(-geometry.offset[1])
        levels = np.asarray(resized)[top : top + self.crop, left : left + self.crop]
        pixels = torch.from_numpy(np.ascontiguousarray(levels)).to(torch.float32).div(255)
        return pixels.unsqueeze(0).expand(3, -1, -1).contiguous(), geometry

    # ---- text side ---------------------------------------------------------------------------
    def _prompts(self, finding: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        phrase = self.queries[finding]
        if finding == "pneumonia" and self.positive_templates is None:
            positive: tuple[str, ...] = PNEUMONIA_POSITIVE
        else:
            positive = tuple(
                fill(t, phrase) for t in (self.positive_templates or POSITIVE_TEMPLATES)
            )
        if finding == "pneumonia" and self.negative_templates is None:
            negative: tuple[str, ...] = PNEUMONIA_NEGATIVE
        else:
            negative = tuple(
                fill(t, phrase) for t in (self.negative_templates or NEGATIVE_TEMPLATES)
            )
        return positive, negative

    def encode_queries(self, findings: Sequence[str]) -> BioViLQueries:
        """The positive and negative prompt lists of these findings, embedded once."""
        unknown = [f for f in findings if f not in self.queries]
        if unknown:
            raise UnsupportedFinding(
                f"biovil cannot express {', '.join(unknown)}; supported: {', '.join(self.queries)}"
            )
        self._text_cache = {}  # a new run's text side: nothing stale from other weights
        pairs = [self._prompts(f) for f in findings]
        return self._queries(
            tuple(findings), tuple(p for p, _ in pairs), tuple(n for _, n in pairs)
        )

    def encode_phrases(self, phrases: Sequence[Phrase]) -> BioViLQueries:
        """Phrase grounding: the sentence is the positive prompt as it is (the official map's query),
        its finding's negative prompts the negative side; one column per phrase, cached by text."""
        unknown = sorted({p.finding for p in phrases if p.finding not in self.queries})
        if unknown:
            raise UnsupportedFinding(f"biovil cannot express {', '.join(unknown)}")
        negatives = tuple(self._prompts(p.finding)[1] for p in phrases)
        return self._queries(
            tuple(p.finding for p in phrases), tuple((p.text,) for p in phrases), negatives
        )

    def _queries(self, findings: tuple[str, ...], positive: Any, negative: Any) -> BioViLQueries:
        return BioViLQueries(
            findings, self._embed(positive), self._embed(negative), positive, negative
        )

    def _embed(self, groups: tuple[tuple[str, ...], ...]) -> torch.Tensor:
        """[N, 128]: per group, the normalized mean of its prompts' unnormalized embeddings."""
        if not groups:
            return torch.zeros(0, self.module.text.cls_projection_head.dense_to_output.out_features)
        new = list(dict.fromkeys(p for g in groups for p in g if p not in self._text_cache))
        if new:
            self._text_cache.update(zip(new, self._encode_text(new)))
        means = torch.stack(
            [torch.stack([self._text_cache[p] for p in g]).mean(dim=0) for g in groups]
        )
        return F.normalize(means, dim=-1)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Unnormalized projected [CLS] embeddings [N, 128] in float32, as `TextInput` tokenizes."""
        special = [t for t in self.tokenizer.all_special_tokens if t != self.tokenizer.mask_token]
        for prompt in prompts:
            if any(t in prompt for t in special):
                raise DataError(
                    f"the BioViL prompt {prompt!r} contains a special token ({', '.join(special)})"
                )
        tokens = self.tokenizer(
            [p.rstrip("!?.") for p in prompts], padding="longest", return_tensors="pt"
        )
        if tokens["input_ids"].shape[1] > self.max_tokens:
            raise DataError(
                f"a BioViL prompt has {tokens['input_ids'].shape[1]} tokens, more than the text "
                f"encoder's {self.max_tokens}; shorten it"
            )
        device = self.device
        out = self.module.text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        return out.float()

    # ---- image side, scores and maps ---------------------------------------------------------
    def _cosines(
        self, patches: torch.Tensor, queries: BioViLQueries
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.normalize(patches.float().mean(dim=(2, 3)), dim=-1)  # projected_global_embedding
        positive = queries.positive.to(image.device, torch.float32)
        negative = queries.negative.to(image.device, torch.float32)
        return image @ positive.T, image @ negative.T

    def forward(self, pixels: torch.Tensor, queries: BioViLQueries) -> ModelOutput:
        """Scores (2 + cos_pos - cos_neg) / 4 [B, F]; maps {"similarity": [B, F, gh, gw]}: the
        cosine of each patch with the positive text embedding, smoothed (sigma 1.5)."""
        patches = self.module.image(pixels)
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            cos_pos, cos_neg = self._cosines(patches, queries)
            local = F.normalize(patches.float(), dim=1)
            raw = torch.einsum(
                "bdhw,fd->bfhw", local, queries.positive.to(local.device, torch.float32)
            )
            maps = smooth(raw)
        return ModelOutput(
            scores=(2.0 + cos_pos - cos_neg) / 4.0,
            maps={"similarity": maps},
            extras={"cos_positive": cos_pos, "cos_negative": cos_neg},
        )

    def logits(self, pixels: torch.Tensor, queries: BioViLQueries) -> torch.Tensor:
        """Differentiable cos_pos - cos_neg [B, F] (the score is (2 + logits) / 4)."""
        patches = self.module.image(pixels)
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            cos_pos, cos_neg = self._cosines(patches, queries)
        return cos_pos - cos_neg

    def feature_layer(self) -> FeatureLayer:
        """ResNet-50's layer4: the patch grid itself [B, 2048, gh, gw]."""
        return FeatureLayer(self.module.image.encoder.encoder.layer4, lambda grid: grid)


def _resized_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """torchvision Resize(512) on a PIL image: the short side 512, the long side truncated."""
    h, w = shape
    return (RESIZE, int(RESIZE * w / h)) if h <= w else (int(RESIZE * h / w), RESIZE)


_NOT_BERT = {"model_type", "auto_map", "architectures", "transformers_version", "projection_size"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"cannot read {path}: {error}; pass the CXR-BERT config.json"
        ) from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; pass the CXR-BERT config.json")
    return data


def _tokenizer(vocab: Path, tokenizer_config: Path | None, scratch: Path) -> Any:
    """BertTokenizer on the vocabulary; lower-casing as the release's tokenizer_config.json says
    (CXR-BERT is uncased)."""
    from transformers import BertTokenizer

    lower = True
    if tokenizer_config is not None:
        lower = bool(_read_json(tokenizer_config).get("do_lower_case", True))
    folder = scratch / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_bytes(Path(vocab).read_bytes())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": lower, "tokenizer_class": "BertTokenizer"})
    )
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    words = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = words[:-1] if words and words[-1] == "" else words
    if "[CLS]" not in words or tokenizer.convert_tokens_to_ids("[CLS]") != words.index("[CLS]"):
        raise AssetError(
            f"the BioViL vocabulary {vocab} did not load (no [CLS] where the file has it)"
        )
    return tokenizer
