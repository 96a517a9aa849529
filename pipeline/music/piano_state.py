"""The piano state as a performance is played token by token: which keys sound, for how long they have, and how far
into its piece the performance is.

After each token, each of the 128 pitches gets two numbers: whether it is sounding, and how long it has sounded, on
a log scale: log(1 + steps / HELD_TAU_STEPS) / log(1 + HELD_STEPS / HELD_TAU_STEPS), capped at 1 from HELD_SCALE_S
on. Releases mostly come between 0.05 and 2 s after a strike, and the log scale spreads that range over most of
[0, 1], where a linear one put it below 0.2. The value is looked up in HELD_TABLE (float32, one per step count), so
that every library that computes the state gives the same bits. The state follows `performance_encoding.decode`
exactly: strikes and releases pair first-in first-out per pitch, a release with nothing held does nothing, and a
pitch struck again while it sounds sounds on, from its latest strike (as the MIDI file then holds it). PIECE_START
silences every key.

Three more numbers describe the piece so far, since its PIECE_START, which a model that attends to its last few
seconds cannot see: the piece clock, the time since the start in whole seconds on a log scale, log(1 + s /
CLOCK_TAU_S) / log(1 + CLOCK_S / CLOCK_TAU_S), capped at 1 from CLOCK_S on (an opening is sparser than the rest of a
piece: 9.4 against about 11 notes per second in the train split); the register, the mean pitch of its strikes in
quarter semitones over 127 (0 before the first); and its strikes so far, log(1 + n) / log(1 + NOTES_CAP), capped at
1. Each is looked up in a table indexed by integers, so every library gives the same bits.

A feature at position t depends on tokens up to t only. `PianoState` carries the state from one call to the next:
`__call__` takes chunks [rows, time] and is vectorised over them (training, evaluation), `step` takes one token per
row. Both give the same numbers. This numpy module is the reference; pipeline/music/piano_state_torch.py computes
the same on the device that trains, evaluates and samples.
"""

from __future__ import annotations

import numpy as np

from pipeline.music.performance_encoding import NOTE_OFF, NOTE_ON, PIECE_START, STEP_S, TIME_SHIFT, time_steps

PITCHES = 128
# [sounding of pitches 0-127, held time of pitches 0-127], then from PIECE_FEATURES on [clock, register, strikes]
PIECE_FEATURES = 2 * PITCHES
PIANO_STATE_SIZE = PIECE_FEATURES + 3
HELD_SCALE_S = 10.0  # a note held this long or longer gets held time 1
HELD_STEPS = round(HELD_SCALE_S / STEP_S)  # the same, in time steps
HELD_TAU_STEPS = 5  # the log scale's knee, 50 ms: 0.1 s is 0.21, 0.5 s 0.45, 1 s 0.57, 2 s 0.70
HELD_TABLE = (np.log1p(np.arange(HELD_STEPS + 1) / HELD_TAU_STEPS) / np.log1p(HELD_STEPS / HELD_TAU_STEPS)).astype(
    np.float32
)  # the held-time feature of each step count, 0 to HELD_STEPS
STEPS_PER_S = round(1 / STEP_S)
CLOCK_S = 600  # the piece clock reads 1 from ten minutes on
CLOCK_TAU_S = 10.0  # its log scale's knee: 10 s is 0.17, 30 s 0.34, 1 min 0.47, 2 min 0.63
CLOCK_TABLE = (np.log1p(np.arange(CLOCK_S + 1) / CLOCK_TAU_S) / np.log1p(CLOCK_S / CLOCK_TAU_S)).astype(np.float32)
REGISTER_TABLE = (np.arange(4 * 127 + 1) / (4 * 127)).astype(np.float32)  # by the mean pitch in quarter semitones
NOTES_CAP = 10_000  # the strikes feature reads 1 from here on (a 15-minute piece at 11 notes per second)
NOTES_TABLE = (np.log1p(np.arange(NOTES_CAP + 1)) / np.log1p(NOTES_CAP)).astype(np.float32)
CHUNK = 1024  # positions per vectorised pass: bounds the [rows, CHUNK, 128] work arrays


