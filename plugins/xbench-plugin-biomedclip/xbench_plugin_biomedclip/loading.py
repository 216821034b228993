"""Building BiomedCLIP with open_clip, offline, and loading its released weights safely.

The released repository (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224) holds
`open_clip_config.json`, `open_clip_pytorch_model.bin` (a pickled state_dict) and the tokenizer
files. Its config names the text tower by a Hub id (`hf_model_name`), which open_clip's
`HFTextEncoder` resolves with `AutoConfig.from_pretrained` (open_clip/hf_model.py), i.e. a second
download. Here the text config and the vocabulary are written to a temporary local folder and
`hf_model_name`/`hf_tokenizer_name` point at it; the model is then created from a temporary
`local-dir:` folder (open_clip/factory.py `create_model`, schema `local-dir`) with
`load_weights=False, pretrained_text=False`, and the weights are read by the core's safe reader
and loaded strictly. With `checkpoint: random` nothing is read at all: the config below is the
released one and the vocabulary is generated.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbench_blocks.prompts import create_open_clip, open_clip_weights_in, strip_open_clip_schema

from xbench_core import AssetError, CheckpointError
from xbench_core.assets import resolve_asset

ENV = "XBENCH_BIOMEDCLIP_CHECKPOINT"
TEXT_ENV = "XBENCH_BIOMEDCLIP_TEXT_ENCODER"
HUB_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CONFIG_FILE = "open_clip_config.json"
VOCAB_FILE = "vocab.txt"
WEIGHT_FILES = (
    "open_clip_pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.pth",
)
# Registered as a buffer by transformers < 4.31 and saved in the released .bin; open_clip's
# load_checkpoint deletes it when the installed BertModel has no such key (factory.py).
POSITION_IDS = "text.transformer.embeddings.position_ids"

# The released open_clip_config.json (Hub repository above), embedded so that `random` needs no file.
OPEN_CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 256,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}

# BiomedBERT (PubMedBERT) base, uncased, abstracts: BERT-base with its own 30522-token vocabulary.
BERT_VOCAB_SIZE = 30522


@dataclass(frozen=True)
class CheckpointSource:
    """The weights file, the folder that came with it (config, vocabulary) and its Hub repository."""

    weights: Path | None
    folder: Path | None = None
    hub_repo: str | None = None


@dataclass(frozen=True)
class TextSource:
    """Where the text tower's config and vocabulary come from: a complete local BERT folder, or a
    vocabulary (file, or generated when None) with an optional config.json."""

    folder: Path | None = None
    vocab: Path | None = None
    config: Path | None = None


def resolve_checkpoint(checkpoint: str | None) -> CheckpointSource:
    """Find the weights: 'random', a file, a folder, a Hub id, the env variable, cache or download."""
    if checkpoint is not None and checkpoint.strip().lower() == "random":
        return CheckpointSource(None)
    given = strip_open_clip_schema(checkpoint) if checkpoint else None
    user_value = given or os.environ.get(ENV) or None
    if user_value and Path(user_value).expanduser().is_dir():
        folder = Path(user_value).expanduser().resolve()
        return CheckpointSource(
            open_clip_weights_in(folder, WEIGHT_FILES, "BiomedCLIP", "biomedclip.checkpoint"),
            folder,
        )
    hub_repo = HUB_REPO
    if user_value and not Path(user_value).expanduser().exists():
        hub_repo = user_value  # a Hub id (resolve_asset rejects a missing path with a clear error)
    path = resolve_asset(
        "BiomedCLIP checkpoint",
        given,
        env=ENV,
        hub_repo=HUB_REPO,
        filename=WEIGHT_FILES[0],
        option="biomedclip.checkpoint",
        hint="Microsoft's release, MIT license",
    )
    path = Path(path)
    return CheckpointSource(path, path.parent, hub_repo)


def resolve_text(text_encoder: str | None, source: CheckpointSource) -> TextSource:
    """Find the text tower's vocabulary (and config): option, env variable, beside the checkpoint,
    the checkpoint's Hub repository; generated for `random`."""
    value = text_encoder or os.environ.get(TEXT_ENV) or None
    if value:
        value = strip_open_clip_schema(value)
        local = Path(value).expanduser()
        if local.is_dir():
            local = local.resolve()
            if (local / "config.json").is_file():
                return TextSource(folder=local)
            if (local / VOCAB_FILE).is_file():
                return TextSource(vocab=local / VOCAB_FILE)
            raise AssetError(
                f"biomedclip.text_encoder is the folder {local}, which holds neither config.json "
                f"nor {VOCAB_FILE}. Pass the folder of the BiomedBERT tokenizer files."
            )
        if local.is_file():
            return TextSource(vocab=local.resolve())
        vocab = resolve_asset(
            "BiomedCLIP vocabulary", value, env=TEXT_ENV, filename=VOCAB_FILE,
            option="biomedclip.text_encoder",
        )  # fmt: skip
        config = None
        with contextlib.suppress(AssetError):
            config = Path(resolve_asset("BiomedBERT config", value, filename="config.json"))
        return TextSource(vocab=Path(vocab), config=config)
    if source.weights is None:
        return TextSource()  # random: a generated vocabulary
    if source.folder is not None and (source.folder / VOCAB_FILE).is_file():
        return TextSource(vocab=source.folder / VOCAB_FILE)
    vocab = resolve_asset(
        "BiomedCLIP vocabulary",
        None,
        env=TEXT_ENV,
        hub_repo=source.hub_repo or HUB_REPO,
        filename=VOCAB_FILE,
        option="biomedclip.text_encoder",
        hint="the tokenizer vocabulary of the checkpoint's repository",
    )
    return TextSource(vocab=Path(vocab))


