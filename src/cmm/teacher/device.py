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


# On the CPU bf16 pays for batches only: one window at a time its kernels are slower than fp32
# (SmolLM2, 2 cores, batch 1: p50 97 ms in bf16 against 59 ms in fp32), so "auto" keeps the
# decision path in fp32 below this batch size.
CPU_BF16_MIN_BATCH = 16


def uses_bf16(precision: str, device: torch.device, batch: int | None = None) -> bool:
    """Whether a pass of ``batch`` windows (None: a large batch) runs the backbone in bf16."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return True
    return (device.type == "cpu" and cpu_has_bf16()
            and (batch is None or batch >= CPU_BF16_MIN_BATCH))


def autocast(precision: str, device: torch.device, batch: int | None = None
             ) -> contextlib.AbstractContextManager:
    """bf16 autocast of the backbone when ``precision`` asks for it on ``device``."""
    if not uses_bf16(precision, device, batch):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
