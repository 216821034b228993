"""BiomedCLIP wrapped for XBench: prompt-pair scores and patch-text similarity maps.

Official code followed:
- open_clip `CustomTextCLIP`, `TimmModel` and `HFTextEncoder` (mlfoundations/open_clip,
  src/open_clip/{model,timm_model,hf_model,tokenizer}.py, v3.3) with the released
  `open_clip_config.json` of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224;
- the released preprocessing (`preprocess_cfg`: OpenAI mean and std; open_clip's default inference
  transform: shortest side to 224, bicubic, center crop 224);
- the positive/negative prompt softmax and the patch-token map of ../shared/reference/models.md,
  section 2: tokens after `trunk.norm`, projected by `visual.head`, cosine with the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from xbench_core import (
    ConfigError,
    DataError,
    FeatureLayer,
    Geometry,
    Model,
    ModelOutput,
    UnsupportedFinding,
    shortest_side_crop,
)

from .loading import build, load_weights, resolve_checkpoint, resolve_text
from .prompts import QUERIES, PromptEmbeddings, check_templates, fill


def _tokens_to_grid(output: Any, grid: tuple[int, int], prefix: int) -> Any:
    """A timm block's output [B, prefix + gh*gw, W] -> [B, W, gh, gw] (prefix tokens dropped)."""
    tokens = output[:, prefix:]
    b, _, width = tokens.shape
    return tokens.reshape(b, grid[0], grid[1], width).permute(0, 3, 1, 2)


def _plain(tensor: Any) -> Any:
    # Queries are encoded once under torch.inference_mode; autograd cannot save such tensors for
    # the backward pass of a gradient explainer, so they are copied into ordinary ones first.
    return tensor.clone() if tensor.is_inference() else tensor


