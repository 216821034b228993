"""BiomedCLIP wrapped for XBench: prompt-pair scores and patch-text similarity maps.

Official code followed:
- open_clip `CustomTextCLIP`, `TimmModel` and `HFTextEncoder` (mlfoundations/open_clip,
  src/open_clip/{model,timm_model,hf_model,tokenizer}.py, v3.3) with the released
  `open_clip_config.json` of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224;
- the released preprocessing (`preprocess_cfg`: OpenAI mean and std; open_clip's default inference
  transform: shortest side to 224, bicubic, center crop 224);
- the positive/negative prompt softmax and the patch-token map of ../shared/reference/models.md,
  section 2: tokens after `trunk.norm`, projected by `visual.head`, cosine with the prompt (the
  prompt pair, preprocessing, scores and maps are shared with CLIP in `xbench_blocks.prompts`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from xbench_blocks.prompts import PromptPairMixin, load_open_clip_weights

from xbench_core import ConfigError, FeatureLayer, Model

from .loading import POSITION_IDS, build, resolve_checkpoint, resolve_text


def _tokens_to_grid(output: Any, grid: tuple[int, int], prefix: int) -> Any:
    """A timm block's output [B, prefix + gh*gw, W] -> [B, W, gh, gw] (prefix tokens dropped)."""
    tokens = output[:, prefix:]
    b, _, width = tokens.shape
    return tokens.reshape(b, grid[0], grid[1], width).permute(0, 3, 1, 2)


class BiomedCLIP(PromptPairMixin, Model):
    """BiomedCLIP on open_clip: score = softmax over a negative and a positive prompt; map =
    cosine similarity of each projected ViT patch token with the positive prompt (14 x 14)."""

    name = "biomedclip"

    def __init__(
        self,
        checkpoint: str | None = None,
        text_encoder: str | None = None,
        **prompts: Any,  # the PROMPT_OPTIONS: positive/negative template(s)
    ) -> None:
        super().__init__(**prompts)
        source = resolve_checkpoint(checkpoint)
        text = resolve_text(text_encoder, source)
        module, tokenizer, config = build(source, text)
        if source.weights is not None:
            # a stale buffer of transformers < 4.31 in the released file (open_clip drops it too)
            stale = () if POSITION_IDS in module.state_dict() else (POSITION_IDS,)
            load_open_clip_weights(module, source.weights, drop=stale)
        self.module = module
        self.tokenizer = tokenizer
        self.random_weights = source.weights is None
        self.checkpoint = source.weights
        self.text_width = module.text.output_dim

        trunk = module.visual.trunk
        if not hasattr(trunk, "patch_embed") or not hasattr(trunk, "blocks"):
            raise ConfigError(
                f"biomedclip: image trunk {type(trunk).__name__} is not a timm ViT; this plugin "
                "supports BiomedCLIP's ViT-B/16 tower"
            )
        gh, gw = trunk.patch_embed.grid_size
        self.grid = (int(gh), int(gw))
        size = module.visual.image_size
        if size[0] != size[1]:
            raise ConfigError(f"biomedclip: non-square input size {size} is not supported")
        self.input_size = int(size[0])
        preprocess = config.get("preprocess_cfg", {})
        self.mean = np.asarray(preprocess.get("mean"), np.float32).reshape(3, 1, 1)
        self.std = np.asarray(preprocess.get("std"), np.float32).reshape(3, 1, 1)

    # ---- towers ------------------------------------------------------------------------------
    def _encode_text(self, prompts: list[str]) -> Any:
        """PubMedBERT tokens, padding columns trimmed, through the text tower: [N, D]."""
        return self.module.encode_text(self._trim(self.tokenizer(prompts)))

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

    # ---- gradient explainers -----------------------------------------------------------------
    def feature_layer(self) -> FeatureLayer:
        """The first LayerNorm of the last ViT block; tokens -> [B, 768, 14, 14] (class token dropped).

        Not the last block's output: the pooled embedding is the class token after that block, so
        its patch tokens have no path to the logits (zero gradient, blank CAMs); the input of the
        last block's attention does (pytorch-grad-cam's ViT recipe, `blocks[-1].norm1`).
        """
        trunk = self.module.visual.trunk
        to_grid = partial(_tokens_to_grid, grid=self.grid, prefix=int(trunk.num_prefix_tokens))
        return FeatureLayer(trunk.blocks[-1].norm1, to_grid)
