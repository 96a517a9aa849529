"""Weights in the safetensors format, the ecosystem's way to share a model: a JSON header naming each tensor's dtype,
shape and byte range, then the raw bytes, so a file can run no code.

The `safetensors` package reads it: it parses and checks the header (a length over its 100 MB cap or past the end of
the file, offsets that leave gaps or overlap, shapes that do not fit their bytes) before it maps any tensor, and this
module parses no bytes itself. Writing stays here, in a few lines: the package's writer orders the tensors by dtype
and name, where the train stage has always written them in the state dict's order, and its file must not change.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
ALIGN = 8  # the header is padded with spaces so that the data starts on an 8-byte boundary, as the package pads it


class WeightsError(ValueError):
    """A file that is not a well-formed safetensors file, with the reason."""


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (name -> tensor, any device) and string `metadata` to `path` in the safetensors format."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        if tensor.dtype not in NAMES:
            raise WeightsError(f"{name}: dtype {tensor.dtype} has no safetensors name")
        blob = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % ALIGN)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)  # the header's length: a little-endian u64
        for blob in blobs:
            f.write(blob)


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
