"""Reading official checkpoints safely: tensors load, nothing pickled is executed or imported.

Official checkpoints come as torch zip archives (`.pt`, `.pth`, `.ckpt`, `.bin`), as legacy
(pre-1.6, non-zip) torch files, as plain pickles and as `.safetensors`. Pickled files are read with
an unpickler whose `find_class` hands out the real object only for an allow-list (tensor and storage
rebuild functions, dtypes, plain containers, numpy arrays) and an inert `Placeholder` class for every
other name, so a checkpoint's Lightning hyper-parameters, argparse namespaces or a planted
`os.system` call become data and never code. Nothing named in a file is ever imported.

This module doubles as the `pickle_module` that `torch.load` is given: it exposes `Unpickler` and
`load` (the two names torch uses, for the zip and the legacy formats). torch is imported inside
functions only, so that importing the core stays fast.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .io.output import publish, writing

__all__ = [
    "Placeholder",
    "Unpickler",
    "convert_checkpoint",
    "load",
    "load_checkpoint",
    "load_state_dict_strict",
    "read_pickle_safely",
]

# How many keys a diff or a listing shows before it says "... and N more".
_SHOWN = 20

# Names a folder of Hugging Face weights uses, most preferred first.
_FOLDER_CANDIDATES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --------------------------------------------------------------------------------------------------
# The safe unpickler


class Placeholder:
    """An object from a pickle whose class is not allow-listed: its pickled data, none of its code.

    A subclass is made for every (module, name) a file refers to; `pickled_module` and
    `pickled_name` record the original. Whatever the pickle does with it is recorded, never acted
    on: constructor arguments in `args`/`kwargs`, `__setstate__` in `state`, dict-style items in
    `mapping`, list-style items in `sequence`.
    """

    pickled_module: str = ""
    pickled_name: str = ""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    mapping: dict[Any, Any]
    sequence: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        # The NEWOBJ opcode calls __new__ without __init__, so the record is made here.
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.mapping = {}
        obj.sequence = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any arguments (already recorded by `__new__`)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Pickles of dict and list subclasses (defaultdict, OmegaConf's ListConfig, ...) fill the
    # object through these after creating it.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def append(self, value: Any) -> None:
        self.sequence.append(value)

    def extend(self, values: Any) -> None:
        self.sequence.extend(values)

    @classmethod
    def qualified_name(cls) -> str:
        """The class this placeholder stands for, as `module.name`."""
        return f"{cls.pickled_module}.{cls.pickled_name}"

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name()}>"


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    # The Python-level name must be a valid identifier-ish string (type() rejects NUL bytes);
    # the original is kept as data.
    safe = re.sub(r"\W", "_", name) or "unnamed"
    return type(safe, (Placeholder,), {"pickled_module": module, "pickled_name": name})


def _python3_name(module: str, name: str) -> tuple[str, str]:
    # Protocol-2 pickles (torch.save's default) are written with Python 2 names ("__builtin__",
    # "commands"); the standard find_class maps them back, and so does ours, as plain strings.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_ALLOWED: dict[tuple[str, str], Any] | None = None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The (module, name) pairs a pickle may refer to, mapped to the object it gets."""
    global _ALLOWED
    if _ALLOWED is not None:
        return _ALLOWED
    import builtins
    import collections

    import numpy
    import torch
    import torch._tensor
    import torch._utils

    allowed: dict[tuple[str, str], Any] = {("collections", "OrderedDict"): collections.OrderedDict}
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "bytes", "range"):
        allowed[("builtins", name)] = getattr(builtins, name)
    allowed[("_codecs", "encode")] = _codecs_encode

    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_xla_tensor",
        "_rebuild_meta_tensor_no_storage",
    ):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    allowed[("torch._tensor", "_rebuild_from_type_v2")] = _rebuild_from_type_v2
    # Plain pickles of tensors carry their storage as a nested legacy torch file.
    allowed[("torch.storage", "_load_from_bytes")] = _load_from_bytes
    allowed[("torch", "Tensor")] = torch.Tensor
    allowed[("torch._tensor", "Tensor")] = torch.Tensor
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    # vars(), not getattr(): torch's module __getattr__ imports submodules on demand.
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype) or (
            isinstance(value, type) and name.endswith("Storage") and not name.startswith("_")
        ):
            allowed[("torch", name)] = value
    allowed[("torch.storage", "UntypedStorage")] = torch.UntypedStorage
    allowed[("torch.storage", "TypedStorage")] = torch.TypedStorage

    # numpy 2 moved numpy.core to numpy._core; files written by either refer to their own name.
    core = numpy._core if hasattr(numpy, "_core") else numpy.core
    multiarray = core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = numpy.ndarray
    allowed[("numpy", "dtype")] = numpy.dtype
    _ALLOWED = allowed
    return allowed


