"""The performance-event tokenizer: round trips on real files, properties on random notes, robust decoding."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.performance import read_performance
from pipeline.tokenizer import (
    NOTE_OFF,
    NOTE_ON,
    PIECE_END,
    PIECE_START,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    bin_velocity,
    decode,
    encode,
    quantize,
    velocity_bin,
    write_midi,
)

TOLERANCE = 0.010 + 1e-9  # one time step


def assert_round_trip(onset, offset, pitch, velocity) -> None:  # noqa: ANN001
    """Every note comes back: same pitch, its velocity bin's value, both ends within one 10 ms step."""
    tokens, lengths = encode(np.zeros(len(onset), int), onset, offset, pitch, velocity)
    assert lengths.tolist() == [len(tokens)] and tokens[0] == PIECE_START and tokens[-1] == PIECE_END
    notes = decode(tokens)
    assert len(notes["onset"]) == len(onset)
    on_step, off_step = quantize(onset, offset)  # the order the notes come back in, not their values
    ours = np.lexsort((off_step, pitch, on_step))
    theirs = np.lexsort((notes["offset"], notes["pitch"], notes["onset"]))
    np.testing.assert_array_equal(notes["pitch"][theirs], np.asarray(pitch)[ours])
    np.testing.assert_array_equal(notes["velocity"][theirs], bin_velocity(velocity_bin(np.asarray(velocity)[ours])))
    assert np.abs(notes["onset"][theirs] - np.asarray(onset)[ours]).max() <= TOLERANCE
    assert np.abs(notes["offset"][theirs] - np.asarray(offset)[ours]).max() <= TOLERANCE


def test_round_trip_of_every_real_piece(real_events):
    table = pq.read_table(real_events / "notes")
    notes = {k: table[k].to_numpy() for k in table.column_names}
    order = np.argsort(notes["piece_id"], kind="stable")
    notes = {k: v[order] for k, v in notes.items()}
    ids, first, count = np.unique(notes["piece_id"], return_index=True, return_counts=True)
    assert len(ids) == 925
    for f, c in zip(first, count, strict=True):
        rows = slice(f, f + c)
        assert_round_trip(notes["onset"][rows], notes["offset"][rows], notes["pitch"][rows], notes["velocity"][rows])


def test_encoding_many_pieces_at_once_equals_encoding_each(real_events):
    table = pq.read_table(real_events / "notes", filters=[("piece_id", "<", 5)])
    n = {k: table[k].to_numpy() for k in table.column_names}
    together, lengths = encode(n["piece_id"], n["onset"], n["offset"], n["pitch"], n["velocity"])
    parts = []
    for i in range(5):
        rows = n["piece_id"] == i
        parts.append(
            encode(n["piece_id"][rows], n["onset"][rows], n["offset"][rows], n["pitch"][rows], n["velocity"][rows])[0]
        )
    assert lengths.tolist() == [len(p) for p in parts]
    np.testing.assert_array_equal(together, np.concatenate(parts))


@pytest.mark.parametrize("index", [0, 400, 924])
def test_midi_to_tokens_to_midi_on_real_files(real_events, tmp_path, index):
    from conftest import MAESTRO_ASAP

    piece = pq.read_table(real_events / "pieces.parquet").to_pylist()[index]
    perf = read_performance(MAESTRO_ASAP / piece["midi_filename"])
    tokens, _ = encode(np.zeros(len(perf.onset), int), perf.onset, perf.offset, perf.pitch, perf.velocity)
    decoded = decode(tokens)
    back = read_performance(write_midi(decoded, tmp_path / "back.mid"))
    np.testing.assert_allclose(back.onset, decoded["onset"], atol=1e-9)
    np.testing.assert_allclose(back.offset, decoded["offset"], atol=1e-9)
    np.testing.assert_array_equal(back.pitch, decoded["pitch"])
    np.testing.assert_array_equal(back.velocity, decoded["velocity"])
    assert len(back.onset) == len(perf.onset)


def note_lists(max_notes: int = 60):  # noqa: ANN201
    """Random piano performances; a pitch's later note never ends before its earlier one (as parse guarantees)."""
    note = st.tuples(
        st.floats(0, 40, allow_nan=False),
        st.floats(0.001, 6, allow_nan=False),
        st.integers(0, 127),
        st.integers(1, 127),
    )
    return st.lists(note, min_size=1, max_size=max_notes)


@settings(max_examples=200, deadline=None)
@given(note_lists())
def test_round_trip_of_random_notes(notes):
    notes.sort(key=lambda n: n[0])
    onset = np.array([n[0] for n in notes])
    offset = onset + np.array([n[1] for n in notes])
    pitch = np.array([n[2] for n in notes])
    for p in np.unique(pitch):  # FIFO pairing needs each pitch's offsets in onset order
        rows = np.flatnonzero(pitch == p)
        offset[rows] = np.maximum.accumulate(offset[rows])
    assert_round_trip(onset, offset, pitch, np.array([n[3] for n in notes]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-3, VOCAB_SIZE + 3), max_size=400))
def test_decoding_any_sequence_never_raises_and_gives_playable_notes(tokens):
    notes = decode(np.array(tokens, dtype=np.int64))
    assert np.all(notes["offset"] > notes["onset"])
    assert np.all(notes["pitch"] <= 127) and np.all((notes["velocity"] >= 1) & (notes["velocity"] <= 127))
    assert len(notes["onset"]) == sum(1 for t in tokens if 0 <= t < NOTE_OFF)


def test_decoding_malformed_sequences():
    tokens = [
        NOTE_OFF + 60,  # a release with nothing held: ignored
        VELOCITY + 10,  # velocity bin 10: 41
        NOTE_ON + 60,
        TIME_SHIFT + 49,  # 50 steps
        NOTE_OFF + 60,
        NOTE_ON + 62,  # never released: ends at the last step, here one step after it starts
        VELOCITY + 3,  # a velocity with no note after it
    ]
    notes = decode(np.array(tokens))
    assert notes["onset"].tolist() == [0.0, 0.5]
    assert notes["offset"].tolist() == [0.5, 0.51]
    assert notes["pitch"].tolist() == [60, 62] and notes["velocity"].tolist() == [41, 41]


def test_long_gaps_become_several_shifts_and_velocity_only_when_its_bin_changes():
    onset = np.array([0.0, 2.5, 2.5, 3.0])
    offset = onset + 0.25
    tokens, _ = encode(np.zeros(4, int), onset, offset, np.array([60, 62, 64, 65]), np.array([81, 82, 84, 20]))
    names = [
        "S"
        if t == PIECE_START
        else "E"
        if t == PIECE_END
        else f"on{t}"
        if t < NOTE_OFF
        else f"off{t - NOTE_OFF}"
        if t < TIME_SHIFT
        else f"shift{t - TIME_SHIFT + 1}"
        if t < VELOCITY
        else f"vel{t - VELOCITY}"
        for t in tokens.tolist()
    ]
    assert names == [
        "S",
        "vel20",
        "on60",
        "shift25",
        "off60",
        "shift100",
        "shift100",
        "shift25",
        "on62",
        "on64",
        "shift25",
        "off62",
        "off64",
        "shift25",
        "vel4",
        "on65",
        "shift25",
        "off65",
        "E",
    ]
