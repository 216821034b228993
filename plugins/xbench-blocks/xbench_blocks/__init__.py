"""Model building blocks shared by XBench model plugins: the pieces several official models have in
common, written once. A library, not a plugin (it registers nothing): model plugins depend on it.

- preprocessing: ImageNet squash and histogram equalization (MedKLIP, MAVL)
- frozen_text, text: frozen-BERT query embeddings with a disk cache; generated BERT vocabularies
- decoder: the DETR pre-norm decoder layer of the fusion models (MedKLIP, MAVL, CARZero)
- fusion: decoder stack, entity table and entity-book model base (MedKLIP, MAVL)
- knowledge: disease-phrase query models (KAD, DeViDe)
- prompts: prompt pairs of CLIP-style models (CLIP, BiomedCLIP)

The names below are what plugins import (`from xbench_blocks import EntityQueryModel`); the rest
stays in the modules. Loaded on first use (PEP 562), so that importing a plugin's package for
`xbench list` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .decoder import PreNormDecoderLayer
    from .frozen_text import embed_texts
    from .fusion import (
        COVID19_ENTITY,
        MEDKLIP_ENTITIES,
        EntityQueryModel,
        PreNormDecoder,
        write_tiny_text_encoder,
    )
    from .knowledge import OLD_BERT_BUFFERS, PhraseQueryModel
    from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, squash_imagenet
    from .prompts import PROMPT_OPTIONS, PromptPairMixin, quiet_open_clip, strip_open_clip_schema
    from .text import generated_vocabulary, write_bert_folder

# public name -> module that defines it
_LAZY = {
    "PreNormDecoderLayer": "decoder",
    "embed_texts": "frozen_text",
    "COVID19_ENTITY": "fusion", "MEDKLIP_ENTITIES": "fusion", "EntityQueryModel": "fusion",
    "PreNormDecoder": "fusion", "write_tiny_text_encoder": "fusion",
    "OLD_BERT_BUFFERS": "knowledge", "PhraseQueryModel": "knowledge",
    "IMAGENET_MEAN": "preprocessing", "IMAGENET_STD": "preprocessing", "squash_imagenet": "preprocessing",
    "PROMPT_OPTIONS": "prompts", "PromptPairMixin": "prompts", "quiet_open_clip": "prompts",
    "strip_open_clip_schema": "prompts",
    "generated_vocabulary": "text", "write_bert_folder": "text",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xbench_blocks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "COVID19_ENTITY", "IMAGENET_MEAN", "IMAGENET_STD", "MEDKLIP_ENTITIES", "OLD_BERT_BUFFERS",
    "PROMPT_OPTIONS", "EntityQueryModel", "PhraseQueryModel", "PreNormDecoder", "PreNormDecoderLayer",
    "PromptPairMixin", "embed_texts", "generated_vocabulary", "quiet_open_clip", "squash_imagenet",
    "strip_open_clip_schema", "write_bert_folder", "write_tiny_text_encoder",
]  # fmt: skip
