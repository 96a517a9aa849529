"""The piano state against a plain loop written from decode's rules, one token at a time against vectorised, and
against the notes that decode and the MIDI writer make of the same tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import MAESTRO_ASAP, require

from pipeline.music.midi import one_note_per_key
from pipeline.music.performance_encoding import (
    NOTE_OFF,
    PIECE_START,
    STEP_S,
    TIME_SHIFT,
    VELOCITY,
    decode,
    encode,
)
from pipeline.music.piano_state import (
    HELD_SCALE_S,
    PIANO_STATE_SIZE,
    PIECE_FEATURES,
    PITCHES,
    PianoState,
    piano_state,
)


def held_feature(seconds: float) -> np.float32:
    """The held-time feature of a key sounding `seconds`, from its definition: log(1 + t / 50 ms) over its value at
    HELD_SCALE_S, capped at 1."""
    seconds = min(round(seconds / STEP_S) * STEP_S, HELD_SCALE_S)
    return np.float32(math.log1p(seconds / 0.05) / math.log1p(HELD_SCALE_S / 0.05))


def clock_feature(seconds: float) -> np.float32:
    """The piece clock `seconds` into a piece, from its definition: log(1 + s / 10 s) over its value at ten minutes, in
    whole seconds, capped at 1."""
    seconds = min(math.floor(seconds + 1e-9), 600)
    return np.float32(math.log1p(seconds / 10) / math.log1p(600 / 10))


def loop_state(tokens: np.ndarray) -> np.ndarray:
    """The features after each token, from lists of open strikes per key (first in, first out), one token at a time."""
    strikes: dict[int, list[int]] = {}
    clock, piece_start, struck, out = 0, 0, [], np.zeros((len(tokens), PIANO_STATE_SIZE), np.float32)
    for i, token in enumerate(int(t) for t in tokens):
        if token == PIECE_START:
            strikes, piece_start, struck = {}, clock, []
        elif token < NOTE_OFF:
            strikes.setdefault(token, []).append(clock)
            struck.append(token)
        elif token < TIME_SHIFT:
            if strikes.get(token - NOTE_OFF):
                strikes[token - NOTE_OFF].pop(0)
        elif token < VELOCITY:
            clock += token - TIME_SHIFT + 1
        for pitch, open_strikes in strikes.items():
            if open_strikes:
                out[i, pitch] = 1
                out[i, PITCHES + pitch] = held_feature((clock - max(open_strikes)) * STEP_S)
        out[i, PIECE_FEATURES] = clock_feature((clock - piece_start) * STEP_S)
        out[i, PIECE_FEATURES + 1] = np.float32(math.floor(4 * np.mean(struck)) / 508) if struck else 0
        out[i, PIECE_FEATURES + 2] = np.float32(math.log1p(min(len(struck), 10_000)) / math.log1p(10_000))
    return out


def random_tokens(rng: np.random.Generator, rows: int, length: int) -> np.ndarray:
    """Token rows rich in what the state must get right: few pitches struck and released out of order, releases of
    silent keys, re-strikes of sounding ones, long shifts, and PIECE_START now and then."""
    pitches = rng.integers(60, 66, (rows, length))
    kind = rng.choice(5, (rows, length), p=[0.2, 0.15, 0.6, 0.04, 0.01])
    shift = TIME_SHIFT + rng.integers(0, 100, (rows, length))
    return np.select([kind == 0, kind == 1, kind == 2, kind == 3], [pitches, NOTE_OFF + pitches, shift, VELOCITY + 3],
                     PIECE_START)  # fmt: skip


def test_the_state_is_the_plain_loops():
    tokens = random_tokens(np.random.default_rng(0), 4, 600)
    state = PianoState(4)(tokens)
    for row in range(4):
        np.testing.assert_array_equal(state[row], loop_state(tokens[row]))
    assert state[..., :PITCHES].sum() > 100 and (state[..., PITCHES:PIECE_FEATURES] == 1).any()  # some over 10 s
    for feature in range(PIECE_FEATURES, PIANO_STATE_SIZE):  # each piece feature grows, and PIECE_START resets it
        assert (np.diff(state[..., feature], axis=1) > 0).any() and (np.diff(state[..., feature], axis=1) < 0).any()
    assert state[..., PIECE_FEATURES].max() > clock_feature(60)  # a minute into a piece


def capped_streams() -> list[np.ndarray]:
    """Pieces that pass the piece figures' caps: ten minutes and ten seconds of silence, and 10,005 strikes."""
    return [np.array([PIECE_START] + [TIME_SHIFT + 99] * 610), np.array([PIECE_START] + [60, NOTE_OFF + 60] * 10_005)]


def test_the_piece_clock_and_strikes_stop_at_their_caps():
    silence, strikes = capped_streams()
    for tokens in (silence, strikes):
        np.testing.assert_array_equal(piano_state(tokens), loop_state(tokens))
    assert piano_state(silence)[-1, PIECE_FEATURES] == 1 and piano_state(silence)[-12, PIECE_FEATURES] < 1
    assert (
        piano_state(strikes)[-1, PIECE_FEATURES + 2] == 1 and piano_state(strikes)[-1, PIECE_FEATURES + 1] == 60 / 127
    )


