"""Weights in the safetensors format, the ecosystem's way to share a model: a JSON header naming each tensor's dtype,
shape and byte range, then the raw bytes, so a file can run no code.

The `safetensors` package writes and reads it. It checks the header (a length over its 100 MB cap or past the end of
the file, offsets that leave gaps or overlap, shapes that do not fit their bytes) before it maps any tensor; this
module parses and writes no bytes itself, and turns the package's refusals into one-line WeightsErrors.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open


class WeightsError(ValueError):
    """A file that is not a well-formed safetensors file, with the reason."""


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (name -> tensor, any device) and string `metadata` to `path` with the safetensors package."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    try:
        safetensors.torch.save_file(state, Path(path), metadata=metadata)
    except (RuntimeError, ValueError, TypeError) as exc:  # tensors that share memory, a dtype it has no name for
        lines = str(exc).strip().splitlines()
        raise WeightsError(lines[0] if lines else type(exc).__name__) from exc


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU) and metadata of a safetensors file; WeightsError, one line, when it is not one."""
    try:
        with safe_open(Path(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            return {name: f.get_tensor(name) for name in f.offset_keys()}, metadata  # in the file's order
    except OSError:
        raise  # a file that cannot be read, not a malformed one: the caller names it
    except Exception as exc:  # noqa: BLE001 (the package's SafetensorError, or torch refusing a shape it let through)
        lines = str(exc).strip().splitlines()
        raise WeightsError(lines[0] if lines else type(exc).__name__) from exc
