"""The encoding against Magenta's own library: note-seq 0.0.5, used the way Music Transformer's data pipeline uses it.

midi_file_to_note_sequence → apply_sustain_control_changes → quantize_note_sequence_absolute(100) →
Performance(num_velocity_bins=32) → PerformanceOneHotEncoding. The project's tokens between PIECE_START and
PIECE_END must equal that, token for token. Skipped, with a message, when note-seq is not installed.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor

import mido
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MAESTRO_ASAP, note, pedal, tempo, write_midi

from pipeline.music.midi import read_performance
from pipeline.music.performance_encoding import PIECE_END, PIECE_START, decode, encode

with warnings.catch_warnings():  # pydub, imported by note-seq, warns that ffmpeg is missing; no audio is used here
    warnings.simplefilter("ignore")
    note_seq = pytest.importorskip("note_seq", reason="note-seq is not installed (pip install -e '.[dev,oracle]')")
    from note_seq import midi_io, performance_lib, sequences_lib
    from note_seq.performance_encoder_decoder import PerformanceOneHotEncoding

ONE_HOT = PerformanceOneHotEncoding(num_velocity_bins=32)


def magenta_performance(path: str) -> performance_lib.Performance:
    """Music Transformer's performance of a MIDI file."""
    sequence = sequences_lib.apply_sustain_control_changes(midi_io.midi_file_to_note_sequence(path))
    return performance_lib.Performance(
        sequences_lib.quantize_note_sequence_absolute(sequence, 100), num_velocity_bins=32
    )


def magenta_tokens(path: str) -> np.ndarray:
    """note-seq's token ids for a MIDI file."""
    return np.array([ONE_HOT.encode_event(e) for e in magenta_performance(str(path))], np.int64)


def our_tokens(path: str) -> np.ndarray:
    """The project's tokens for a MIDI file (parse's reader, then the encoding), without PIECE_START/PIECE_END."""
    perf = read_performance(path)
    tokens, _ = encode(np.zeros(len(perf.onset), int), perf.onset, perf.offset, perf.pitch, perf.velocity)
    assert tokens[0] == PIECE_START and tokens[-1] == PIECE_END
    return tokens[1:-1].astype(np.int64)


def test_every_real_piece_encodes_exactly_as_note_seq(real_events):
    """The parse stage's tables, encoded as the tokenize stage encodes them, against note-seq on the same file."""
    pieces = pq.read_table(real_events / "pieces.parquet").to_pydict()
    table = pq.read_table(real_events / "notes")
    notes = {k: table[k].to_numpy() for k in ("piece_id", "onset", "offset", "pitch", "velocity")}
    order = np.argsort(notes["piece_id"], kind="stable")
    notes = {k: v[order] for k, v in notes.items()}
    tokens, lengths = encode(notes["piece_id"], notes["onset"], notes["offset"], notes["pitch"], notes["velocity"])
    ours = np.split(tokens.astype(np.int64), np.cumsum(lengths)[:-1])
    paths = [str(MAESTRO_ASAP / name) for name in pieces["midi_filename"]]
    assert len(paths) == len(ours) == 925
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        theirs = list(pool.map(magenta_tokens, paths, chunksize=8))
    differ = [p for p, a, b in zip(paths, ours, theirs, strict=True) if not np.array_equal(a[1:-1], b)]
    assert differ == [], f"{len(differ)} of {len(paths)} pieces differ from note-seq, first {differ[0]}"
    assert sum(len(t) for t in theirs) == len(tokens) - 2 * len(paths)


def test_decoding_real_tokens_gives_note_seqs_notes(real_events):
    """decode agrees with note-seq's Performance.to_sequence on what the encoder writes."""
    piece = pq.read_table(real_events / "pieces.parquet").to_pylist()[17]
    path = str(MAESTRO_ASAP / piece["midi_filename"])
    ours = decode(np.concatenate([[PIECE_START], our_tokens(path), [PIECE_END]]))
    sequence = magenta_performance(path).to_sequence()
    theirs = sorted((n.start_time, n.pitch, n.end_time, n.velocity) for n in sequence.notes)
    order = np.lexsort((ours["offset"], ours["pitch"], ours["onset"]))
    assert len(order) == len(theirs) > 1000
    for key, column in (("onset", 0), ("pitch", 1), ("offset", 2), ("velocity", 3)):
        np.testing.assert_allclose(ours[key][order], [n[column] for n in theirs], rtol=0, atol=1e-9, err_msg=key)


def on(tick: int, pitch: int, velocity: int = 64) -> tuple:
    return (tick, mido.Message("note_on", note=pitch, velocity=velocity))


def off(tick: int, pitch: int) -> tuple:
    return (tick, mido.Message("note_off", note=pitch))