@pytest.mark.parametrize("cuts", [[1], [7, 8, 300], [1023, 1024, 1025, 2500]])
def test_one_token_at_a_time_and_any_chunks_give_the_vectorised_state(cuts):
    tokens = random_tokens(np.random.default_rng(len(cuts)), 3, 3000)
    whole = PianoState(3)(tokens)
    stepper = PianoState(3)
    one_by_one = np.stack([stepper.step(tokens[:, t]) for t in range(tokens.shape[1])], axis=1)
    np.testing.assert_array_equal(one_by_one, whole)
    chunked, bounds = PianoState(3), [0, *cuts, tokens.shape[1]]
    parts = [chunked(tokens[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_no_feature_depends_on_a_later_token():
    tokens = random_tokens(np.random.default_rng(1), 1, 400)[0]
    before = piano_state(tokens)
    for t in (0, 57, 200, 399):
        changed = tokens.copy()
        changed[t + 1 :] = np.random.default_rng(t).permutation(changed[t + 1 :])
        np.testing.assert_array_equal(piano_state(changed)[: t + 1], before[: t + 1])


def test_piece_start_silences_every_key_and_dropping_rows_keeps_the_others():
    tokens = np.array([PIECE_START, 60, 64, TIME_SHIFT + 49, PIECE_START, 67])
    state = piano_state(tokens)
    assert state[3, [60, 64]].tolist() == [1, 1] and state[3, PITCHES + 60] == pytest.approx(held_feature(0.5))
    assert state[4].sum() == 0 and np.flatnonzero(state[5, :PITCHES]).tolist() == [67]
    rows = PianoState(2)
    rows(np.array([[60], [62]]))
    rows.keep(1)
    assert np.flatnonzero(rows.step(np.array([TIME_SHIFT]))[:, :PITCHES]).tolist() == [60]


def test_the_keys_sounding_are_those_the_midi_holds_down():
    """After every token of a performance, the sounding keys and how long they have sounded are those of the notes
    that decode and one_note_per_key (what the MIDI file holds) make of the tokens so far."""
    rng = np.random.default_rng(2)
    onset = np.sort(rng.uniform(0, 20, 120)).round(2)
    notes = {"onset": onset, "offset": onset + rng.uniform(0.05, 3, 120).round(2), "pitch": rng.integers(60, 72, 120),
             "velocity": rng.integers(20, 110, 120)}  # fmt: skip
    tokens, _ = encode(np.zeros(120, np.int64), notes["onset"], notes["offset"], notes["pitch"], notes["velocity"])
    tokens = tokens.astype(np.int64)
    state = piano_state(tokens)
    held = one_note_per_key(decode(tokens))
    step = np.cumsum(np.where((tokens >= TIME_SHIFT) & (tokens < VELOCITY), tokens - TIME_SHIFT + 1, 0))
    checked = 0
    for t in range(len(tokens)):
        now = step[t] * STEP_S
        # A key sounds after token t when a note has started by then and ends later, or ends now but its release
        # comes after token t within this same step.
        sounding = np.flatnonzero(state[t, :PITCHES])
        expected = {int(p) for p, a, b in zip(held["pitch"], held["onset"], held["offset"], strict=True)
                    if a < now - 1e-9 < b - 2e-9}  # fmt: skip
        assert expected <= set(sounding.tolist()), t
        for p in expected:
            start = max(a for q, a in zip(held["pitch"], held["onset"], strict=True) if q == p and a < now - 1e-9)
            assert state[t, PITCHES + p] == pytest.approx(held_feature(now - start), abs=1e-6)
            checked += 1
    assert checked > 200


def test_a_real_performance_in_chunks_equals_one_token_at_a_time():
    from pipeline.music.midi import read_performance

    path = sorted(require(MAESTRO_ASAP).rglob("*.mid*"))[0]
    perf = read_performance(path)
    tokens, _ = encode(np.zeros(len(perf.onset), np.int64), perf.onset, perf.offset, perf.pitch, perf.velocity)
    tokens = tokens.astype(np.int64)[:4000]
    stepper = PianoState(1)
    np.testing.assert_array_equal(np.stack([stepper.step(tokens[t : t + 1])[0] for t in range(len(tokens))]),
                                  piano_state(tokens))  # fmt: skip
    np.testing.assert_array_equal(piano_state(tokens), loop_state(tokens))


def test_release_logit_pairs_join_each_keys_features_to_its_own_release_only():
    from pipeline.music.performance_encoding import encode
    from pipeline.music.piano_state import release_logit_pairs

    pairs = release_logit_pairs()
    assert len(pairs) == 2 * PITCHES and len({tuple(p) for p in pairs}) == len(pairs)
    for key in (21, 60, 108):
        # One note of the key: its release is the token after which the state no longer says it sounds.
        tokens, _ = encode(np.zeros(1, int), np.array([0.0]), np.array([0.5]), np.array([key]), np.array([80]))
        sounding = piano_state(tokens)[:, key] > 0
        release = int(tokens[np.flatnonzero(sounding)[-1] + 1])
        features = np.flatnonzero(piano_state(tokens)[:, :PIECE_FEATURES].any(axis=0))
        assert set(features) == {key, PITCHES + key}  # the note's own two key features, and no other key's
        assert {(f, t) for f, t in pairs if f in features or t == release} == {(f, release) for f in features}
