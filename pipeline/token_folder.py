"""The token folder that the tokenize stage writes and the others read: vocab.json, and per split an index.json of its
pieces and their memory-mapped uint16 shards. Imports only numpy and the standard library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError


def load_vocab(tokens: Path) -> dict:
    """The vocabulary the tokenize stage wrote (vocab.json)."""
    path = Path(tokens) / "vocab.json"
    if not path.is_file():
        raise PipelineError(f"{path}: no vocabulary (run the tokenize stage first)")
    return json.loads(path.read_text())


class PieceStore:
    """The pieces of one split: its index.json and memory-mapped uint16 shards."""

    def __init__(self, tokens: Path, split: str) -> None:
        folder = self.folder = Path(tokens) / split
        index_path = folder / "index.json"
        if not index_path.is_file():
            raise PipelineError(f"{index_path}: no piece index for split '{split}' (run the tokenize stage first)")
        self.index = json.loads(index_path.read_text())
        self.shards = {}
        for shard in sorted(set(self.index["shard"])):
            path = folder / f"shard-{shard:05d}.npy"
            if not path.is_file():
                raise PipelineError(f"{path}: shard listed in {index_path} is missing")
            self.shards[shard] = np.load(path, mmap_mode="r")
        if not self.index["piece_id"]:
            raise PipelineError(f"{index_path}: split '{split}' holds no pieces")

    def __len__(self) -> int:
        return len(self.index["piece_id"])

    def piece(self, i: int) -> np.ndarray:
        """The tokens of the i-th piece copy, PIECE_START to PIECE_END."""
        shard, start, length = self.index["shard"][i], self.index["start"][i], self.index["length"][i]
        return np.asarray(self.shards[shard][start : start + length])

    @property
    def total_tokens(self) -> int:
        return int(sum(self.index["length"]))
