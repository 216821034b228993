"""Decoder LVLMs (Qwen2.5-VL, Gemma 3 / MedGemma) wrapped for XBench: yes/no scores, maps on the
image-token grid.

The score follows MedFocus's direct-answer mode (gzxiong/medfocus: `data/*.py` questions,
`configs/datasets.yaml` suffixes, `lvlm/adapters.py` prompts built with the processor's chat
template): per finding the user turn holds the image and "Is there evidence of {finding} in the
image? Answer directly with yes or no without any explanation."; the score is
P(yes) / (P(yes) + P(no)) at the first answer token, i.e. sigmoid(logit_yes - logit_no) (the
softmax's normalizer cancels), with the spellings "Yes"/"yes" and "No"/"no" pooled.

Images follow MedFocus's `resize_pad` (longest side to `image_size`, bicubic, zero padding to a
centered square), then the model's own processor geometry: Qwen2.5-VL's `smart_resize` of that
square (multiples of 28 = 14-px patches merged 2 x 2), Gemma 3's squash to the vision tower's square
(896 for the released models, 64 x 64 SigLIP patches average-pooled 4 x 4 to 16 x 16 tokens). Both
steps are axis-aligned affine maps, so the Geometry (their composition) is exact.

Batching over findings: one image-tower pass per image; the tokens every question shares (system
turn, image, the question's common start) run once per image through the language model, and
their keys and values serve the image's F question suffixes (right-padded: padding follows every
real token, so no real token attends to it). Option `shared_prefix: false` runs every sequence in
full instead (same scores and maps; tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from xbench_blocks.prompts import PROMPT_PHRASES, check_templates, fill

from xbench_core import ConfigError, FeatureLayer, Geometry, Model, ModelOutput
from xbench_core.geometry import resize

from . import QUESTION
from .loading import build, choose_dtype, resolve_model

YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")
MAP_KINDS = ("cross_attention", "attention_mean", "rollout")


@dataclass
class Queries:
    """The token sequences of the findings (right-padded) and where their image tokens sit."""

    input_ids: Any  # [F, L] long
    lengths: Any  # [F] long: the answer is predicted at lengths - 1
    image_positions: Any  # [N] long: the same run of image tokens in every sequence
    answer_ids: Any  # [Y + N'] long: the yes spellings' first tokens, then the no spellings'
    yes_count: int
    prefix: int = 0  # tokens every sequence shares (the image among them), run once per image; 0: none
    positions: Any = None  # Qwen2.5-VL: the 3-D rope positions [3, F, L] (get_rope_index)


def letterbox_size(original: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """MedFocus `resize_pad`: (new_h, new_w, top, left) with the longest side at `side`."""
    h, w = original
    scale = side / float(max(h, w))
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return nh, nw, (side - nh) // 2, (side - nw) // 2


def patchify(pixels: Any, patch: int, merge: int, temporal: int) -> Any:
    """[B, C, H, W] -> Qwen2-VL's flattened patches [B * gh * gw, C * temporal * patch * patch] in the
    image processor's order: 2 x 2 merge groups contiguous, the still image repeated `temporal` times."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels.unsqueeze(1).expand(b, temporal, c, h, w)
    x = x.reshape(b, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # b, gh/m, gw/m, m, m, c, t, p, p
    return x.reshape(b * gh * gw, c * temporal * patch * patch)


def _tokens_to_grid(tokens: Any, grid: tuple[int, int]) -> Any:
    """Image tokens [B, N, D] (row-major over the grid) -> [B, D, gh, gw]."""
    b, _, d = tokens.shape
    return tokens.reshape(b, grid[0], grid[1], d).permute(0, 3, 1, 2)


def _module(hf_model: Any) -> Any:
    """One nn.Module holding the LVLM and the feature-layer tap (what the engine places and casts)."""
    import torch

    class LVLMModule(torch.nn.Module):
        def __init__(self, lvlm: Any) -> None:
            super().__init__()
            self.lvlm = lvlm
            # The image tokens as the language model receives them pass through this identity, the
            # layer the core's gradient explainers hook (no parameters: the state_dict is the model's).
            self.image_tokens = torch.nn.Identity()

    return LVLMModule(hf_model).eval()


class LVLM(Model):
    """A decoder LVLM asked one yes/no question per finding; maps from its answer token's attention."""

    name = "lvlm"
    map_kind = "cross_attention"

    def __init__(
        self,
        model: str | None = None,
        checkpoint: str | None = None,
        image_size: int = 224,
        question: str = QUESTION,
        dtype: str = "auto",
        sequences: int = 16,
        shared_prefix: bool = True,
    ) -> None:
        random_weights = checkpoint is not None and checkpoint.strip().lower() == "random"
        if checkpoint is not None and not random_weights:
            raise ConfigError(
                f"lvlm.checkpoint must be 'random' or unset (the weights come with lvlm.model), got {checkpoint!r}"
            )
        (question,) = check_templates([question], "lvlm.question")
        folder = resolve_model(model, random_weights)
        hf, processor, family = build(folder, random_weights, choose_dtype(dtype))
        self.module = _module(hf)
        self.processor, self.family, self.folder = processor, family, folder
        self.random_weights = random_weights
        self.image_size, self.question, self.sequences = int(image_size), question, int(sequences)
        self.shared_prefix = bool(shared_prefix)
        self.queries = dict(PROMPT_PHRASES)
        config = hf.config
        self.image_token_id = int(config.image_token_id)
        text = config.get_text_config()
        self.softcap = getattr(text, "final_logit_softcapping", None)
        image = processor.image_processor
        self.mean = np.asarray(image.image_mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(image.image_std, np.float32).reshape(3, 1, 1)
        if family == "qwen2_5_vl":
            vision = config.vision_config
            self.patch, self.merge = int(vision.patch_size), int(vision.spatial_merge_size)
            self.temporal = int(vision.temporal_patch_size)
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

            size = image.size
            side = smart_resize(
                self.image_size, self.image_size, self.patch * self.merge,
                int(size["shortest_edge"]), int(size["longest_edge"]),
            )  # fmt: skip
            self.input_size = (int(side[0]), int(side[1]))
            self.grid = (self.input_size[0] // (self.patch * self.merge), self.input_size[1] // (self.patch * self.merge))
            self.resample = "bicubic"
        else:
            vision = config.vision_config
            self.input_size = (int(vision.image_size), int(vision.image_size))
            side = int(round(math.sqrt(int(config.mm_tokens_per_image))))
            self.grid = (side, side)
            self.resample = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}.get(int(image.resample), "bilinear")

    # ---- geometry ----------------------------------------------------------------------------
    def geometry(self, original: tuple[int, int]) -> Geometry:
        """Letterbox to the `image_size` square, then the processor's resize to `input_size`."""
        nh, nw, top, left = letterbox_size(original, self.image_size)
        ry, rx = self.input_size[0] / self.image_size, self.input_size[1] / self.image_size
        return Geometry(
            (int(original[0]), int(original[1])), self.input_size,
            ((nh / original[0]) * ry, (nw / original[1]) * rx), (top * ry, left * rx), "letterbox_resize",
        )  # fmt: skip

    def preprocess(self, image: np.ndarray) -> tuple[Any, Geometry]:
        import torch

        original = (int(image.shape[0]), int(image.shape[1]))
        nh, nw, top, left = letterbox_size(original, self.image_size)
        board = np.zeros((self.image_size, self.image_size), np.float32)
        board[top : top + nh, left : left + nw] = resize(np.asarray(image, np.float32), (nh, nw), "bicubic")
        pixels = resize(board, self.input_size, self.resample)
        normalized = (pixels[None] - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(normalized, np.float32)), self.geometry(original)

    # ---- text side ---------------------------------------------------------------------------
    def _messages(self, text: str, image: Any = None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if image is not None:
            content.insert(0, {"type": "image", "image": image})
        return [{"role": "user", "content": content}]

    def answer_token(self, word: str) -> int:
        """The first token of `word` as the model's first answer token, read off the chat template:
        the conversation with the answer, tokenized, past the tokens of the generation prompt."""
        tokenizer = self.processor.tokenizer
        user = self._messages("?")
        prompt = self.processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        answer = user + [{"role": "assistant", "content": [{"type": "text", "text": word}]}]
        full = self.processor.apply_chat_template(answer, tokenize=False, add_generation_prompt=False)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if not full.startswith(prompt) or ids[: len(head)] != head or len(ids) <= len(head):
            raise ConfigError(
                f"lvlm: the chat template of {self.folder} does not continue its generation prompt with "
                f"the answer {word!r}; the first answer token cannot be located"
            )
        return int(ids[len(head)])

    def encode_queries(self, findings: Sequence[str]) -> Queries:
        import torch
        from PIL import Image

        yes = list(dict.fromkeys(self.answer_token(w) for w in YES_WORDS))
        no = list(dict.fromkeys(self.answer_token(w) for w in NO_WORDS))
        if set(yes) & set(no):
            raise ConfigError(f"lvlm: the tokenizer of {self.folder} starts 'yes' and 'no' with the same token")
        blank = Image.fromarray(np.zeros((self.image_size, self.image_size, 3), np.uint8))
        rows, positions = [], None
        for finding in findings:
            text = fill(self.question, self.queries[finding])
            inputs = self.processor.apply_chat_template(
                self._messages(text, blank), tokenize=True, return_dict=True, add_generation_prompt=True,
            )  # fmt: skip
            ids = torch.as_tensor(inputs["input_ids"]).reshape(-1)
            where = (ids == self.image_token_id).nonzero().reshape(-1)
            if where.numel() != self.grid[0] * self.grid[1]:
                raise ConfigError(
                    f"lvlm: the processor of {self.folder} gives {where.numel()} image tokens, the model's "
                    f"grid {self.grid[0]} x {self.grid[1]}; check image_size and the processor config"
                )
            if positions is not None and not torch.equal(positions, where):
                raise ConfigError("lvlm: the image tokens move with the question; put the image before the text")
            positions = where
            rows.append(ids)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        pad = self.processor.tokenizer.pad_token_id
        pad = int(pad if pad is not None else 0)
        longest = int(lengths.max()) if len(rows) else 1
        input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
        device = self.device
        image_positions = positions if positions is not None else torch.zeros(0, dtype=torch.long)
        return Queries(
            input_ids.to(device), lengths.to(device), image_positions.to(device),
            torch.tensor(yes + no, dtype=torch.long, device=device), len(yes),
            self._prefix(input_ids, lengths, image_positions), self._rope(input_ids, lengths, device),
        )  # fmt: skip

    def _prefix(self, input_ids: Any, lengths: Any, image_positions: Any) -> int:
        """How many leading tokens all sequences share (at least the image, at most all but the
        answer position, which each sequence needs); 0 when sharing is off or impossible."""
        if not self.shared_prefix or not len(input_ids) or not len(image_positions):
            return 0
        same = (input_ids == input_ids[:1]).all(0).long()
        common = int(same.cumprod(0).sum())
        prefix = min(common, int(lengths.min()) - 1)
        return prefix if prefix > int(image_positions.max()) else 0

    def _rope(self, input_ids: Any, lengths: Any, device: Any) -> Any:
        """Qwen2.5-VL's multimodal rope positions of every sequence (image tokens on their 2-D grid)."""
        import torch

        if self.family != "qwen2_5_vl" or not len(input_ids):
            return None
        mask = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        grid = torch.tensor([[1, self.grid[0] * self.merge, self.grid[1] * self.merge]] * len(input_ids))
        positions, _ = self.module.lvlm.model.get_rope_index(
            input_ids, mm_token_type_ids=(input_ids == self.image_token_id).long() * mask,
            image_grid_thw=grid, attention_mask=mask,
        )  # fmt: skip
        return positions.to(device)

    # ---- image side --------------------------------------------------------------------------
    def image_features(self, pixels: Any) -> Any:
        """The image tokens the language model receives, [B, N, D], through the feature-layer tap."""
        import torch

        lvlm = self.module.lvlm.model
        pixels = pixels.to(lvlm.dtype)
        b = pixels.shape[0]
        if self.family == "qwen2_5_vl":
            flat = patchify(pixels, self.patch, self.merge, self.temporal)
            gh, gw = self.input_size[0] // self.patch, self.input_size[1] // self.patch
            thw = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=pixels.device)
            out = lvlm.get_image_features(flat, thw, return_dict=True).pooler_output
            tokens = torch.stack(list(out))
        else:
            tokens = lvlm.get_image_features(pixels, return_dict=True).pooler_output
        return self.module.image_tokens(tokens)

    # ---- language model ----------------------------------------------------------------------
    def _image_inputs(self, ids: Any, feats: Any) -> dict[str, Any]:
        """The language model's image arguments for sequences `ids` holding the image tokens `feats`."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if self.family == "qwen2_5_vl":
            # Qwen2.5-VL splits its own vision output per image and concatenates the tuple back
            # (`torch.cat(...pooler_output)`), though the field is typed as one tensor
            flat = (feats.reshape(-1, feats.shape[-1]),)
            return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=flat)}}  # type: ignore[arg-type]
        return {
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=feats)},
            "token_type_ids": (ids == self.image_token_id).long(),  # Gemma: image tokens see each other
        }

    def _run(self, tokens: Any, queries: Queries, attentions: bool) -> tuple[Any, list[Any] | None]:
        """All (image, finding) sequences: yes-vs-no logits [B, F] and, when asked, per chunk of
        sequences: their (image, finding) pairs, the answer rows in the suffix (lengths - prefix),
        the suffix's attention per layer [n, H, S, L] and the prefix's of every image, heads
        averaged, per layer [B, P, P] (one list shared by all chunks; None without a prefix).

        The shared prefix (system turn, image, the question's common start) runs once per image;
        its keys and values serve the image's F question suffixes, read `sequences` at a time.
        """
        import torch
        from transformers import DynamicCache

        lvlm = self.module.lvlm
        b = tokens.shape[0]
        f, p = queries.input_ids.shape[0], queries.prefix
        device = tokens.device
        pairs = torch.cartesian_prod(torch.arange(b), torch.arange(f)) if f else torch.zeros((0, 2), dtype=torch.long)
        head = lvlm.lm_head.weight[queries.answer_ids]  # [A, D]: only the answer rows are needed
        rope = queries.positions
        if p:
            ids = queries.input_ids[:1, :p].expand(b, -1)
            extra = {"position_ids": rope[:, :1, :p].expand(-1, b, -1)} if rope is not None else {}
            first = lvlm.model(
                input_ids=ids, use_cache=True, output_attentions=attentions, return_dict=True,
                **self._image_inputs(ids, tokens), **extra,
            )  # fmt: skip
            cached = [(layer.keys, layer.values) for layer in first.cache.layers]
            # Rollout averages the heads anyway: keep the prefix rows once, H times smaller.
            above = [top.float().mean(1) for top in first.attentions] if attentions else None
        logits, kept = [], []
        for start in range(0, len(pairs), self.sequences):
            chunk = pairs[start : start + self.sequences]
            bi, fi = chunk[:, 0].to(device), chunk[:, 1].to(device)
            lengths = queries.lengths[fi]
            mask = (torch.arange(queries.input_ids.shape[1], device=device)[None] < lengths[:, None]).long()
            ids = queries.input_ids[fi, p:]
            extra = {"position_ids": rope[:, fi, p:]} if rope is not None else {}
            if p:
                cache = DynamicCache(config=lvlm.config.get_text_config())
                for index, (keys, values) in enumerate(cached):
                    cache.update(keys[bi], values[bi], index)
                extra.update(cache=cache, use_cache=True)
            else:
                extra.update(self._image_inputs(ids, tokens[bi]), use_cache=False)
            out = lvlm.model(input_ids=ids, attention_mask=mask, output_attentions=attentions, return_dict=True, **extra)
            hidden = out.last_hidden_state[torch.arange(len(chunk), device=device), lengths - 1 - p]
            with torch.autocast(device.type, enabled=False):  # the answer head in float32, under bf16 too
                answer = hidden.float() @ head.float().T
            if self.softcap:
                answer = torch.tanh(answer / self.softcap) * self.softcap
            y = queries.yes_count
            logits.append(torch.logsumexp(answer[:, :y], -1) - torch.logsumexp(answer[:, y:], -1))
            if attentions:  # the suffix rows; the prefix rows (shared by the image's sequences) beside
                kept.append((chunk, lengths - p, out.attentions, above if p else None))
        flat = torch.cat(logits) if logits else tokens.new_zeros(0)
        return flat.reshape(b, f), (kept if attentions else None)

    def _maps(self, kept: list[Any], queries: Queries, b: int, f: int) -> dict[str, Any]:
        """Answer-token attention to the image tokens: last layer, mean of layers, rollout."""
        import torch
        from torch.nn.functional import pad

        from .attribution import answer_attention, rollout

        device = queries.input_ids.device
        out = {k: torch.zeros((b, f, self.grid[0] * self.grid[1]), device=device) for k in MAP_KINDS}
        for chunk, rows, layers, above in kept:
            bi, fi = chunk[:, 0], chunk[:, 1]
            answer = [answer_attention(a, rows, queries.image_positions) for a in layers]
            out["cross_attention"][bi, fi] = answer[-1]
            out["attention_mean"][bi, fi] = torch.stack(answer).mean(0)
            full = rows + (layers[0].shape[-1] - layers[0].shape[-2])  # answer rows in the whole sequence
            if above is not None:  # full [n, 1, L, L], heads averaged: the prefix rows (padded to L keys) on top
                layers = [
                    torch.cat([pad(top[bi], (0, a.shape[-1] - top.shape[-1])), a.float().mean(1)], -2)[:, None]
                    for top, a in zip(above, layers)
                ]
            out["rollout"][bi, fi] = rollout(layers, full, queries.image_positions)
        return {k: v.reshape(b, f, *self.grid) for k, v in out.items()}

    def forward(self, pixels: Any, queries: Queries) -> ModelOutput:
        import torch

        tokens = self.image_features(pixels)
        logit, kept = self._run(tokens, queries, attentions=True)
        maps = self._maps(kept or [], queries, *logit.shape)
        return ModelOutput(scores=torch.sigmoid(logit), maps=maps, extras={"logits": logit})

    # ---- gradient explainers -----------------------------------------------------------------
    def logits(self, pixels: Any, queries: Queries) -> Any:
        """log P(yes) - log P(no) at the first answer token, [B, F] (differentiable)."""
        return self._run(self.image_features(pixels), queries, attentions=False)[0]

    def feature_layer(self) -> FeatureLayer:
        """The image tokens entering the language model (Qwen2.5-VL: after the 2 x 2 patch merger;
        Gemma 3: after the 4 x 4 pooling and projection), on the image-token grid."""
        from functools import partial

        return FeatureLayer(self.module.image_tokens, partial(_tokens_to_grid, grid=self.grid))

    def gradient_attention(self, pixels: Any, queries: Queries) -> Any:
        """Gradient-weighted attention (Chefer et al. 2021, as MedFocus's baseline): ReLU(dlogit/dA) * A
        of the last layer, heads averaged, answer-token row, image columns; [B, F, gh, gw]."""
        import torch

        from .attribution import answer_attention

        tokens = self.image_features(pixels).detach().requires_grad_(True)
        b, f = pixels.shape[0], queries.input_ids.shape[0]
        out = torch.zeros((b, f, self.grid[0] * self.grid[1]), device=pixels.device)
        logit, kept = self._run(tokens, queries, attentions=True)
        for chunk, lengths, layers, _ in kept or []:
            attention = layers[-1]
            chosen = logit[chunk[:, 0], chunk[:, 1]]
            (grad,) = torch.autograd.grad(chosen.sum(), attention, retain_graph=True)
            weighted = torch.relu(grad.float()) * attention.float()
            out[chunk[:, 0], chunk[:, 1]] = answer_attention(weighted, lengths, queries.image_positions)
        return out.reshape(b, f, *self.grid).detach()