class PianoState:
    """The state of `rows` pianos, each starting silent; call it with successive tokens to get their features."""

    def __init__(self, rows: int) -> None:
        self.held = np.zeros((rows, PITCHES), np.int64)  # open strikes per key (decode pairs them first in, first out)
        self.onset = np.zeros((rows, PITCHES), np.int64)  # the step of each key's latest strike
        self.clock = np.zeros(rows, np.int64)  # steps since the start
        self.start = np.zeros(rows, np.int64)  # the clock at the latest PIECE_START
        self.notes = np.zeros(rows, np.int64)  # strikes since then
        self.pitches = np.zeros(rows, np.int64)  # and the sum of their pitches

    def keep(self, rows: int) -> None:
        """Keep the first `rows` pianos only (rows that have ended drop out of a batch)."""
        self.held, self.onset, self.clock = self.held[:rows], self.onset[:rows], self.clock[:rows]
        self.start, self.notes, self.pitches = self.start[:rows], self.notes[:rows], self.pitches[:rows]

    def seconds_held(self) -> np.ndarray:
        """How long each key has sounded, in seconds, since its latest strike [rows, 128]; 0 for a silent key."""
        return np.where(self.held > 0, (self.clock[:, None] - self.onset) * STEP_S, 0.0)

    def features(self) -> np.ndarray:
        """The current features [rows, PIANO_STATE_SIZE] (float32)."""
        piece = (self.clock - self.start, self.notes, self.pitches)
        return _features(self.held, self.onset, self.clock[:, None], *(x[:, None] for x in piece))

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Advance by one token per row ([rows]); return the features after it [rows, PIANO_STATE_SIZE]."""
        t = np.asarray(tokens, np.int64)
        rows = np.arange(len(t))
        self.clock += time_steps(t)
        self.held[t == PIECE_START] = 0
        self.start = np.where(t == PIECE_START, self.clock, self.start)
        self.notes = np.where(t == PIECE_START, 0, self.notes) + (t < NOTE_OFF)
        self.pitches = np.where(t == PIECE_START, 0, self.pitches) + np.where(t < NOTE_OFF, t - NOTE_ON, 0)
        on = np.flatnonzero(t < NOTE_OFF)
        self.held[on, t[on] - NOTE_ON] += 1
        self.onset[on, t[on] - NOTE_ON] = self.clock[on]
        off = rows[(t >= NOTE_OFF) & (t < TIME_SHIFT)]
        pitch = t[off] - NOTE_OFF
        self.held[off, pitch] = np.maximum(self.held[off, pitch] - 1, 0)
        return self.features()

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Advance by tokens [rows, time]; return the features after each [rows, time, PIANO_STATE_SIZE] (float32)."""
        tokens = np.asarray(tokens, np.int64)
        out = np.empty((*tokens.shape, PIANO_STATE_SIZE), np.float32)
        for start in range(0, tokens.shape[1], CHUNK):
            out[:, start : start + CHUNK] = self._chunk(tokens[:, start : start + CHUNK])
        return out

    def _chunk(self, t: np.ndarray) -> np.ndarray:
        rows, time = t.shape
        clock = self.clock[:, None] + np.cumsum(time_steps(t), axis=1)  # [rows, time]
        is_on, is_off = t < NOTE_OFF, (t >= NOTE_OFF) & (t < TIME_SHIFT)
        r, s = np.nonzero(is_on | is_off)
        delta = np.zeros((rows, time, PITCHES), np.int64)  # +1 a strike, -1 a release, per key
        delta[r, s, t[r, s] % NOTE_OFF] = np.where(is_on[r, s], 1, -1)
        # The open strikes follow S_t = max(0, S_{t-1} + delta_t), restarted at 0 by PIECE_START. With C the running
        # sum measured from the latest restart (from the carried count before any), S = C - min(0, running min of
        # C), and subtracting `group × big` keeps each restart's running minimum to its own stretch.
        reset = t == PIECE_START
        group = np.cumsum(reset, axis=1)[..., None]  # restarts so far, [rows, time, 1]
        total = self.held[:, None] + np.cumsum(delta, axis=1)
        last_reset = np.maximum.accumulate(np.where(reset, np.arange(time), -1), axis=1)  # [rows, time]
        base = np.where(
            (last_reset >= 0)[..., None], np.take_along_axis(total, np.maximum(last_reset, 0)[..., None], 1), 0
        )
        running = total - base  # at a restart itself 0, since PIECE_START strikes and releases nothing
        big = 2 * (int(np.abs(running).max(initial=0)) + 1)
        lowest = np.minimum.accumulate(running - group * big, axis=1) + group * big
        held = running - np.minimum(lowest, 0)
        # The latest strike since the latest restart, else the carried one.
        strike = np.where(delta > 0, np.arange(time)[None, :, None], -1)
        last_strike = np.maximum.accumulate(strike, axis=1)
        struck = last_strike > last_reset[..., None]
        onset = np.where(struck, np.take_along_axis(clock, np.maximum(last_strike, 0).reshape(rows, -1), 1).reshape(
            rows, time, PITCHES), self.onset[:, None])  # fmt: skip
        # Each piece figure from the latest restart (its value there subtracted), else carried on from the last call.
        at_reset = np.maximum(last_reset, 0)
        start = np.where(last_reset >= 0, np.take_along_axis(clock, at_reset, 1), self.start[:, None])
        notes = self.notes[:, None] + np.cumsum(is_on, axis=1)
        pitches = self.pitches[:, None] + np.cumsum(np.where(is_on, t - NOTE_ON, 0), axis=1)
        notes, pitches = (
            np.where(last_reset >= 0, x - np.take_along_axis(x, at_reset, 1), x) for x in (notes, pitches)
        )
        self.held, self.onset, self.clock = held[:, -1].copy(), onset[:, -1].copy(), clock[:, -1].copy()
        self.start, self.notes, self.pitches = start[:, -1].copy(), notes[:, -1].copy(), pitches[:, -1].copy()
        return _features(
            held, onset, clock[..., None], (clock - start)[..., None], notes[..., None], pitches[..., None]
        )


