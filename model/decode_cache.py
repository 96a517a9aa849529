"""The cache of one-token decoding steps (`TransformerXL.step`), which sampling uses: per layer, the memory's keys
and values in a sliding window, and the projected encodings of every distance."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from model.transformer_xl import AttnSpan, TransformerXL


class DecodeCache:
    """What one-token decoding steps reuse: per layer, the keys and values of the memory and the projected encodings
    of every distance (the paper's W_{k,R} R). A memory position's key and value depend only on its hidden state,
    since positions enter through R and the two biases, so they are computed once and slide with the memory.

    Each layer's keys live in a buffer twice the window long; the window moves along it and is copied back to the
    front when it reaches the end, so a step costs O(1) copies, not O(mem_len).
    """

    def __init__(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], r_head_k: list[torch.Tensor], span: AttnSpan
    ) -> None:
        b, h, mlen, d = keys[0].shape
        self.span, self.mem_len, self.length, self.start = span, span.mem_len, mlen, 0
        self.r_head_k = r_head_k  # per layer [mem_len + 1, h, d]: distances mem_len ... 0
        self.attn_mask = torch.zeros(1, mlen + 1, dtype=torch.bool, device=keys[0].device)  # set by each step
        size = 2 * (self.mem_len + 1)
        self.keys = [k.new_zeros(b, h, size, d) for k in keys]
        self.values = [v.new_zeros(b, h, size, d) for v in values]
        for buffer, kept in zip(self.keys + self.values, keys + values, strict=True):
            buffer[:, :, :mlen] = kept

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's key and value [b, h, 1, d] to a layer's window; return the window (memory, then them)."""
        end = self.start + self.length
        self.keys[layer][:, :, end : end + 1] = key
        self.values[layer][:, :, end : end + 1] = value
        return self.keys[layer][:, :, self.start : end + 1], self.values[layer][:, :, self.start : end + 1]

    def advance(self) -> None:
        """After a step through every layer: the memory keeps its last mem_len positions."""
        if self.length == self.mem_len:
            self.start += 1
        else:
            self.length += 1
        if self.start + self.length == self.keys[0].size(2):  # no room for the next step: move the window back
            for buffer in self.keys + self.values:
                buffer[:, :, : self.length] = buffer[:, :, self.start :].clone()
            self.start = 0


@torch.no_grad()
def decode_cache(model: TransformerXL, mems: list[torch.Tensor], span: AttnSpan | None = None) -> DecodeCache:
    """A cache for model.step(), holding the keys and values of `mems` (the memory model() returns with `span`)."""
    span = span or model.cfg.span()
    keys, values, r_head_k = model.project_memory(mems, span)
    return DecodeCache(keys, values, r_head_k, span)
