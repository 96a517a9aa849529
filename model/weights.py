"""Weights in the safetensors format, the ecosystem's way to share a model: a little-endian u64 header length, a
JSON header naming each tensor's dtype, shape and byte range, then the raw bytes. Reading it parses JSON and copies
bytes, so a file can run no code. Written here in a few lines rather than taken from the `safetensors` package, so
that a machine with only torch can load a model; the tests check both ways against that package.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 << 20  # the safetensors package's own limit: a larger header is not a weights file
MAX_DIM = 2**40  # a larger dimension is no tensor a file can hold (and would overflow torch's sizes)
ALIGN = 8  # the header is padded with spaces so that the data starts on an 8-byte boundary


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
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU) and metadata of a safetensors file; WeightsError when it is not one."""
    data = bytearray(Path(path).read_bytes())
    if len(data) < 8:
        raise WeightsError("shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER, len(data) - 8):
        raise WeightsError(f"a header of {size} bytes in a file of {len(data)}")
    try:
        header = json.loads(data[8 : 8 + size].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise WeightsError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError("__metadata__ is not a map of strings")
    body, start = memoryview(data)[8 + size :], 0
    tensors = {}
    for (begin, end), name, entry in sorted((_offsets(name, entry), name, entry) for name, entry in header.items()):
        dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
        count = 1
        for dim in shape:
            count *= dim
        if begin != start or end - begin != count * dtype.itemsize or end > len(body):
            raise WeightsError(f"{name}: bytes {begin}..{end} do not follow on or do not fit its shape {shape}")
        flat = torch.frombuffer(body[begin:end], dtype=dtype) if count else torch.empty(0, dtype=dtype)
        tensors[name], start = flat.reshape(shape), end
    if start != len(body):
        raise WeightsError(f"{len(body) - start} bytes after the last tensor")
    return tensors, metadata


def _offsets(name: str, entry: object) -> tuple[int, int]:
    """An entry's [begin, end), once its dtype, shape and offsets are checked to be well-formed."""
    ok = (
        isinstance(entry, dict)
        and entry.get("dtype") in DTYPES
        and isinstance(entry.get("shape"), list)
        and all(isinstance(d, int) and 0 <= d < MAX_DIM for d in entry["shape"])
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and all(isinstance(o, int) for o in entry["data_offsets"])
        and 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1]
    )
    if not ok:
        raise WeightsError(f"{name}: not a tensor entry ({json.dumps(entry)[:80]})")
    return entry["data_offsets"][0], entry["data_offsets"][1]
