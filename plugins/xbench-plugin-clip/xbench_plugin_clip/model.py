"""OpenAI CLIP wrapped for XBench: prompt-pair scores and patch-text similarity maps.

Official code followed:
- open_clip `create_model` / `CLIP.encode_text` / `VisionTransformer.forward` (mlfoundations/open_clip,
  src/open_clip/{factory,model,transformer,modified_resnet}.py, v3.3) for the towers;
- OpenAI's preprocessing (openai/CLIP clip/clip.py `_transform`, open_clip `image_transform_v2` with
  the OpenAI mean and std): shortest side to 224 with bicubic resampling, center crop 224;
- the CheXzero-style positive/negative prompt softmax (see ../shared/reference/models.md, section 1),
  shared with BiomedCLIP in `xbench_blocks.prompts` (queries, preprocessing, scores, maps, logits);
- for the RN50 map, the MaskCLIP reformulation of the attention pool (value and output projections
  at every position, the query/key path skipped).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from xbench_blocks.prompts import PromptPairMixin, load_open_clip_weights

from xbench_core import AssetError, ConfigError, DataError, FeatureLayer, Model

from .loading import JIT_EXTRAS, build_architecture, resolve_checkpoint

# OpenAI CLIP normalization (openai/CLIP clip/clip.py `_transform`; open_clip OPENAI_DATASET_MEAN/STD).
MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32).reshape(3, 1, 1)
STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32).reshape(3, 1, 1)


def _vit_tokens_to_grid(output: Any, grid: tuple[int, int], batch_first: bool) -> Any:
    """A residual block's output [B, 1 + gh*gw, W] -> [B, W, gh, gw] (class token dropped)."""
    tokens = output if batch_first else output.transpose(0, 1)
    tokens = tokens[:, 1:]
    b, n, width = tokens.shape
    return tokens.reshape(b, grid[0], grid[1], width).permute(0, 3, 1, 2)


def _identity(output: Any) -> Any:
    return output


class OpenAICLIP(PromptPairMixin, Model):
    """OpenAI CLIP (ViT-B/16 or RN50) on open_clip: score = softmax over a negative and a positive
    prompt; map = cosine similarity of each projected patch (RN50: MaskCLIP position) with the
    positive prompt."""

    name = "clip"
    mean, std = MEAN, STD

    def __init__(
        self,
        checkpoint: str | None = None,
        variant: str = "ViT-B-16",
        text_encoder: str | None = None,
        **prompts: Any,  # the PROMPT_OPTIONS: positive/negative template(s)
    ) -> None:
        from open_clip import SimpleTokenizer
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        super().__init__(**prompts)
        source = resolve_checkpoint(checkpoint, variant)
        module = build_architecture(variant, source.config_folder)
        if source.weights is not None:
            load_open_clip_weights(module, source.weights, drop=JIT_EXTRAS)
        self.module = module
        self.random_weights = source.weights is None
        self.checkpoint = source.weights
        self.variant = variant
        self.text_width = module.text_projection.shape[-1]

        visual = module.visual
        if isinstance(visual, VisionTransformer):
            self.tower = "vit"
            # open_clip then returns the ln_post-normalized tokens next to the pooled feature,
            # from the same single pass (VisionTransformer.forward / _pool).
            visual.output_tokens = True
            size = visual.image_size
        elif isinstance(visual, ModifiedResNet):
            self.tower = "resnet"
            size = visual.image_size
        else:
            raise ConfigError(
                f"clip: image tower {type(visual).__name__} is neither open_clip's "
                "VisionTransformer nor ModifiedResNet; this plugin supports OpenAI CLIP only"
            )
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        if size[0] != size[1]:
            raise ConfigError(f"clip: non-square input size {size} is not supported")
        self.input_size = int(size[0])

        bpe = None
        if text_encoder:
            bpe = Path(text_encoder).expanduser()
            if not bpe.is_file():
                raise AssetError(
                    f"clip.text_encoder is {text_encoder}, which is not a file; it must be the "
                    "CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz). Leave it unset to use the "
                    "copy shipped inside open_clip."
                )
        tokenizer_args = {"bpe_path": str(bpe)} if bpe else {}
        self.tokenizer = SimpleTokenizer(context_length=module.context_length, **tokenizer_args)

    # ---- towers ------------------------------------------------------------------------------
    def _encode_text(self, prompts: list[str]) -> Any:
        """CLIP's BPE tokens (padded to the context length) through the text tower: [N, D]."""
        return self.module.encode_text(self.tokenizer(prompts).to(self.device))

    # ---- image side --------------------------------------------------------------------------
    def _image(self, pixels: Any, dense: bool) -> tuple[Any, Any]:
        """One pass of the image tower: pooled embedding [B, D] and, if asked, the per-position
        embeddings in the joint space [B, D, gh, gw] (not normalized)."""
        visual = self.module.visual
        if self.tower == "vit":
            pooled, tokens = visual(pixels)  # tokens: ln_post(x)[:, 1:], [B, gh*gw, W]
            if not dense:
                return pooled, None
            projected = tokens @ visual.proj
            b, _, d = projected.shape
            gh, gw = visual.grid_size
            return pooled, projected.transpose(1, 2).reshape(b, d, gh, gw)
        x = visual.stem(pixels)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        pooled = visual.attnpool(x)
        if not dense:
            return pooled, None
        return pooled, self._maskclip(x)

    def _maskclip(self, features: Any) -> Any:
        """MaskCLIP map features of RN50: c_proj(v_proj(x + pos_emb[1:])) at every layer4 position.

        The attention pool's query/key path only decides how positions are mixed into the pooled
        token; applying its value and output projections per position puts each position in the
        joint space (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022).
        """
        pool = self.module.visual.attnpool
        b, c, h, w = features.shape
        positions = pool.positional_embedding[1:]
        if positions.shape[0] != h * w:
            raise DataError(
                f"clip RN50: layer4 grid {h}x{w} does not match the attention pool's "
                f"{positions.shape[0]} positions; the input must be {self.input_size} px"
            )
        tokens = features.flatten(2).transpose(1, 2) + positions.to(features.dtype)
        out = pool.c_proj(pool.v_proj(tokens))  # [B, h*w, D]
        return out.transpose(1, 2).reshape(b, -1, h, w)

    # ---- gradient explainers -----------------------------------------------------------------
    def feature_layer(self) -> FeatureLayer:
        """ViT: the first LayerNorm of the last residual block (tokens -> 14 x 14 grid); RN50: layer4 (7 x 7).

        Not the last block's output: the pooled embedding is the class token after that block, so
        the patch tokens it outputs have no path to the logits (their gradient is exactly zero and
        every CAM is blank). The input of the last block's attention does reach the class token;
        it is the layer pytorch-grad-cam's ViT recipe uses (`blocks[-1].norm1`).
        """
        visual = self.module.visual
        if self.tower == "vit":
            to_grid = partial(
                _vit_tokens_to_grid,
                grid=tuple(visual.grid_size),
                batch_first=bool(getattr(visual.transformer, "batch_first", True)),
            )
            return FeatureLayer(visual.transformer.resblocks[-1].ln_1, to_grid)
        return FeatureLayer(visual.layer4, _identity)
