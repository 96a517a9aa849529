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


def test_each_token_carries_its_pieces_label_and_label_dropout_is_drawn_per_piece_and_epoch(tmp_path):
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 388, int(n)) for n in rng.integers(20, 60, 300)]
    folder = write_tokens(tmp_path / "tokens", {"train": pieces}, composers=("A", "B", "C"))
    store = PieceStore(folder, "train")
    plain = SegmentStream(store, batch_size=4, tgt_len=16, seed=3)
    kept = SegmentStream(store, batch_size=4, tgt_len=16, seed=3, labels=True)
    dropped = SegmentStream(store, batch_size=4, tgt_len=16, seed=3, labels=True, label_dropout=0.3)
    rows, labels = kept.rows_and_labels(0)
    assert np.array_equal(rows, plain.rows(0)) and np.array_equal(dropped.rows(0), rows)  # the tokens do not change
    # The label of every token is its piece's: find each piece by its PIECE_START and compare.
    for row, row_labels in zip(rows, labels, strict=True):
        starts = [*np.flatnonzero(row == PIECE_START), len(row)]
        assert starts[0] == 0
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            assert len(set(row_labels[a:b].tolist())) == 1 and row_labels[a] in (1, 2, 3)
    first, again, later = dropped.rows_and_labels(0)[1], dropped.rows_and_labels(0)[1], dropped.rows_and_labels(1)[1]
    assert np.array_equal(first, again)  # the same seed and epoch drop the same pieces
    zero_share = [(first == 0).mean(), (later == 0).mean()]
    assert all(0.15 < share < 0.45 for share in zero_share) and not np.array_equal(first == 0, later == 0)
    assert np.array_equal(first[first != 0], labels[first != 0])  # only dropped to 0, never changed
    segments = np.concatenate([s.labels for _, s in dropped.batches(0)], axis=1)
    np.testing.assert_array_equal(segments, first[:, : segments.shape[1]])
    resumed = np.concatenate([s.labels for _, s in dropped.batches(0, 5)], axis=1)
    np.testing.assert_array_equal(resumed, first[:, 5 * 16 : 5 * 16 + resumed.shape[1]])
    assert all(s.labels is None for _, s in plain.batches(0))


def test_label_dropout_picks_other_pieces_each_epoch(tmp_path):
    rng = np.random.default_rng(2)
    pieces = [rng.integers(0, 388, 30) for _ in range(200)]
    store = PieceStore(write_tokens(tmp_path / "tokens", {"train": pieces}), "train")
    stream = SegmentStream(store, batch_size=2, tgt_len=16, seed=3, labels=True, label_dropout=0.3)
    dropped = [stream._labels(epoch) == 0 for epoch in (0, 1)]
    assert not np.array_equal(*dropped) and all(0.2 < d.mean() < 0.4 for d in dropped)
    assert np.array_equal(stream._labels(1) == 0, dropped[1])  # and the same again for the same epoch