# Files built to hit each rule where a reader could differ from Magenta's: (name, tracks, ticks per quarter).
TRICKY = {
    "zero-length key press under the pedal": [
        [tempo(0, 500_000)],
        [pedal(0, 127), on(96, 60), off(96, 60)] + note(200, 400, 62) + [pedal(900, 0)],
    ],
    "re-strike under the pedal ends a held note": [
        [tempo(0, 500_000)],
        [pedal(0, 100), on(0, 60, 30), on(240, 60, 90), off(480, 60), off(720, 60), pedal(960, 0)],
    ],
    "strikes of one pitch at one tick under the pedal": [
        [tempo(0, 500_000)],
        [pedal(0, 100), on(100, 64, 20), on(100, 64, 100), off(300, 64), off(310, 64), pedal(600, 0)],
    ],
    "press and lift at one tick, in either order": [
        [tempo(0, 500_000)],
        [
            *note(0, 100, 60),
            pedal(50, 127),
            pedal(100, 0),
            pedal(100, 127),
            *note(200, 250, 62),
            pedal(300, 127),
            pedal(300, 0),
            pedal(400, 100),
        ]
        + note(420, 430, 64),
    ],
    "key released as the pedal goes down, struck as it lifts": [
        [tempo(0, 500_000)],
        [*note(0, 240, 60), pedal(240, 127), *note(300, 320, 67), pedal(480, 0), *note(480, 500, 67)],
    ],
    "a pedal never lifted, and a soft pedal after the last note": [
        [tempo(0, 500_000)],
        [pedal(0, 127), *note(10, 200, 60), *note(250, 300, 64), pedal(500, 127), pedal(700, 127, 67)],
    ],
    "half steps and notes shorter than a step": [
        [tempo(0, 500_000)],
        note(6, 7, 60) + note(18, 30, 61) + note(30, 30 + 1, 62) + note(1000, 1002, 63),
    ],
    "onsets in one step, pitches out of order": [
        [tempo(0, 500_000)],
        note(960, 1400, 72) + note(962, 1399, 48) + note(963, 1401, 60) + note(961, 1500, 84),
    ],
    "tempo changes, odd tempos and resolutions": [
        [tempo(0, 512_820), tempo(777, 498_123), tempo(1500, 498_123), tempo(2000, 731_001)],
        note(0, 700, 60) + note(770, 1600, 62) + note(1999, 2600, 64) + note(2500, 4000, 65),
    ],
    "long gaps, every velocity bin": [
        [tempo(0, 500_000)],
        [m for v in range(1, 128, 3) for m in note(v * 400, v * 400 + 50, 21 + v % 80, v)],
    ],
    "two tracks, each with its own pedal": [
        [tempo(0, 500_000)],
        [pedal(0, 127), *note(0, 100, 60), pedal(600, 0)],
        [*note(50, 120, 60), *note(300, 350, 62)],
    ],
}


@pytest.mark.parametrize("name", list(TRICKY))
@pytest.mark.parametrize("tpq", [480, 384, 1000])
def test_tricky_files_encode_exactly_as_note_seq(tmp_path, name, tpq):
    path = write_midi(tmp_path / "t.mid", TRICKY[name], tpq=tpq)
    theirs = magenta_tokens(path)
    assert len(theirs) > 2
    np.testing.assert_array_equal(our_tokens(path), theirs)


def random_performance(rng: np.random.Generator) -> list[list[tuple]]:
    """One or two tracks of notes on a coarse grid, so that strikes, releases and pedal changes often share a tick;
    some key presses last no time at all, and sometimes the tempo changes."""
    grid = int(rng.choice([5, 10, 24]))
    tracks = [[tempo(0, 500_000)] + ([tempo(int(rng.integers(1, 12)) * grid, 431_000)] if rng.random() < 0.3 else [])]
    for _ in range(int(rng.integers(1, 3))):
        events = []
        for pitch in rng.choice(np.arange(58, 66), size=int(rng.integers(1, 5)), replace=False).tolist():
            tick = int(rng.integers(0, 5)) * grid
            while tick < 12 * grid:  # one pitch's notes follow each other: no pitch is struck twice while held
                length = int(rng.integers(0, 6)) * grid
                events += note(tick, tick + length, pitch, int(rng.integers(1, 128)))
                tick += length + int(rng.integers(0, 4)) * grid
        events += [pedal(int(rng.integers(0, 17)) * grid, int(rng.choice([0, 63, 64, 127]))) for _ in range(8)]
        tracks.append(events)
    return tracks


def test_random_performances_encode_exactly_as_note_seq(tmp_path):
    rng = np.random.default_rng(2024)
    compared = 0
    for k in range(150):
        path = write_midi(tmp_path / f"r{k}.mid", random_performance(rng), tpq=480)
        theirs = magenta_tokens(path)
        if len(theirs) == 0:  # only zero-length presses: the project refuses such a file (no notes)
            continue
        np.testing.assert_array_equal(our_tokens(path), theirs, err_msg=f"random performance {k}")
        compared += 1
    assert compared > 120
