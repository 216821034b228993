"""Frozen BERT query embeddings, as MedKLIP and MAVL make them: the text encoder's files, the
official tokenizer quirk, and an on-disk cache keyed by the encoder and the texts.

The official code (MedKLIP: Sample_Zero-Shot_Grounding_RSNA/test.py, `get_tokenizer`, and
models/model_MedKLIP.py; MAVL: Zero-shot_grounding/test.py and models/model_MAVL.py) tokenizes
every text with its own copy of the BERT tokenizer (models/tokenization_bert.py, from ALBEF), whose
`build_inputs_with_special_tokens` returns `[CLS] + tokens` for one sequence, WITHOUT the trailing
[SEP]; pads to max_length 64 with truncation; and keeps `last_hidden_state[:, 0]` (the CLS vector)
of `AutoModel.from_pretrained('emilyalsentzer/Bio_ClinicalBERT')`. With transformers 5 the
tokenizer is backed by the Rust library and ignores an overridden
`build_inputs_with_special_tokens`, so the ids are built here from `tokenize()` and
`convert_tokens_to_ids()`.

Public (through `xbench_core`): `FrozenTextEncoder`, `resolve_text_encoder`, `embed_texts`,
`tokenize_without_sep`, `bert_cls_embeddings`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbench_core import AssetError
from xbench_core.assets import resolve_asset, xbench_home

from .text import BERT_BASE

DEFAULT_TEXT_ENCODER = "emilyalsentzer/Bio_ClinicalBERT"
MAX_LENGTH = 64  # the test scripts' get_tokenizer (pretraining used 128)

# The shape of Bio_ClinicalBERT's config.json (BERT-base with the cased BioBERT vocabulary),
# used for the generated random text tower of `checkpoint: random`.
BIO_CLINICALBERT_SHAPE: dict[str, Any] = {"vocab_size": 28996, **BERT_BASE}
RANDOM_SEED = 0
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Bumped when anything that changes the embeddings for the same encoder and texts changes.
_CACHE_FORMAT = "albef-no-sep/cls-last-layer/v1"


@dataclass(frozen=True)
class FrozenTextEncoder:
    """Where a BERT text encoder comes from: its config and vocabulary, and weights or none.

    `folder` holds config.json and vocab.txt (None: a generated Bio_ClinicalBERT-shaped BERT
    with a generated vocabulary); `weights` is its weights file, None for a seeded random init.
    """

    folder: Path | None
    weights: Path | None
    label: str

    @property
    def random(self) -> bool:
        return self.weights is None

    def identity(self) -> str:
        """A digest of everything that determines the embeddings: config, tokenizer files, weights."""
        digest = hashlib.sha256()
        with self.files() as folder:
            for name in ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json"):
                file = folder / name
                digest.update(name.encode() + b"\0")
                digest.update(file.read_bytes() if file.is_file() else b"<absent>")
        if self.weights is not None:
            digest.update(b"weights\0" + _file_sha256(self.weights).encode())
        else:
            import torch
            import transformers

            # A seeded init is reproducible for one torch/transformers pair, not across them.
            digest.update(
                f"random-init seed={RANDOM_SEED} torch={torch.__version__} "
                f"transformers={transformers.__version__}".encode()
            )
        return digest.hexdigest()

    @contextlib.contextmanager
    def files(self) -> Iterator[Path]:
        """The folder with config.json and vocab.txt (a temporary one for the generated BERT)."""
        if self.folder is not None:
            yield self.folder
            return
        from .text import write_bert_folder

        with tempfile.TemporaryDirectory(prefix="xbench-bert-") as tmp:
            yield write_bert_folder(
                Path(tmp), weights=False, lower_case=True, **BIO_CLINICALBERT_SHAPE
            )

    @contextlib.contextmanager
    def load(self) -> Iterator[tuple[Any, Any]]:
        """(tokenizer, BERT model in eval mode), loaded for as long as the block runs."""
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, BertTokenizer

        with self.files() as folder:
            verbosity = transformers.logging.get_verbosity()
            bars = transformers.logging.is_progress_bar_enabled()
            transformers.logging.set_verbosity_error()  # the unused `cls.*` heads, etc.
            transformers.logging.disable_progress_bar()
            try:
                tokenizer = BertTokenizer.from_pretrained(str(folder))
                config = AutoConfig.from_pretrained(str(folder))
                if self.weights is None:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(RANDOM_SEED)
                        bert = AutoModel.from_config(config)
                else:
                    bert, info = AutoModel.from_pretrained(
                        str(self.weights.parent), config=config, output_loading_info=True
                    )
                    # A weights file that does not fit would leave layers at their random init
                    # and give meaningless queries without a word; the pooler is not used.
                    missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
                    if missing or info["mismatched_keys"]:
                        raise AssetError(
                            f"the weights of {self.label} ({self.weights}) do not fit its config: "
                            f"missing {missing[:10]}, mismatched {sorted(info['mismatched_keys'])[:10]}."
                        )
            finally:
                transformers.logging.set_verbosity(verbosity)
                if bars:
                    transformers.logging.enable_progress_bar()
            if len(tokenizer) != config.vocab_size:
                # transformers 5 can silently build a tokenizer without the vocabulary.
                raise AssetError(
                    f"the tokenizer of {self.label} has {len(tokenizer)} tokens but its config "
                    f"says vocab_size={config.vocab_size}; check vocab.txt in {folder}."
                )
            yield tokenizer, bert.eval()


def resolve_text_encoder(
    given: str | None, *, allow_random: bool, env: str, option: str, model: str = "The model"
) -> FrozenTextEncoder:
    """Find the text encoder: `given` (else `$env`) as a local folder or a Hub id (default
    Bio_ClinicalBERT), or, with `allow_random` (`checkpoint: random`) and nothing given, a
    generated BERT of Bio_ClinicalBERT's shape. `option` and `model` (e.g. "MedKLIP") name the
    option and the model in the messages; Hub files are fetched one by one with `resolve_asset`."""
    value = given if given not in (None, "") else os.environ.get(env) or None
    origin = f"--set {option}" if given not in (None, "") else f"the environment variable {env}"
    if value is None and allow_random:
        return FrozenTextEncoder(None, None, "a generated Bio_ClinicalBERT-shaped random BERT")
    if value is not None and Path(value).expanduser().exists():
        return _from_folder(Path(value).expanduser(), allow_random, origin, model)
    hub_id = value or DEFAULT_TEXT_ENCODER
    name = f"{model} text encoder (Bio_ClinicalBERT)"
    resolve_asset(name, hub_id, filename="config.json", option=option)
    vocab = resolve_asset(name, hub_id, filename="vocab.txt", option=option)
    with contextlib.suppress(AssetError):  # optional: Bio_ClinicalBERT has none
        resolve_asset(name, hub_id, filename="tokenizer_config.json", option=option)
    errors = []
    for filename in _WEIGHT_FILES:
        try:
            weights = resolve_asset(name, hub_id, filename=filename, option=option)
            break
        except AssetError as error:
            errors.append(str(error))
    else:
        raise AssetError(f"no weights for the text encoder {hub_id}: " + " | ".join(errors))
    if weights.parent != vocab.parent:
        raise AssetError(
            f"the files of the text encoder {hub_id} ended up in different folders ({vocab.parent}, "
            f"{weights.parent}); pass a local folder with config.json, vocab.txt and the weights "
            f"with --set {option}=PATH."
        )
    return FrozenTextEncoder(vocab.parent, weights, f"the text encoder {hub_id}")


def _from_folder(folder: Path, allow_random: bool, origin: str, model: str) -> FrozenTextEncoder:
    if not folder.is_dir():
        raise AssetError(
            f"{origin} is {folder}, a file; the text encoder is a folder with config.json, "
            "vocab.txt and the weights (model.safetensors or pytorch_model.bin)."
        )
    missing = [name for name in ("config.json", "vocab.txt") if not (folder / name).is_file()]
    if missing:
        raise AssetError(
            f"the text encoder folder {folder} ({origin}) has no {' or '.join(missing)}; it needs "
            "config.json, vocab.txt and the weights of Bio_ClinicalBERT."
        )
    weights = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None and not allow_random:
        raise AssetError(
            f"the text encoder folder {folder} ({origin}) has no weights ({' or '.join(_WEIGHT_FILES)}); "
            f"{model}'s checkpoint does not carry the text encoder, so the real Bio_ClinicalBERT "
            "weights are needed (a folder without weights is only accepted with checkpoint=random)."
        )
    return FrozenTextEncoder(folder, weights, f"the text encoder at {folder}")


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


# --------------------------------------------------------------------------------------------------
# Tokenizer and BERT


def tokenize_without_sep(
    tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH
) -> tuple[Any, Any]:
    """(input_ids, attention_mask) [N, max_length] as the official ALBEF tokenizer makes them:
    [CLS] + word pieces truncated to max_length - 1, no [SEP], right-padded with [PAD]."""
    import torch

    ids = torch.full((len(texts), max_length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for row, text in enumerate(texts):
        pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))[: max_length - 1]
        sequence = [tokenizer.cls_token_id, *pieces]
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def bert_cls_embeddings(
    bert: Any, input_ids: Any, attention_mask: Any, batch_size: int = 64
) -> Any:
    """CLS vectors of the last layer, [N, hidden], float32 on the CPU, in the order of the input.

    Texts run in batches of similar length, each batch on its longest text rather than the full
    padded length: the padding is masked out of every attention, so each CLS vector is the same
    (to float rounding) and the one-off cost drops by the padding fraction.
    """
    import torch

    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    out = torch.empty(input_ids.shape[0], bert.config.hidden_size)
    with torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            rows = order[start : start + batch_size]
            length = max(int(lengths[rows].max()), 1)
            hidden = bert(
                input_ids=input_ids[rows, :length], attention_mask=attention_mask[rows, :length]
            )
            out[rows] = hidden.last_hidden_state[:, 0].float()
    return out


# --------------------------------------------------------------------------------------------------
# The on-disk cache


def cache_key(encoder_identity: str, texts: Sequence[str]) -> str:
    """The digest that names a set of embeddings: encoder, texts, tokenizer rule, max length."""
    payload = json.dumps(
        {"format": _CACHE_FORMAT, "max_length": MAX_LENGTH, "encoder": encoder_identity,
         "texts": list(texts)},
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cache_path(tag: str, key: str) -> Path:
    return xbench_home() / "queries" / f"{tag}-{key[:24]}.safetensors"


def embed_texts(encoder: FrozenTextEncoder, texts: Sequence[str], *, tag: str) -> Any:
    """CLS embeddings of `texts` [N, hidden] (float32), computed once and then read from the cache
    `$XBENCH_HOME/queries/<tag>-<key>.safetensors` (`tag`: the cache name prefix, e.g. the
    plugin's name)."""
    key = cache_key(encoder.identity(), texts)
    path = cache_path(tag, key)
    cached = _read_cache(path, key, len(texts))
    if cached is not None:
        return cached
    with encoder.load() as (tokenizer, bert):
        input_ids, attention_mask = tokenize_without_sep(tokenizer, texts)
        embeddings = bert_cls_embeddings(bert, input_ids, attention_mask)
    _write_cache(path, key, embeddings, encoder.label)
    return embeddings


def _read_cache(path: Path, key: str, count: int) -> Any:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
            tensor = handle.get_tensor("embeddings")
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, not fatal
        return None
    return tensor if tensor.ndim == 2 and tensor.shape[0] == count else None


def _write_cache(path: Path, key: str, embeddings: Any, label: str) -> None:
    from safetensors.torch import save_file

    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name and renamed: concurrent runs never read a partial file.
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
        os.close(handle)
        save_file({"embeddings": embeddings}, temporary, metadata={"key": key, "encoder": label})
        os.replace(temporary, path)
    except OSError:
        # A read-only cache only costs the recomputation next time.
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
