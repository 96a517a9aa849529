"""Where the model runs and in which precision: the device, bf16 where the hardware has it natively, float32
elsewhere, and autocast. One module, so that training, evaluation and generation choose alike."""

from __future__ import annotations

import contextlib

import torch

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bfloat16", "float32")


def pick_device(choice: str, index: int = 0) -> torch.device:
    """cuda:`index` when asked, or (auto) when there is a GPU, else cpu."""
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is cuda, but no GPU is available")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)


def allow_tf32(device: torch.device) -> None:
    """Let float32 matmuls and convolutions on a GPU use TF32 (10-bit mantissa products, float32 sums)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def compiles(setting: bool | str, device: torch.device) -> bool:
    """Whether a compile setting (true, false or auto) compiles the model on `device`: auto does on a GPU."""
    if setting not in (True, False, "auto"):
        raise ValueError(f"compile must be true, false or auto, not {setting!r}")
    return device.type == "cuda" if setting == "auto" else bool(setting)


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


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting on `device` (None: float32); auto is bf16 where it is native."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return torch.bfloat16 if precision == "bfloat16" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing (float32) for None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