def read_open_clip_config(source: CheckpointSource) -> dict[str, Any]:
    """The folder's open_clip_config.json when it has one, else the released config."""
    if source.folder is not None and (source.folder / CONFIG_FILE).is_file():
        path = source.folder / CONFIG_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from error
        if "model_cfg" not in config or "text_cfg" not in config["model_cfg"]:
            raise CheckpointError(
                f"{path} has no model_cfg.text_cfg; is this an open_clip folder of BiomedCLIP?"
            )
        return config
    return copy.deepcopy(OPEN_CLIP_CONFIG)


def _read_vocab(path: Path) -> list[str]:
    # One token per line, as transformers' load_vocab reads it (str.splitlines would also split
    # on the Unicode line separators some vocabularies contain).
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def write_text_folder(target: Path, text: TextSource) -> Path:
    """A local BERT folder (config.json, vocab.txt, tokenizer config) for open_clip's HF tower."""
    from xbench_blocks.text import BERT_BASE, generated_vocabulary, write_bert_folder

    if text.folder is not None:
        return text.folder
    vocab = _read_vocab(text.vocab) if text.vocab else generated_vocabulary(BERT_VOCAB_SIZE)
    folder = write_bert_folder(target, vocab=vocab, **BERT_BASE)
    config = json.loads((folder / "config.json").read_text())
    if text.config is not None:
        config = json.loads(Path(text.config).read_text(encoding="utf-8"))
    else:
        # The released embedding table has 30522 rows whatever the vocabulary file holds.
        config["vocab_size"] = BERT_VOCAB_SIZE
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def build(source: CheckpointSource, text: TextSource) -> tuple[Any, Any, dict[str, Any]]:
    """(open_clip CustomTextCLIP with seeded random weights, its HF tokenizer, the config used)."""
    from open_clip.tokenizer import HFTokenizer

    config = read_open_clip_config(source)
    with tempfile.TemporaryDirectory(prefix="xbench-biomedclip-") as tmp:
        text_folder = write_text_folder(Path(tmp) / "text", text)
        text_cfg = config["model_cfg"]["text_cfg"]
        text_cfg["hf_model_name"] = str(text_folder)
        text_cfg["hf_tokenizer_name"] = str(text_folder)
        model_dir = Path(tmp) / "open_clip"
        model_dir.mkdir()
        (model_dir / CONFIG_FILE).write_text(json.dumps(config))
        hint = f"Check {CONFIG_FILE} of the checkpoint folder and the text_encoder folder."
        module = create_open_clip(f"local-dir:{model_dir}", "CustomTextCLIP", "BiomedCLIP", hint)
        tokenizer = HFTokenizer(
            str(text_folder),
            context_length=text_cfg.get("context_length", 256),
            **text_cfg.get("tokenizer_kwargs", {}),
        )
        _check_vocabulary(tokenizer, text_folder)
    return module, tokenizer, config


def _check_vocabulary(tokenizer: Any, folder: Path) -> None:
    # transformers 5 can build a BERT tokenizer that silently lacks its vocabulary (every word
    # [UNK]); compare with the file.
    vocab_file = folder / VOCAB_FILE
    if not vocab_file.is_file():
        return
    vocab = _read_vocab(vocab_file)
    inner = tokenizer.tokenizer
    if inner.vocab_size != len(vocab) or inner.convert_tokens_to_ids("[CLS]") != vocab.index(
        "[CLS]"
    ):
        raise AssetError(
            f"the tokenizer built from {folder} has {inner.vocab_size} tokens, {vocab_file} "
            f"{len(vocab)}; the vocabulary did not load. Check the text_encoder files."
        )
