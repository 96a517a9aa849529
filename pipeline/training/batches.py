"""What the training loop feeds the model: a segment's rows as tensors on the device, with the piano state computed
there (no host work per row, no host sync), and the validation NLL it logs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from model import TransformerXL
from model.device import autocast
from pipeline.music.piano_state_torch import PianoState
from pipeline.training.segments import Segment, SegmentStream


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integers as int64, floats as float32, on `device`; to a GPU through pinned memory without waiting, so the host
    never stalls on it."""
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def segment_tensors(segment: Segment, device: torch.device) -> dict[str, torch.Tensor]:
    """A segment as the model's inputs on `device`: tokens, targets, seq_pos, and labels when it has them."""
    arrays = {"tokens": segment.tokens, "targets": segment.targets, "seq_pos": segment.seq_pos}
    if segment.labels is not None:
        arrays["labels"] = segment.labels
    if segment.texture is not None:
        arrays["texture"] = segment.texture
    return {name: to_device(array, device) for name, array in arrays.items()}


def device_batches(
    stream: SegmentStream, device: torch.device, epoch: int = 0, start: int = 0, rows: slice = slice(None)
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(segment number, the model's inputs on `device`) for the batch rows `rows` of `stream.batches`, with the piano
    state after each token (`side`, and what the model reads of its piece's texture track where the stream has
    one) computed on the device for a state-input stream, carried from segment to segment and replayed from the
    current pieces' starts when the epoch resumes midway."""
    piano = None
    for k, segment in stream.batches(epoch, start, rows):
        batch = segment_tensors(segment, device)
        if stream.state_input:
            if piano is None:
                piano = PianoState(len(segment.tokens), device)
                if segment.before is not None:
                    piano(to_device(segment.before, device))
            batch["side"] = piano(batch["tokens"], batch.pop("texture", None))  # with each token's track row
        yield k, batch


@torch.no_grad()
def validation_nll(
    model: TransformerXL, stream: SegmentStream, max_segments: int, device: torch.device, dtype: torch.dtype | None
) -> float:
    """The validation NLL that training logs: the mean negative log-likelihood per token (nats) over a stream's first
    segments, memory carried (the evaluate stage scores every piece with its own protocol)."""
    was_training = model.training
    model.eval()
    mems, total, count = None, 0.0, 0
    for k, batch in device_batches(stream, device):
        if k >= max_segments:
            break
        with autocast(device, dtype):
            _, loss, mems = model(mems=mems, **batch)
        total, count = total + float(loss) * batch["targets"].numel(), count + batch["targets"].numel()
    model.train(was_training)
    return total / max(count, 1)
