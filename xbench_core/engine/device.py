"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
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
