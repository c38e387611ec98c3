"""Where the teacher runs and at what precision: one rule for fitting, features, probe and
decisions, so that ``device: auto`` writes the same artefacts on a laptop and on a GPU."""

from __future__ import annotations

import contextlib

import torch

from cmm.errors import InputError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA requested but torch sees no GPU", field="teacher.device",
                         expected="auto or cpu on this machine", got="cuda")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units (AMX or AVX512-BF16), where oneDNN's bf16 kernels beat fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older or non-x86 builds
        return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast of the backbone when ``precision`` asks for it on ``device``."""
    if not uses_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
