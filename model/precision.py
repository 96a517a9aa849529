"""Which precision a machine computes fastest in: bf16 where the hardware has it natively, float32 elsewhere."""

from __future__ import annotations

import torch


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); torch says so through private helpers."""
    cpu = getattr(torch, "cpu", None)
    names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in names)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()
