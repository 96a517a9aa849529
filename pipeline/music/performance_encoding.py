"""The performance encoding: Music Transformer's performance events (Huang et al. 2018, after Oore et al. 2018),
vectorised, token for token as Magenta's note-seq `performance_lib` encodes them. Notes in, ids out, and back.

Ids 0-127 NOTE_ON(pitch), 128-255 NOTE_OFF(pitch), 256-355 TIME_SHIFT of 1-100 steps of 10 ms, 356-387
VELOCITY in 32 bins (emitted only when the bin changes), then PIECE_START and PIECE_END.
"""

from __future__ import annotations

from typing import Any

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
    step = np.cumsum(time_steps(t))
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


def time_steps(tokens: Any) -> Any:
    """The time steps each token moves the clock by: 1 to SHIFT_STEPS for a TIME_SHIFT, 0 for any other id; for a
    signed integer numpy array or torch tensor alike (operators only, so that the library loads no torch)."""
    return ((tokens >= TIME_SHIFT) & (tokens < TIME_SHIFT + SHIFT_STEPS)) * (tokens - TIME_SHIFT + 1)


def elapsed_steps(tokens: np.ndarray) -> int:
    """Time steps that the TIME_SHIFT events of `tokens` add up to."""
    return int(time_steps(np.asarray(tokens, np.int64)).sum())


def encode_opening(notes: dict[str, np.ndarray], end: float) -> tuple[np.ndarray, int]:
    """Encode notes as the opening of a piece, to be continued: PIECE_START and the events, no PIECE_END, and a
    silence after the last event up to `end` seconds as time shifts. Returns the int64 ids and the steps they last."""
    tokens, _ = encode(
        np.zeros(len(notes["onset"]), np.int64), notes["onset"], notes["offset"], notes["pitch"], notes["velocity"]
    )
    tokens = tokens[:-1].astype(np.int64)
    steps = elapsed_steps(tokens)
    gap = max(int(np.floor(end * STEPS_PER_SECOND + 0.5)) - steps, 0)  # rounded as `quantize` rounds times
    full, rest = divmod(gap, SHIFT_STEPS)
    shifts = [TIME_SHIFT + SHIFT_STEPS - 1] * full + ([TIME_SHIFT + rest - 1] if rest else [])
    return np.concatenate([tokens, np.array(shifts, np.int64)]), steps + gap
