"""The performance encoding: round trips on real files, properties on random notes, robust decoding."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.music.midi import read_performance, write_midi
from pipeline.music.performance_encoding import (
    NOTE_OFF,
    NOTE_ON,
    PIECE_END,
    PIECE_START,
    STEP_S,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    bin_velocity,
    decode,
    elapsed_steps,
    encode,
    encode_opening,
    quantize,
    time_steps,
    velocity_bin,
    vocab,
)

HALF_STEP = STEP_S / 2 + 1e-9


def assert_round_trip(onset, offset, pitch, velocity) -> None:  # noqa: ANN001
    """Every note comes back: same pitch, its velocity bin's value, both ends within half a 10 ms step, except the
    end of a note that quantizing would leave with no length, which lasts exactly one step."""
    tokens, lengths = encode(np.zeros(len(onset), int), onset, offset, pitch, velocity)
    assert lengths.tolist() == [len(tokens)] and tokens[0] == PIECE_START and tokens[-1] == PIECE_END
    notes = decode(tokens)
    assert len(notes["onset"]) == len(onset)
    on_step, off_step = quantize(onset, offset)  # the order the notes come back in, not their values
    ours = np.lexsort((off_step, pitch, on_step))
    theirs = np.lexsort((notes["offset"], notes["pitch"], notes["onset"]))
    np.testing.assert_array_equal(notes["pitch"][theirs], np.asarray(pitch)[ours])
    np.testing.assert_array_equal(notes["velocity"][theirs], bin_velocity(velocity_bin(np.asarray(velocity)[ours])))
    assert np.abs(notes["onset"][theirs] - np.asarray(onset)[ours]).max() <= HALF_STEP
    off_error = notes["offset"][theirs] - np.asarray(offset)[ours]
    one_step = np.isclose(notes["offset"][theirs] - notes["onset"][theirs], STEP_S)
    short = np.asarray(offset)[ours] - np.asarray(onset)[ours] < STEP_S
    assert np.all((np.abs(off_error) <= HALF_STEP) | (one_step & short & (off_error > 0)))


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


def token_names(tokens: np.ndarray) -> str:
    """Tokens as short readable names: S, E, on60, off60, shift25 (steps), vel20 (bin), space-separated."""
    names = []
    for t in tokens.tolist():
        if t in (PIECE_START, PIECE_END):
            names.append("S" if t == PIECE_START else "E")
        elif t < NOTE_OFF:
            names.append(f"on{t}")
        elif t < TIME_SHIFT:
            names.append(f"off{t - NOTE_OFF}")
        else:
            names.append(f"shift{t - TIME_SHIFT + 1}" if t < VELOCITY else f"vel{t - VELOCITY}")
    return " ".join(names)


def test_long_gaps_become_several_shifts_and_velocity_only_when_its_bin_changes():
    onset = np.array([0.0, 2.5, 2.5, 3.0])
    offset = onset + 0.25
    tokens, _ = encode(np.zeros(4, int), onset, offset, np.array([60, 62, 64, 65]), np.array([81, 82, 84, 20]))
    assert token_names(tokens) == (
        "S vel20 on60 shift25 off60 shift100 shift100 shift25 on62 on64 shift25 off62 off64 shift25 vel4 on65 shift25 "
        "off65 E"
    )


def test_magenta_rounding_and_order_within_a_step():
    # Rows sorted by onset in seconds, then pitch, as parse writes them. Within one 10 ms step Magenta orders the
    # strikes, and the releases, by the notes' onsets in seconds, not by pitch: 64 (at 1.001 s) before 60 (1.003 s).
    onset = np.array([0.125, 1.001, 1.003, 1.005, 2.0])
    offset = np.array([0.5, 1.5004, 1.4996, 1.6, 2.003])
    tokens, _ = encode(np.zeros(5, int), onset, offset, np.array([70, 64, 60, 62, 72]), np.full(5, 64))
    # 0.125 s is 12.5 steps: half a step rounds up to 13 (round-half-to-even would give 12). 1.005 s times 100 is
    # 100.49999999999999 in floating point, so it rounds down to step 100, as note-seq's product does. The note of
    # 3 ms at 2.0 s would start and end at step 200: it ends one step later instead.
    assert token_names(tokens) == (
        "S shift13 vel15 on70 shift37 off70 shift50 on64 on60 on62 shift50 off64 off60 shift10 off62 shift40 on72 "
        "shift1 off72 E"
    )


def test_quantize_rounds_half_up_and_gives_every_note_a_step():
    on, off = quantize(np.array([0.0, 0.004999, 0.125, 0.37]), np.array([0.004, 0.005, 0.135, 0.3749]))
    assert on.tolist() == [0, 0, 13, 37] and off.tolist() == [1, 1, 14, 38]


def test_an_opening_lasts_until_its_end_rounded_half_up_to_a_step():
    from decimal import ROUND_HALF_UP, Decimal

    one = {"onset": np.array([0.0]), "offset": np.array([0.01]), "pitch": np.array([60]), "velocity": np.array([64])}
    for end in (0.015, 0.125, 0.29, 0.5, 1.0, 3.7):  # as written, half a step rounds up; 0.29 is 28.99… × 100
        tokens, steps = encode_opening(one, end)
        expected = int((Decimal(repr(end)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))  # decimal, not float
        assert steps == expected == elapsed_steps(tokens), end
        assert tokens[0] == PIECE_START and PIECE_END not in tokens.tolist()
        shifts = tokens[np.flatnonzero(tokens == NOTE_OFF + 60)[0] + 1 :] - TIME_SHIFT + 1  # after the note's release
        assert shifts.sum() == expected - 1 and (shifts[:-1] == 100).all() and 1 <= shifts[-1] <= 100
        back = decode(np.append(tokens, PIECE_END))
        assert back["onset"].tolist() == [0.0] and back["offset"].tolist() == [0.01]


def test_time_steps_counts_each_time_shift_alike_in_numpy_and_torch():
    import torch

    ids = np.arange(-3, VOCAB_SIZE + 3, dtype=np.int64)
    # Independently, from the vocabulary's own description: TIME_SHIFT ids mean 1 + their offset steps.
    (shift,) = [e for e in vocab()["events"] if e["name"] == "TIME_SHIFT"]
    expected = [i - shift["first_id"] + 1 if 0 <= i - shift["first_id"] < shift["count"] else 0 for i in ids]
    assert time_steps(ids).tolist() == expected
    assert time_steps(torch.from_numpy(ids)).tolist() == expected
    assert elapsed_steps(ids) == sum(expected) == 5050
    tokens = np.array([PIECE_START, 60, 256 + 9, 60 + 128, 256 + 99, PIECE_END])
    assert decode(tokens)["offset"].tolist() == [10 * STEP_S]  # decode's clock is the same count
