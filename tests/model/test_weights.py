"""model/weights.py: the `safetensors` package writes and reads the weights, both ways against the package's own calls;
and the package's refusal of files that are not weights, as one-line WeightsErrors."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from model.weights import WeightsError, load_safetensors, save_safetensors


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
    theirs = safetensors.torch.load_file(path)
    assert set(theirs) == set(tensors())
    for name, tensor in tensors().items():
        assert theirs[name].dtype == tensor.dtype and torch.equal(theirs[name], tensor), name
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    (size,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + size) % 8 == 0  # the data starts aligned, as the package writes it


def test_we_read_what_the_package_writes(tmp_path):
    path = tmp_path / "w.safetensors"
    written = {k: v.contiguous() for k, v in tensors().items()}
    safetensors.torch.save_file(written, path, metadata={"format": "pt", "note": "x"})
    ours, metadata = load_safetensors(path)
    assert metadata == {"format": "pt", "note": "x"}
    assert set(ours) == set(written)
    for name, tensor in written.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape and torch.equal(ours[name], tensor)


def test_the_file_is_the_packages_own_serialisation(tmp_path):
    # Written by the package: the bytes its in-memory serialiser gives for the same tensors and metadata.
    path = tmp_path / "w.safetensors"
    save_safetensors(tensors(), path, {"format": "pt"})
    expected = safetensors.torch.save({k: v.contiguous() for k, v in tensors().items()}, metadata={"format": "pt"})
    assert path.read_bytes() == expected
    save_safetensors(tensors(), tmp_path / "bare.safetensors")  # no metadata: no __metadata__ entry at all
    assert b"__metadata__" not in (tmp_path / "bare.safetensors").read_bytes()


def with_header(header: object, body: bytes = b"", length: int | None = None) -> bytes:
    """A file of `header` as JSON after its length (or a `length` that lies about it), then `body`."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


GOOD = with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "header too small"),
        (b"\1\2", "header too small"),
        (GOOD[:-3], "not fully covered"),  # truncated in the tensors' bytes
        (GOOD[:20], "invalid header length"),  # truncated in the header
        (GOOD + b"\0" * 8, "not fully covered"),  # bytes after the last tensor
        (struct.pack("<Q", 100) + b"{}", "invalid header length"),  # a length past the end of the file
        (bytes(range(256)) * 4, "header too large"),  # garbage: its first 8 bytes read as a length of ~2**58
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "invalid UTF-8"),
        (struct.pack("<Q", 4) + b"abcd", "invalid JSON"),
        (struct.pack("<Q", 2) + b"[]", "invalid JSON"),
        (with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "not fully covered"),
        (with_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "invalid offset"),
        (with_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "invalid offset"),
        (with_header({"a": F32, "b": F32}, b"\0" * 4), "invalid offset"),  # two tensors on the same bytes
        (with_header({"a": {**F32, "dtype": "Q7"}}, b"\0" * 4), "unknown variant `Q7`"),
        (with_header({"a": {**F32, "shape": [-1]}}, b"\0" * 4), "invalid value: integer `-1`"),
        (with_header({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "missing field `data_offsets`"),
        (with_header({"a": {"dtype": "F32", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}), "overflow"),
        (with_header({"a": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}}), "Overflow"),  # torch's
        (with_header({"a": {"dtype": "F32", "shape": [2**34], "data_offsets": [0, 2**36]}}, b"\0" * 8), "not fully"),
        (with_header({"__metadata__": [1, 2]}), "expected a map"),
        (with_header({"__metadata__": {"format": 1}}), "expected a string"),
    ],
)
def test_malformed_files_are_refused_by_the_package_in_one_line(tmp_path, data, reason):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(WeightsError, match=reason) as error:
        load_safetensors(path)
    assert "\n" not in str(error.value), str(error.value)


def test_a_header_over_the_package_cap_is_refused_before_it_is_read(tmp_path):
    # What replaced our own 100 MiB cap: the package's, 100,000,000 bytes, checked before the file's length is, so
    # a header this long is refused even in a file that holds it (sparse here: no disk is used) and 2**40 in any.
    path = tmp_path / "huge.safetensors"
    for length in (100_000_001, 2**40, 2**64 - 1):
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", length) + b"{")
            f.truncate(8 + min(length, 100_000_001))
        with pytest.raises(WeightsError, match="^Error while deserializing header: header too large$"):
            load_safetensors(path)
    path.write_bytes(struct.pack("<Q", 100_000_000) + b"{}")  # the cap itself: refused for the file's length only
    with pytest.raises(WeightsError, match="invalid header length"):
        load_safetensors(path)


def test_a_missing_file_is_an_os_error_and_tensors_that_share_memory_are_refused_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "absent.safetensors")
    shared = torch.zeros(4)
    with pytest.raises(WeightsError, match=r"^Some tensors share memory") as refused:
        save_safetensors({"a": shared, "b": shared}, tmp_path / "c.safetensors")
    assert "\n" not in str(refused.value)
