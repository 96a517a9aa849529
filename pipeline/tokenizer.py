"""Music Transformer's performance-event vocabulary (Huang et al. 2018, after Oore et al. 2018), vectorised.

Ids 0-127 NOTE_ON(pitch), 128-255 NOTE_OFF(pitch), 256-355 TIME_SHIFT of 1-100 steps of 10 ms, 356-387
VELOCITY in 32 bins (emitted only when the bin changes), then PIECE_START and PIECE_END.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

NOTE_ON, NOTE_OFF, TIME_SHIFT, VELOCITY = 0, 128, 256, 356
SHIFT_STEPS, VELOCITY_BINS = 100, 32
PIECE_START, PIECE_END = 388, 389
VOCAB_SIZE = 390
STEP_S = 0.01  # one time step: 10 ms
STEPS_PER_SECOND = 100  # times are multiplied by this (not divided by STEP_S), as note-seq does, for the same floats
DEFAULT_VELOCITY = 64  # for a NOTE_ON that no VELOCITY precedes


def velocity_bin(velocity: np.ndarray) -> np.ndarray:
    """MIDI velocity 1-127 to a bin 0-31 (Magenta's bins of four)."""
    return (np.clip(np.asarray(velocity, np.int64), 1, 127) - 1) // 4


def bin_velocity(bin_: np.ndarray) -> np.ndarray:
    """A velocity bin back to the lowest MIDI velocity it holds."""
    return 1 + 4 * np.asarray(bin_, np.int64)


def vocab() -> dict:
    """The vocabulary as data, so that model code needs no music knowledge (written to vocab.json)."""
    return {
        "vocab_size": VOCAB_SIZE,
        "token_dtype": "uint16",
        "step_seconds": STEP_S,
        "events": [
            {"name": "NOTE_ON", "first_id": NOTE_ON, "count": 128, "meaning": "pitch"},
            {"name": "NOTE_OFF", "first_id": NOTE_OFF, "count": 128, "meaning": "pitch"},
            {"name": "TIME_SHIFT", "first_id": TIME_SHIFT, "count": SHIFT_STEPS, "meaning": "1 + id offset steps"},
            {"name": "VELOCITY", "first_id": VELOCITY, "count": VELOCITY_BINS, "meaning": "bin of 4 velocities"},
        ],
        "specials": {"piece_start": PIECE_START, "piece_end": PIECE_END},
    }


def _group_arange(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each count c, concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def quantize(onset: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Note times in seconds to 10 ms steps as Magenta quantizes them: half a step rounds up, and a note that would
    last no step ends one step after it starts."""
    on_step = np.floor(np.asarray(onset, np.float64) * STEPS_PER_SECOND + 0.5).astype(np.int64)
    off_step = np.floor(np.asarray(offset, np.float64) * STEPS_PER_SECOND + 0.5).astype(np.int64)
    off_step = np.where(off_step == on_step, on_step + 1, off_step)
    return on_step, off_step


def encode(
    piece: np.ndarray, onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray, velocity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Encode the notes of one or more pieces (rows grouped by `piece`, in piece order) into one token array.

    Returns the uint16 tokens and each piece's token count; every piece is PIECE_START ... PIECE_END.
    """
    piece = np.asarray(piece)
    n = len(piece)
    on_step, off_step = quantize(onset, offset)
    # Rows come grouped by piece, so piece numbers follow from where the piece id changes (no sort needed).
    new_piece = np.concatenate([[True], piece[1:] != piece[:-1]]) if n else np.zeros(0, bool)
    piece_index = np.cumsum(new_piece) - 1
    n_pieces = int(new_piece.sum())

    # Events in Magenta's order: by step; within a step, releases before strikes (a re-struck pitch is released
    # first), and each kind in the order of the notes' onsets in seconds, then pitch, which is the order of the rows.
    # The stable sort keeps that row order among events of one (piece, step, kind).
    ev_piece = np.concatenate([piece_index, piece_index])
    ev_step = np.concatenate([on_step, off_step])
    ev_is_on = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    ev_pitch = np.concatenate([pitch, pitch]).astype(np.int64)
    ev_vel = np.concatenate([velocity_bin(velocity), np.zeros(n, np.int64)])
    span = int(ev_step.max()) + 1 if n else 1
    order = np.argsort((ev_piece * span + ev_step) * 2 + ev_is_on, kind="stable")
    ev_piece, ev_step, ev_is_on, ev_pitch, ev_vel = (a[order] for a in (ev_piece, ev_step, ev_is_on, ev_pitch, ev_vel))

    first_in_piece = np.concatenate([[True], ev_piece[1:] != ev_piece[:-1]])
    delta = np.where(first_in_piece, ev_step, np.diff(ev_step, prepend=0))
    full, rest = delta // SHIFT_STEPS, delta % SHIFT_STEPS
    has_rest = (rest > 0).astype(np.int64)
    # A VELOCITY token before a strike whose bin differs from the piece's previous strike.
    on_idx = np.flatnonzero(ev_is_on)
    on_vel, on_piece = ev_vel[on_idx], ev_piece[on_idx]
    new_bin = np.concatenate([[True], (on_vel[1:] != on_vel[:-1]) | (on_piece[1:] != on_piece[:-1])])
    has_vel = np.zeros(len(ev_step), np.int64)
    has_vel[on_idx] = new_bin

    width = full + has_rest + has_vel + 1
    piece_tokens = np.bincount(ev_piece, weights=width, minlength=n_pieces).astype(np.int64) + 2
    piece_base = np.cumsum(piece_tokens) - piece_tokens
    within = np.cumsum(width) - width
    within -= (np.cumsum(piece_tokens - 2) - (piece_tokens - 2))[ev_piece]
    base = piece_base[ev_piece] + 1 + within

    tokens = np.empty(int(piece_tokens.sum()), np.uint16)
    tokens[piece_base] = PIECE_START
    tokens[piece_base + piece_tokens - 1] = PIECE_END
    tokens[np.repeat(base, full) + _group_arange(full)] = TIME_SHIFT + SHIFT_STEPS - 1
    rest_at = np.flatnonzero(has_rest)
    tokens[base[rest_at] + full[rest_at]] = TIME_SHIFT + rest[rest_at] - 1
    vel_at = np.flatnonzero(has_vel)
    tokens[base[vel_at] + full[vel_at] + has_rest[vel_at]] = VELOCITY + ev_vel[vel_at]
    tokens[base + width - 1] = np.where(ev_is_on, NOTE_ON, NOTE_OFF) + ev_pitch
    return tokens, piece_tokens


def decode(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Turn any token sequence into notes (onset, offset, pitch, velocity; sorted by onset, pitch).

    Malformed input is tolerated: a release with no held note is ignored, a note never released ends at the last
    time step (at least one step after it starts), a velocity with no note has no effect, ids outside the
    vocabulary are skipped.
    """
    t = np.asarray(tokens, dtype=np.int64).ravel()
    t = t[(t >= 0) & (t < VOCAB_SIZE)]
    is_shift = (t >= TIME_SHIFT) & (t < VELOCITY)
    step = np.cumsum(np.where(is_shift, t - TIME_SHIFT + 1, 0))
    end_step = int(step[-1]) if len(step) else 0

    is_vel = (t >= VELOCITY) & (t < VELOCITY + VELOCITY_BINS)
    last_vel = np.maximum.accumulate(np.where(is_vel, np.arange(len(t)), -1)) if len(t) else np.zeros(0, np.int64)
    is_on, is_off = t < NOTE_OFF, (t >= NOTE_OFF) & (t < TIME_SHIFT)
    on_vel = np.where(last_vel >= 0, bin_velocity(t[np.maximum(last_vel, 0)] - VELOCITY), DEFAULT_VELOCITY)

    # Pair strikes and releases first-in first-out per pitch; a release counts only while a note is held.
    ev = np.flatnonzero(is_on | is_off)
    ev_pitch = np.where(is_on[ev], t[ev], t[ev] - NOTE_OFF)
    order = np.lexsort((ev, ev_pitch))
    ev, ev_pitch = ev[order], ev_pitch[order]
    ev_on = is_on[ev]
    group_start = np.concatenate([[True], ev_pitch[1:] != ev_pitch[:-1]]) if len(ev) else np.zeros(0, bool)
    group = np.cumsum(group_start)
    change = np.where(ev_on, 1, -1)
    total = np.cumsum(change)
    held = total - (total - change)[np.maximum.accumulate(np.where(group_start, np.arange(len(ev)), 0))]
    # Held notes = the running sum reflected at zero (releases with nothing held are dropped).
    big = 4 * (len(ev) + 1)
    lowest = np.minimum.accumulate(held - group * big) + group * big
    held -= np.minimum(lowest, 0)
    valid_off = ~ev_on & ~group_start & (np.concatenate([[0], held[:-1]]) > 0)
    ons, offs = ev[ev_on], ev[valid_off]
    on_pitch = ev_pitch[ev_on]
    off_step = np.full(len(ons), end_step, np.int64)
    # The k-th valid release of a pitch closes the k-th strike of that pitch.
    key_on = on_pitch * (len(t) + 1) + _group_rank(on_pitch)
    key_off = ev_pitch[valid_off] * (len(t) + 1) + _group_rank(ev_pitch[valid_off])
    match = np.searchsorted(key_on, key_off)
    off_step[match] = step[offs]
    onset_step = step[ons]
    off_step = np.maximum(off_step, onset_step + 1)
    result = {
        "onset": onset_step * STEP_S,
        "offset": off_step * STEP_S,
        "pitch": t[ons].astype(np.uint8),
        "velocity": on_vel[ons].astype(np.uint8),
    }
    order = np.lexsort((result["pitch"], result["onset"]))
    return {k: v[order] for k, v in result.items()}


def _group_rank(group: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal (sorted) group values."""
    if len(group) == 0:
        return np.zeros(0, np.int64)
    start = np.concatenate([[True], group[1:] != group[:-1]])
    idx = np.arange(len(group))
    return idx - np.maximum.accumulate(np.where(start, idx, 0))


def one_note_per_key(notes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The notes with each ending by the next strike of its pitch; a note that then lasts no time is left out."""
    onset, offset, pitch = (np.asarray(notes[k]) for k in ("onset", "offset", "pitch"))
    order = np.lexsort((onset, pitch))
    same_key_next = np.append(pitch[order][1:] == pitch[order][:-1], False)
    next_onset = np.append(onset[order][1:], np.inf)
    ends = offset.astype(np.float64).copy()
    ends[order] = np.where(same_key_next, np.minimum(offset[order], next_onset), offset[order])
    keep = ends > onset
    return {**{k: np.asarray(v)[keep] for k, v in notes.items()}, "offset": ends[keep]}


def write_midi(notes: dict[str, np.ndarray], path: Path, end: float | None = None) -> Path:
    """Write decoded notes to a one-track MIDI file with mido (1 tick = 1 ms), atomically; the track ends at `end`
    seconds when that is after the last note, so a closing silence is kept.

    A key sounds one note at a time, as on a piano: a strike of a pitch still held ends the note before it. Without
    that, readers pair the overlapping note-offs differently (pretty_midi ends both notes at the first).
    """
    import mido

    from pipeline.atomic import atomic_write_bytes

    notes = one_note_per_key(notes)
    midi = mido.MidiFile(type=0, ticks_per_beat=500)  # with 500,000 us per quarter, one tick is one millisecond
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    on_tick = np.rint(np.asarray(notes["onset"]) * 1000).astype(np.int64)
    off_tick = np.rint(np.asarray(notes["offset"]) * 1000).astype(np.int64)
    pitch, velocity = np.asarray(notes["pitch"]), np.asarray(notes["velocity"])
    lasts = off_tick > on_tick  # a note shorter than half a tick would be written release first, and hang
    on_tick, off_tick, pitch, velocity = on_tick[lasts], off_tick[lasts], pitch[lasts], velocity[lasts]
    ticks = np.concatenate([off_tick, on_tick])
    is_on = np.concatenate([np.zeros(len(on_tick), bool), np.ones(len(on_tick), bool)])
    order = np.lexsort((is_on, ticks))  # releases first at a tick, so a re-struck pitch sounds again
    now = 0
    for i in order:
        note = i % len(on_tick)
        kind = "note_on" if is_on[i] else "note_off"
        vel = int(velocity[note]) if is_on[i] else 0
        track.append(mido.Message(kind, note=int(pitch[note]), velocity=vel, time=int(ticks[i] - now)))
        now = int(ticks[i])
    end_tick = now if end is None else max(now, round(end * 1000))
    track.append(mido.MetaMessage("end_of_track", time=end_tick - now))
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
