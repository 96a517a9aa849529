"""Training segments: every token's position in its piece and the piano state, against a loop over the row and the
piano state of the whole row in one pass; a resumed epoch gives the segments a fresh one does."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_tokens

from pipeline.music.performance_encoding import PIECE_START
from pipeline.music.piano_state import piano_state
from pipeline.segments import PieceStore, SegmentStream


@pytest.fixture
def stream(tmp_path) -> SegmentStream:
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 388, int(n)) for n in rng.integers(3, 70, 40)]  # some shorter than a segment
    store = PieceStore(write_tokens(tmp_path / "tokens", {"train": pieces}), "train")
    return SegmentStream(store, batch_size=3, tgt_len=16, seed=5, state_input=True)


def test_positions_count_from_each_rows_latest_piece_start_and_the_state_is_the_rows(stream):
    rows = stream.rows(0)
    segments = list(stream.batches(0))
    assert len(segments) == (rows.shape[1] - 1) // 16 > 10
    seq_pos = np.concatenate([s.seq_pos for _, s in segments], axis=1)
    side = np.concatenate([s.side for _, s in segments], axis=1)
    for r, row in enumerate(rows):
        position = -1
        for t in range(seq_pos.shape[1]):
            position = 0 if row[t] == PIECE_START else position + 1
            assert seq_pos[r, t] == position, (r, t)
        np.testing.assert_array_equal(side[r], piano_state(row)[: side.shape[1]])
    assert (seq_pos == 0).sum() > 20  # many pieces begin inside the stream's segments


@pytest.mark.parametrize("start", [1, 7, 12])
def test_a_resumed_epoch_gives_the_segments_of_a_fresh_one(stream, start):
    fresh = {k: s for k, s in stream.batches(0)}
    for k, resumed in stream.batches(0, start):
        for name in ("tokens", "targets", "seq_pos", "side"):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh[k], name), err_msg=f"{name} at {k}")


def test_without_the_state_input_no_side_is_made(stream):
    stream.state_input = False
    assert all(s.side is None for _, s in stream.batches(0))
