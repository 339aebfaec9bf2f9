"""Where and in what precision a computation runs, as a user names it (`--device`, `--dtype`)."""

from __future__ import annotations

import torch

from ..errors import FactError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` (or None) means CUDA when it is available, the CPU otherwise."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise FactError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FactError("--device cuda asked for, but no CUDA device is available")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise FactError(f"no device {device!r}: {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise FactError(f"unknown dtype {dtype!r}; choose float32 or float64")
    return DTYPES[dtype]
