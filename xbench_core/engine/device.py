"""Device choice, mixed precision and the host process's allocator."""

from __future__ import annotations

import contextlib
import ctypes
import platform
from typing import Any

from ..errors import ConfigError


def resolve_device(name: str) -> Any:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return dev


def autocast(device: Any, precision: str) -> Any:
    """Autocast to bf16/fp16 on accelerators; fp32 (no autocast) on the CPU and for fp32."""
    import torch

    if precision == "fp32" or device.type == "cpu":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# glibc's mallopt parameters (malloc.h) and the values a run sets: 32 MiB is glibc's own ceiling for its
# dynamic mmap threshold, and the trim threshold is kept above a CPU batch's activations.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 128 << 20


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MiB for reuse in this process (and the loader
    workers it forks). By default glibc serves blocks above a threshold that starts at 128 KiB with
    fresh pages and gives them back on free, raising the threshold only after it frees such a block; a
    CPU forward pass allocates activations of a few MiB, so each batch page-faulted them in anew
    whenever decoding ran in loader workers (issue 22: 17,000 minor faults, about 70 MiB, per CLIP
    ViT-B/16 batch of 4, 250 with this; with 0 workers the main process's own 4 MiB image buffers
    happened to raise the threshold). Both thresholds must be set: setting one turns off glibc's
    dynamic adjustment of both. Returns whether it applied (glibc only; elsewhere a no-op)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # pragma: no cover - a glibc without mallopt
        return False
