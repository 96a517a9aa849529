"""What the training loop feeds the model: a segment's rows as tensors on the device, and the validation NLL it logs."""

from __future__ import annotations

import numpy as np
import torch

from model import TransformerXL
from model.device import autocast
from pipeline.segments import Segment, SegmentStream


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integers as int64, floats as float32, on `device`; to a GPU through pinned memory without waiting, so the host
    never stalls on it."""
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def segment_tensors(segment: Segment, device: torch.device, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """A segment's rows as the model's inputs: tokens, targets, seq_pos, and side and labels when it has them."""
    arrays = {"tokens": segment.tokens, "targets": segment.targets, "seq_pos": segment.seq_pos}
    for name in ("side", "labels"):
        if getattr(segment, name) is not None:
            arrays[name] = getattr(segment, name)
    return {name: to_device(array[rows], device) for name, array in arrays.items()}


@torch.no_grad()
def validation_nll(
    model: TransformerXL, stream: SegmentStream, max_segments: int, device: torch.device, dtype: torch.dtype | None
) -> float:
    """The validation NLL that training logs: the mean negative log-likelihood per token (nats) over a stream's first
    segments, memory carried (the evaluate stage scores every piece with its own protocol)."""
    was_training = model.training
    model.eval()
    mems, total, count = None, 0.0, 0
    for k, segment in stream.batches(0):
        if k >= max_segments:
            break
        batch = segment_tensors(segment, device)
        with autocast(device, dtype):
            _, loss, mems = model(mems=mems, **batch)
        total, count = total + float(loss) * segment.targets.size, count + segment.targets.size
    model.train(was_training)
    return total / max(count, 1)