# Protocol-2 pickles write bytes as _codecs.encode(text, "latin1"); a codec name from the file
# would otherwise make codecs import an `encodings` module by that name.
_SAFE_CODECS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "ascii", "utf-8", "utf8"}


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(encoding, str) or encoding.lower() not in _SAFE_CODECS:
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} named in a pickle")
    return text.encode(encoding, errors)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # torch's version calls `as_subclass(new_type)`; a class from the file that is not the plain
    # Tensor or Parameter is a placeholder, so the data is kept and the subclass dropped.
    import torch
    import torch._tensor

    if new_type is torch.Tensor or new_type is torch.nn.Parameter:
        return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)
    return func(*args)


def _load_from_bytes(data: bytes) -> Any:
    import torch

    return torch.load(
        io.BytesIO(data),
        map_location="cpu",
        weights_only=False,
        pickle_module=sys.modules[__name__],
    )


class Unpickler(pickle.Unpickler):
    """An unpickler that never imports or calls anything a file names outside the allow-list.

    Allow-listed globals (tensor rebuild functions, storages, dtypes, OrderedDict, numpy arrays)
    resolve to the real objects; every other global resolves to a `Placeholder` subclass.
    """

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._placeholders: dict[tuple[str, str], type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(str(module), str(name))
        found = _allowed_globals().get((module, name))
        if found is not None:
            return found
        # One class per name and file, so that objects of the same pickled class share a type.
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = _placeholder_class(module, name)
        return self._placeholders[key]


def load(file: Any, **kwargs: Any) -> Any:
    """Read one pickled object from an open binary file with the safe `Unpickler`."""
    return Unpickler(file, **kwargs).load()


# --------------------------------------------------------------------------------------------------
# Reading files


def _is_safetensors(head: bytes, size: int) -> bool:
    # A safetensors file starts with the little-endian length of its JSON header, then "{".
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_length <= size - 8


def _checkpoint_file(path: str | Path) -> Path:
    """The file to read for `path`: the path itself, or the weights file in a weights folder."""
    file = Path(path).expanduser()
    if not file.exists():
        raise CheckpointError(f"checkpoint not found: {file}. Check the path.")
    if file.is_dir():
        for name in _FOLDER_CANDIDATES:
            if (file / name).is_file():
                return file / name
        present = sorted(p.name for p in file.iterdir())
        raise CheckpointError(
            f"checkpoint path {file} is a folder without {' or '.join(_FOLDER_CANDIDATES)}; "
            f"it holds {_shorten(present)}. Pass the weights file itself."
        )
    return file


def _read_any(file: Path) -> Any:
    """Read a checkpoint file whatever its format; errors name the file."""
    try:
        with warnings.catch_warnings():
            # Legacy files of whole pickled models make torch try to compare the source code of
            # their classes, which are placeholders here; that comparison is irrelevant.
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            return _read_unchecked(file)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to parse means an unreadable file
        raise CheckpointError(
            f"could not read checkpoint {file}: {type(error).__name__}: {str(error).rstrip('.')}. "
            "The file may be truncated (an interrupted download?) or not a checkpoint; "
            "download it again."
        ) from error


def _read_unchecked(file: Path) -> Any:
    if file.name.endswith(".index.json"):
        return _read_sharded(file)
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(16)
    if file.suffix == ".safetensors" or _is_safetensors(head, size):
        import safetensors.torch

        return safetensors.torch.load_file(str(file), device="cpu")
    if head.startswith(b"PK\x03\x04"):
        return _read_torch_zip(file)
    import tarfile

    import torch.serialization

    if tarfile.is_tarfile(file):
        # The tar format of torch < 0.4; torch.load handles it with our pickle module.
        return _torch_load(file)
    with open(file, "rb") as handle:
        first = load(handle, encoding="utf-8")
    if type(first) is int and first == torch.serialization.MAGIC_NUMBER:
        # A legacy (non-zip) torch file: a sequence of pickles that torch.load knows how to walk.
        return _torch_load(file)
    return first


def _read_torch_zip(file: Path) -> Any:
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
    if any(name.endswith("constants.pkl") for name in names):
        # torch.load would hand a TorchScript archive to torch.jit.load, which runs its program.
        raise CheckpointError(
            f"{file} is a TorchScript archive, not a state_dict checkpoint; XBench does not run "
            "TorchScript. Save its state_dict (torch.jit.load(path).state_dict()) with torch.save "
            "or safetensors and pass that file."
        )
    return _torch_load(file)


def _torch_load(file: Path) -> Any:
    import torch

    # weights_only=False only because our own pickle_module does the restricting, more
    # permissively than torch's (placeholders instead of refusals).
    return torch.load(
        file, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__]
    )