def _features(held: np.ndarray, onset: np.ndarray, clock: np.ndarray, elapsed: np.ndarray, notes: np.ndarray,
              pitches: np.ndarray) -> np.ndarray:  # fmt: skip
    """[sounding, held time, clock, register, strikes] from the open strikes and latest strike per key, the clock,
    and the piece's steps, strikes and pitch sum so far (the last four broadcast against the keys)."""
    sounding = held > 0
    steps = np.minimum(np.where(sounding, clock - onset, 0), HELD_STEPS)
    seconds = np.minimum(elapsed // STEPS_PER_S, CLOCK_S)
    piece = (
        CLOCK_TABLE[seconds],
        REGISTER_TABLE[4 * pitches // np.maximum(notes, 1)],
        NOTES_TABLE[np.minimum(notes, NOTES_CAP)],
    )
    return np.concatenate([sounding, HELD_TABLE[steps], *piece], axis=-1, dtype=np.float32)


def piano_state(tokens: np.ndarray) -> np.ndarray:
    """The features after each token of one sequence [time] that starts silent: [time, PIANO_STATE_SIZE]."""
    return PianoState(1)(np.asarray(tokens)[None])[0]


def release_logit_pairs() -> list[list[int]]:
    """(feature, token) pairs joining each key's two features (sounding, held time) to that key's own NOTE_OFF token
    only: what the piano state may say about the next token directly, key by key, and only of its release."""
    return [[feature, NOTE_OFF + key] for key in range(PITCHES) for feature in (key, PITCHES + key)]


def relative_logit_bands(tokens: tuple[int, ...] = (NOTE_ON, NOTE_OFF)) -> list[list[int]]:
    """[feature_start, token_start, width] bands joining each key's features (sounding, held time) to every key's
    token of each kind in `tokens` (NOTE_ON, NOTE_OFF) by the interval between the two keys alone: a key at the
    keyboard's edge, which training rarely sounds, gets what the middle keys teach."""
    return [[feature, token, PITCHES] for feature in (0, PITCHES) for token in tokens]
