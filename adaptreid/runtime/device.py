"""The device a run uses and the autocast context of its precision setting."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str = "none"):
    """An autocast context for ``amp`` in none | bf16 | fp16 (fp16 only on CUDA)."""
    if amp in (None, "none", "fp32"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use amp=bf16 on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)
