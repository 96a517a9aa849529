"""Training segments: every token's position in its piece and the piano state computed on the device, against a loop
over the row and the numpy piano state of the whole row in one pass; a resumed epoch, and a process's own rows, give
the segments a fresh run of every row does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_tokens

from pipeline.music.performance_encoding import PIECE_START
from pipeline.music.piano_state import piano_state
from pipeline.token_folder import PieceStore
from pipeline.training.batches import device_batches
from pipeline.training.segments import SegmentStream

CPU = torch.device("cpu")


@pytest.fixture
def stream(tmp_path) -> SegmentStream:
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 388, int(n)) for n in rng.integers(3, 70, 40)]  # some shorter than a segment
    store = PieceStore(write_tokens(tmp_path / "tokens", {"train": pieces}), "train")
    return SegmentStream(store, batch_size=3, tgt_len=16, seed=5, state_input=True)


def test_positions_count_from_each_rows_latest_piece_start_and_the_state_is_the_rows(stream):
    rows = stream.rows(0)
    segments = [batch for _, batch in device_batches(stream, CPU)]
    assert len(segments) == (rows.shape[1] - 1) // 16 > 10
    seq_pos = torch.cat([s["seq_pos"] for s in segments], dim=1).numpy()
    side = torch.cat([s["side"] for s in segments], dim=1).numpy()
    for r, row in enumerate(rows):
        position = -1
        for t in range(seq_pos.shape[1]):
            position = 0 if row[t] == PIECE_START else position + 1
            assert seq_pos[r, t] == position, (r, t)
        np.testing.assert_array_equal(side[r], piano_state(row)[: side.shape[1]])
    assert (seq_pos == 0).sum() > 20  # many pieces begin inside the stream's segments
    assert side[..., :128].sum() > 100  # keys do sound


ALL, ODD, EVEN = slice(None), slice(1, None, 2), slice(0, None, 2)


@pytest.mark.parametrize(("start", "rows"), [(1, ALL), (7, ALL), (12, ALL), (0, ODD), (9, EVEN)])
def test_a_resumed_epoch_and_a_process_rows_give_the_segments_of_a_fresh_run_of_all_rows(stream, start, rows):
    fresh = dict(device_batches(stream, CPU))
    resumed = list(device_batches(stream, CPU, 0, start, rows))
    assert [k for k, _ in resumed] == list(range(start, len(fresh)))
    for k, batch in resumed:
        assert set(batch) == set(fresh[k]) == {"tokens", "targets", "seq_pos", "side"}
        for name, tensor in batch.items():
            torch.testing.assert_close(tensor, fresh[k][name][rows], rtol=0, atol=0, msg=f"{name} at {k}")


def test_without_the_state_input_no_side_is_made(stream):
    stream.state_input = False
    assert all("side" not in batch for _, batch in device_batches(stream, CPU, 0, 3))


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


def test_a_labelled_streams_own_rows_resumed_carry_each_tokens_label(tmp_path):
    rng = np.random.default_rng(4)
    pieces = [rng.integers(0, 388, int(n)) for n in rng.integers(10, 60, 60)]
    store = PieceStore(write_tokens(tmp_path / "tokens", {"train": pieces}, composers=("A", "B", "C")), "train")
    stream = SegmentStream(store, batch_size=4, tgt_len=16, seed=2, state_input=True, labels=True, label_dropout=0.2)
    tokens, labels = stream.rows_and_labels(0)
    fresh = dict(device_batches(stream, CPU))
    resumed = list(device_batches(stream, CPU, 0, 5, ODD))
    assert len(resumed) == len(fresh) - 5 > 3
    for k, batch in resumed:
        assert set(batch) == {"tokens", "targets", "seq_pos", "side", "labels"}
        span = slice(k * 16, (k + 1) * 16)
        np.testing.assert_array_equal(batch["labels"].numpy(), labels[ODD, span])
        np.testing.assert_array_equal(batch["tokens"].numpy(), tokens[ODD, span])
        for name, tensor in batch.items():
            torch.testing.assert_close(tensor, fresh[k][name][ODD], rtol=0, atol=0, msg=f"{name} at {k}")
    assert len(np.unique(labels)) == 4  # three composers and the dropped label 0


def test_transposition_moves_every_pitch_or_leaves_the_piece_as_it_is():
    from pipeline.training.segments import transpose

    def plain(tokens: np.ndarray, semitones: int, ranges: list) -> np.ndarray:  # one range at a time, as written
        out = tokens.astype(np.int64)
        for first, count in ranges:
            inside = (out >= first) & (out < first + count)
            if inside.any() and not (first <= out[inside].min() + semitones < out[inside].max() + semitones + 1 <=
                                     first + count):  # fmt: skip
                return tokens
            out[inside] += semitones
        return out.astype(tokens.dtype)

    rng, ranges, moved, kept = np.random.default_rng(7), [(0, 128), (128, 128)], 0, 0
    for _ in range(1500):
        low, high = sorted(rng.integers(0, 390, 2))
        tokens, semitones = rng.integers(low, high + 1, rng.integers(0, 40)).astype(np.uint16), int(rng.integers(-6, 7))
        got, expected = transpose(tokens, semitones, ranges), plain(tokens, semitones, ranges)
        assert got.dtype == tokens.dtype and np.array_equal(got, expected), (tokens, semitones)
        moved, kept = moved + (not np.array_equal(got, tokens)), kept + (semitones != 0 and np.array_equal(got, tokens))
    assert moved > 300 and kept > 100  # both branches ran


def test_the_next_epoch_laid_ahead_is_the_one_laid_on_demand(stream):
    import dataclasses

    ahead = dataclasses.replace(stream, ahead=True)
    first = [batch for _, batch in device_batches(ahead, CPU, 0)]
    assert list(ahead._next) == [1]  # laid while epoch 0 ran
    for epoch, batches in ((0, first), (1, [batch for _, batch in device_batches(ahead, CPU, 1)])):
        expected = [batch for _, batch in device_batches(stream, CPU, epoch)]
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected, strict=True):
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert not stream._next  # without `ahead`, nothing runs in the background
