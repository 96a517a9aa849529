"""model/weights.py against the `safetensors` package, both ways, and on files that are not weights."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from model.weights import WeightsError, load_safetensors, save_safetensors

safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package (dev extra) is the oracle")


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "layers.0.w": torch.randn(3, 5, generator=g),
        "emb": torch.randn(7, 2, generator=g).to(torch.bfloat16),
        "half": torch.randn(4, generator=g).half(),
        "steps": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=g).t(),  # not contiguous: written in its logical order
    }


def test_the_package_reads_what_we_write(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(tensors(), path, {"format": "pt"})
    theirs = safetensors_torch.load_file(path)
    assert set(theirs) == set(tensors())
    for name, tensor in tensors().items():
        assert theirs[name].dtype == tensor.dtype and torch.equal(theirs[name], tensor), name
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    (size,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + size) % 8 == 0  # the data starts aligned, as the package writes it


def test_we_read_what_the_package_writes(tmp_path):
    path = tmp_path / "w.safetensors"
    written = {k: v.contiguous() for k, v in tensors().items()}
    safetensors_torch.save_file(written, path, metadata={"format": "pt", "note": "x"})
    ours, metadata = load_safetensors(path)
    assert metadata == {"format": "pt", "note": "x"}
    assert set(ours) == set(written)
    for name, tensor in written.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape and torch.equal(ours[name], tensor)


def header_file(tmp_path, header: dict, body: bytes) -> object:
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


@pytest.mark.parametrize(
    ("header", "body", "reason"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "do not follow on or do not fit"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "bytes after the last tensor"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "do not follow on"),
        ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "not a tensor entry"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "not a tensor entry"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "not a tensor entry"),
        ({"a": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}}, b"", "not a tensor entry"),
        ({"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}, b"", "not a tensor entry"),
        ({"__metadata__": [1, 2]}, b"", "not a map of strings"),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            b"\0" * 4,
            "do not follow on",
        ),
    ],
)
def test_malformed_headers_are_refused(tmp_path, header, body, reason):
    with pytest.raises(WeightsError, match=reason):
        load_safetensors(header_file(tmp_path, header, body))


def test_files_that_are_not_weights_are_refused(tmp_path):
    short, huge, text = tmp_path / "short", tmp_path / "huge", tmp_path / "text"
    short.write_bytes(b"\1\2")
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    text.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    for path, reason in ((short, "shorter than"), (huge, "a header of"), (text, "not JSON")):
        with pytest.raises(WeightsError, match=reason):
            load_safetensors(path)
    with pytest.raises(WeightsError, match="has no safetensors name"):
        save_safetensors({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.safetensors")