class BiomedCLIP(Model):
    """BiomedCLIP on open_clip: score = softmax over a negative and a positive prompt; map =
    cosine similarity of each projected ViT patch token with the positive prompt (14 x 14)."""

    map_kind = "similarity"

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        positive_template: str = "{finding}",
        negative_template: str = "no {finding}",
        templates: Sequence[str] | None = None,
        negative_templates: Sequence[str] | None = None,
    ) -> None:
        self.positive_templates = (
            check_templates(templates, "templates")
            if templates
            else check_templates([positive_template], "positive_template")
        )
        self.negative_templates = (
            check_templates(negative_templates, "negative_templates")
            if negative_templates
            else check_templates([negative_template], "negative_template")
        )
        source = resolve_checkpoint(checkpoint)
        text = resolve_text(text_encoder, source)
        module, tokenizer, config = build(source, text)
        if source.weights is not None:
            load_weights(module, source.weights)
        self.module = module
        self.tokenizer = tokenizer
        self.random_weights = source.weights is None
        self.checkpoint = source.weights
        self.queries = dict(QUERIES)

        trunk = module.visual.trunk
        if not hasattr(trunk, "patch_embed") or not hasattr(trunk, "blocks"):
            raise ConfigError(
                f"biomedclip: image trunk {type(trunk).__name__} is not a timm ViT; this plugin "
                "supports BiomedCLIP's ViT-B/16 tower"
            )
        self.grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        size = module.visual.image_size
        if size[0] != size[1]:
            raise ConfigError(f"biomedclip: non-square input size {size} is not supported")
        self.input_size = int(size[0])
        preprocess = config.get("preprocess_cfg", {})
        self.mean = np.asarray(preprocess.get("mean"), np.float32).reshape(3, 1, 1)
        self.std = np.asarray(preprocess.get("std"), np.float32).reshape(3, 1, 1)

    # ---- preprocessing -----------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        """Gray H x W [0, 1] -> 3 x 224 x 224 (shortest side 224 bicubic, center crop, OpenAI norm)."""
        import torch

        array = np.asarray(image, dtype=np.float32)
        if array.ndim != 2:
            raise DataError(
                f"biomedclip.preprocess expects a gray H x W image, got shape {array.shape}"
            )
        pixels, geometry = shortest_side_crop(array, self.input_size, self.input_size, "bicubic")
        # The official pipeline resizes an 8-bit RGB PIL image, whose bicubic overshoot is clipped.
        np.clip(pixels, 0.0, 1.0, out=pixels)
        rgb = (np.broadcast_to(pixels, (3, *pixels.shape)) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)), geometry

    # ---- text side ---------------------------------------------------------------------------
    def encode_queries(self, findings: Sequence[str]) -> PromptEmbeddings:
        """Embed the positive and negative prompts of these findings once (ensembles averaged)."""
        import torch
        import torch.nn.functional as F

        findings = tuple(findings)
        unknown = [f for f in findings if f not in self.queries]
        if unknown:
            raise UnsupportedFinding(
                f"biomedclip cannot express {', '.join(unknown)}; supported: "
                f"{', '.join(self.queries)}"
            )
        positive_prompts = tuple(
            tuple(fill(t, self.queries[f]) for t in self.positive_templates) for f in findings
        )
        negative_prompts = tuple(
            tuple(fill(t, self.queries[f]) for t in self.negative_templates) for f in findings
        )
        width = self.module.text.output_dim
        device = self.device

        def embed(prompts: tuple[tuple[str, ...], ...], per: int) -> Any:
            if not prompts:
                return torch.zeros(0, width, device=device)
            tokens = self._trim(self.tokenizer([p for group in prompts for p in group]))
            with torch.no_grad():
                emb = F.normalize(self.module.encode_text(tokens).float(), dim=-1)
            # Prompt ensembling as in CLIP: mean of the normalized embeddings, normalized again.
            return F.normalize(emb.reshape(len(prompts), per, -1).mean(dim=1), dim=-1)

        return PromptEmbeddings(
            findings=findings,
            positive=embed(positive_prompts, len(self.positive_templates)),
            negative=embed(negative_prompts, len(self.negative_templates)),
            positive_prompts=positive_prompts,
            negative_prompts=negative_prompts,
        )

    def _trim(self, tokens: Any) -> Any:
        """Drop the padding columns that every prompt has (the tokenizer pads to 256).

        open_clip's HFTextEncoder masks pad tokens out of attention (attention_mask = ids != pad)
        and pools the [CLS] token, and BERT's positions do not depend on the length, so the
        embeddings are those of the padded batch (checked in the tests); the text tower then
        runs on a few tokens instead of 256.
        """
        pad = self.module.text.config.pad_token_id
        used = (tokens != pad).any(dim=0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 1
        return tokens[:, :keep].to(self.device)

    # ---- image side --------------------------------------------------------------------------
    def _image(self, pixels: Any, dense: bool) -> tuple[Any, Any]:
        """One pass of the image tower: pooled embedding [B, D] and, if asked, the projected patch
        tokens [B, D, gh, gw] (not normalized)."""
        visual = self.module.visual
        trunk = visual.trunk
        tokens = trunk.forward_features(pixels)  # [B, 1 + gh*gw, 768], after trunk.norm
        # open_clip TimmModel.forward: trunk head (class-token pool) then the projection head.
        pooled = visual.head(trunk.forward_head(tokens))
        if not dense:
            return pooled, None
        patches = visual.head(tokens[:, trunk.num_prefix_tokens :])  # [B, gh*gw, D]
        b, _, d = patches.shape
        return pooled, patches.transpose(1, 2).reshape(b, d, *self.grid)

    def _similarities(self, pooled: Any, queries: PromptEmbeddings) -> tuple[Any, Any, Any]:
        import torch
        import torch.nn.functional as F

        image = F.normalize(pooled.float(), dim=-1)
        positive = _plain(queries.positive).to(image.device, torch.float32)
        negative = _plain(queries.negative).to(image.device, torch.float32)
        scale = self.module.logit_scale.float().exp()
        return scale * image @ positive.T, scale * image @ negative.T, positive

    def forward(self, pixels: Any, queries: PromptEmbeddings) -> ModelOutput:
        """Scores [B, F] = softmax([s(neg), s(pos)])[1]; maps {"similarity": [B, F, 14, 14]}."""
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

    # ---- gradient explainers -----------------------------------------------------------------
    def logits(self, pixels: Any, queries: PromptEmbeddings) -> Any:
        """Differentiable s(pos) - s(neg) [B, F]: the score is its sigmoid."""
        import torch

        pooled, _ = self._image(pixels, dense=False)
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            s_pos, s_neg, _ = self._similarities(pooled, queries)
            return s_pos - s_neg

    def feature_layer(self) -> FeatureLayer:
        """The last ViT block; tokens -> [B, 768, 14, 14] (class token dropped)."""
        trunk = self.module.visual.trunk
        to_grid = partial(_tokens_to_grid, grid=self.grid, prefix=int(trunk.num_prefix_tokens))
        return FeatureLayer(trunk.blocks[-1], to_grid)