def _read_sharded(index_file: Path) -> dict[str, Any]:
    index = json.loads(index_file.read_text(encoding="utf-8"))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index_file} has no 'weight_map'; it is not a sharded-weights index."
        )
    merged: dict[str, Any] = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = index_file.parent / str(shard)
        if not shard_file.is_file():
            raise CheckpointError(f"shard {shard_file} listed in {index_file} is missing.")
        content = _read_any(shard_file)
        if not isinstance(content, Mapping):
            raise CheckpointError(f"shard {shard_file} does not hold a dict of tensors.")
        merged.update(content)
    return merged


def read_pickle_safely(path: str | Path) -> Any:
    """Unpickle a file (a torch checkpoint or a plain pickle) without executing code: tensors and
    plain containers load; every other object becomes an inert placeholder."""
    return _read_any(_checkpoint_file(path))


# --------------------------------------------------------------------------------------------------
# Containers and keys


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _module_tensors(obj: Placeholder) -> dict[str, Any] | None:
    """The state_dict of a whole pickled nn.Module (a placeholder), from its attributes."""
    state = obj.state
    if not (isinstance(state, dict) and "_parameters" in state and "_modules" in state):
        return None
    tensors: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        node_state = node.state if isinstance(node, Placeholder) else None
        if not isinstance(node_state, dict):
            return
        for name, value in (node_state.get("_parameters") or {}).items():
            if _is_tensor(value):
                tensors[prefix + name] = value
        skip = node_state.get("_non_persistent_buffers_set") or set()
        for name, value in (node_state.get("_buffers") or {}).items():
            if _is_tensor(value) and name not in skip:
                tensors[prefix + name] = value
        for name, child in (node_state.get("_modules") or {}).items():
            walk(child, f"{prefix}{name}.")

    walk(obj, "")
    return tensors


def _as_mapping(obj: Any) -> Mapping[Any, Any] | None:
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, Placeholder):
        return _module_tensors(obj) or obj.mapping or None
    return None


def _describe(value: Any) -> str:
    if _is_tensor(value):
        return f"tensor {str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    if isinstance(value, Placeholder):
        return f"object of class {value.qualified_name()} (not loaded)"
    if isinstance(value, Mapping):
        tensors = sum(1 for v in value.values() if _is_tensor(v))
        return f"dict of {len(value)} entries ({tensors} tensors)"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _listing(mapping: Mapping[Any, Any]) -> str:
    items = [f"{key!r}: {_describe(value)}" for key, value in mapping.items()]
    return _shorten(items)


def _shorten(items: Sequence[str], shown: int = _SHOWN) -> str:
    text = ", ".join(items[:shown])
    if len(items) > shown:
        text += f", ... and {len(items) - shown} more"
    return text or "nothing"


def _count_tensors(mapping: Mapping[Any, Any]) -> int:
    return sum(1 for value in mapping.values() if _is_tensor(value))


def _navigate(obj: Any, container: str | Sequence[str] | None, file: Path) -> Mapping[Any, Any]:
    """The mapping that holds the tensors: `container`'s path of keys, or found automatically."""
    if container is None:
        top = _as_mapping(obj)
        if top is None:
            raise CheckpointError(
                f"checkpoint {file} holds a {_describe(obj)}, not a dict of tensors."
            )
        if _count_tensors(top):
            return top
        for key in ("state_dict", "model", "module"):
            inner = _as_mapping(top.get(key)) if key in top else None
            if inner is not None and _count_tensors(inner):
                return inner
        raise CheckpointError(
            f"checkpoint {file} has no tensors at its top level nor under 'state_dict', 'model' or "
            f"'module'; it holds {_listing(top)}. Pass container= naming the key that holds the "
            "weights."
        )
    path = [container] if isinstance(container, str) else list(container)
    node, walked = obj, list[Any]()
    for key in path:
        mapping = _as_mapping(node)
        if isinstance(node, (list, tuple)) and str(key).isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif mapping is not None and key in mapping:
            node = mapping[key]
        else:
            where = f" under {walked}" if walked else ""
            available = _listing(mapping) if mapping is not None else _describe(node)
            raise CheckpointError(
                f"checkpoint {file} has no key {key!r}{where}; available: {available}. "
                "Is this the right checkpoint file for this model?"
            )
        walked.append(key)
    mapping = _as_mapping(node)
    if mapping is None or not _count_tensors(mapping):
        content = _listing(mapping) if mapping is not None else _describe(node)
        raise CheckpointError(
            f"checkpoint {file}: the container {walked} holds no tensors ({content}). "
            "Is this the right checkpoint file for this model?"
        )
    return mapping


def load_checkpoint(
    path: str | Path,
    *,
    container: str | Sequence[str] | None = None,
    strip_prefixes: Sequence[str] = (),
    drop: Sequence[str] = (),
    drop_contains: Sequence[str] = (),
) -> dict[str, Any]:
    """Read a checkpoint's state_dict: navigate `container` (a key or a path of keys), strip key
    prefixes, drop named keys (and keys containing any of `drop_contains`).

    With `container=None` the top level is used if it holds tensors, else the first of
    'state_dict', 'model', 'module' that does. A container may also be a whole pickled nn.Module,
    whose parameters and persistent buffers are read from its attributes. Each prefix in
    `strip_prefixes` is removed, in order, from keys that start with it. `drop` names keys as in
    the file or after stripping; `drop_contains` matches substrings of the key as in the file.
    Only tensors are returned (detached, on the CPU); other entries of the container are left out.
    """
    file = _checkpoint_file(path)
    mapping = _navigate(_read_any(file), container, file)
    dropped = set(drop)
    tensors: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for raw_key, value in mapping.items():
        if not _is_tensor(value):
            continue
        original = str(raw_key)
        key = original
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if original in dropped or key in dropped or any(s in original for s in drop_contains):
            continue
        if key in tensors:
            raise CheckpointError(
                f"checkpoint {file}: keys {origin[key]!r} and {original!r} both become {key!r} "
                f"after stripping {list(strip_prefixes)}; drop one of them."
            )
        # detach() drops Parameter wrappers, gradient hooks and attributes set by the pickle.
        tensors[key] = value.detach()
        origin[key] = original
    return tensors


def convert_checkpoint(
    path: str | Path,
    out: str | Path,
    *,
    container: str | Sequence[str] | None = None,
    strip_prefixes: Sequence[str] = (),
    drop: Sequence[str] = (),
    drop_contains: Sequence[str] = (),
) -> Path:
    """Write a checkpoint's tensors (selected as by `load_checkpoint`) to a plain `.safetensors`
    file, so that later runs read it without unpickling anything."""
    import safetensors.torch
    import torch

    tensors = load_checkpoint(
        path,
        container=container,
        strip_prefixes=strip_prefixes,
        drop=drop,
        drop_contains=drop_contains,
    )
    # safetensors refuses tensors that share memory (tied weights, views of one storage) and
    # non-contiguous ones; give each its own contiguous copy where needed.
    seen: set[int] = set()
    prepared: dict[str, Any] = {}
    for key, tensor in tensors.items():
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise CheckpointError(
                f"cannot write {key!r} of {path} to safetensors: not a dense tensor."
            )
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        prepared[key] = tensor
    target = Path(out).expanduser()
    if target.is_dir():  # `xbench convert A.pth SOME_DIR` writes SOME_DIR/A.safetensors
        target = target / f"{Path(path).stem}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary name and renamed, so that an interrupted conversion leaves no
    # half-written file under the final name.
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    os.close(handle)
    try:
        with writing(target, temporary=temporary, advice="free some space or choose another output"):
            safetensors.torch.save_file(
                prepared, temporary, metadata={"format": "pt", "converted_from": Path(path).name}
            )
            publish(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


# --------------------------------------------------------------------------------------------------
# Strict loading


def _prefix_hint(missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
    """A hint when the two key sets differ only by a prefix (DataParallel's `module.`, a wrapper)."""
    if not missing or not unexpected:
        return None
    missing_set, unexpected_set = set(missing), set(unexpected)

    def best(keys: Sequence[str], targets: set[str]) -> tuple[str, int]:
        parts = keys[0].split(".")
        candidates = [".".join(parts[:i]) + "." for i in range(1, len(parts))]
        scored = [
            (p, sum(1 for k in keys if k.startswith(p) and k[len(p) :] in targets))
            for p in candidates
        ]
        return max(scored, key=lambda item: item[1], default=("", 0))

    prefix, count = best(unexpected, missing_set)
    if count and count >= len(missing) / 2:
        return (
            f"{count} checkpoint keys match model keys once the prefix {prefix!r} is removed: "
            f"pass strip_prefixes=[{prefix!r}] to load_checkpoint."
        )
    prefix, count = best(missing, unexpected_set)
    if count and count >= len(unexpected) / 2:
        return (
            f"{count} model keys match checkpoint keys once the prefix {prefix!r} is removed: "
            f"the checkpoint holds the weights of the submodule {prefix[:-1]!r} only."
        )
    return None


def load_state_dict_strict(module: Any, state_dict: dict[str, Any], *, source: str) -> None:
    """Load strictly; on mismatch raise CheckpointError listing missing, unexpected and mis-shaped keys.

    Keys and shapes are compared with `module.state_dict()` before anything is copied, so a
    mismatch leaves the module untouched. `source` names the checkpoint in the message.
    """
    from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]

    expected = module.state_dict()
    # torch fills BatchNorm's num_batches_tracked itself when a state_dict carries no version
    # metadata (ours never does), so its absence is not a mismatch.
    fills_counters = getattr(state_dict, "_metadata", None) is None
    missing = [
        key
        for key in expected
        if key not in state_dict and not (fills_counters and key.endswith("num_batches_tracked"))
    ]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched: list[str] = []
    for key, want in expected.items():
        if key not in state_dict or isinstance(want, UninitializedTensorMixin):
            continue
        got = state_dict[key]
        if not _is_tensor(got):
            mismatched.append(
                f"{key}: model expects {tuple(want.shape)}, checkpoint has a {_describe(got)}"
            )
        elif tuple(got.shape) != tuple(want.shape):
            mismatched.append(
                f"{key}: model expects {tuple(want.shape)}, checkpoint has {tuple(got.shape)}"
            )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _diff_message(type(module).__name__, source, missing, unexpected, mismatched)
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(module).__name__}: {error}"
        ) from error


def _diff_message(
    model: str, source: str, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    lines = [f"checkpoint {source} does not fit {model}:"]

    def section(title: str, items: list[str]) -> None:
        if not items:
            return
        lines.append(f"  {len(items)} {title}:")
        lines.extend(f"    {item}" for item in items[:_SHOWN])
        if len(items) > _SHOWN:
            lines.append(f"    ... and {len(items) - _SHOWN} more")

    section("missing keys (in the model, not in the checkpoint)", missing)
    section("unexpected keys (in the checkpoint, not in the model)", unexpected)
    section("shape mismatches", mismatched)
    hint = _prefix_hint(missing, unexpected)
    if hint:
        lines.append(f"Hint: {hint}")
    lines.append(
        "Is this the right checkpoint for this model and variant (size, number of classes, "
        "text encoder)? Check the checkpoint path given to the model."
    )
    return "\n".join(lines)
