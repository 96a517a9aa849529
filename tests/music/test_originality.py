"""The longest shared passage: exact against a brute-force longest common run, transposition and order alike."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.music.originality import BLOCK, SEED, STEP_CODES, PassageIndex, _window_hashes, note_intervals


def brute_longest(query: np.ndarray, pieces: list[np.ndarray]) -> int:
    """The longest common run of equal codes by dynamic programming over every pair of positions, in notes."""
    best = 0
    for piece in pieces:
        run = np.zeros(len(piece) + 1, np.int64)
        for q in query:
            run[1:] = np.where(piece == q, run[:-1] + 1, 0)
            best = max(best, int(run.max()))
    return best + 1


def random_piece(rng: np.random.Generator, n: int, pitches: int = 3, gaps: tuple = (0, 10, 20)) -> dict:
    """Notes from a small alphabet of steps, so that random pieces share runs of every length by chance."""
    steps = np.cumsum(rng.choice(gaps, n))
    pitch = 60 + np.cumsum(rng.integers(-pitches, pitches + 1, n))
    return {"onset": steps / 100.0, "pitch": pitch}


@pytest.mark.parametrize("seed", range(6))
def test_longest_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = [note_intervals(**random_piece(rng, int(rng.integers(5, 400)), 1, (0, 10))) for _ in range(12)]
    index = PassageIndex(train)
    for _ in range(8):
        query = note_intervals(**random_piece(rng, int(rng.integers(2, 300)), 1, (0, 10)))
        assert index.longest(query) == max(brute_longest(query, train), SEED)


def test_a_transposed_copy_is_found_whole() -> None:
    rng = np.random.default_rng(7)
    source = random_piece(rng, 300, 12, (3, 17, 41, 60))
    other = [note_intervals(**random_piece(rng, 500, 12, (3, 17, 41, 60))) for _ in range(5)]
    index = PassageIndex([*other, note_intervals(**source)])
    copy = {"onset": source["onset"][100:160] + 12.34, "pitch": source["pitch"][100:160] - 5}  # 60 notes, a 4th down
    noise = random_piece(np.random.default_rng(8), 80, 12, (5, 29, 53))
    query = {key: np.concatenate([noise[key], copy[key] + (noise["onset"].max() + 1 if key == "onset" else 0)])
             for key in ("onset", "pitch")}  # fmt: skip
    found = index.longest(note_intervals(**query))
    assert found == brute_longest(note_intervals(**query), [*other, note_intervals(**source)])
    assert 60 <= found <= 61  # the copy, and at most the interval into it by chance


def test_order_within_a_chord_and_rounding_do_not_matter() -> None:
    onset = np.array([0.0, 0.0, 0.0, 0.5, 0.5, 1.0])
    pitch = np.array([64, 60, 67, 62, 65, 72])
    shuffled = np.array([2, 0, 1, 4, 3, 5])
    jitter = np.array([0.002, -0.004, 0.0, 0.001, 0.003, -0.002])  # within half a 10 ms step
    assert np.array_equal(note_intervals(onset, pitch), note_intervals(onset[shuffled] + jitter, pitch[shuffled]))
    assert len(note_intervals(onset, pitch)) == 5


def test_pieces_do_not_join_and_short_queries_are_the_floor() -> None:
    a = note_intervals(np.arange(12) / 10, np.full(12, 60))  # twelve repeated notes 100 ms apart
    index = PassageIndex([a[: SEED - 1], a[: SEED - 1]])  # two pieces of SEED notes: no longer run across them
    assert index.longest(a) == SEED
    assert PassageIndex([a[:SEED]]).longest(a) == SEED + 1  # the shortest run found exactly
    assert PassageIndex([a]).longest(a) == 12
    assert PassageIndex([a]).longest(a[:2]) == SEED  # three notes: below what the index finds
    assert PassageIndex([]).longest(a) == SEED


def test_a_run_of_seed_intervals_at_the_very_end_of_the_query_is_found() -> None:
    a = note_intervals(np.arange(12) / 10, 60 + np.arange(12) * 2)  # a whole-tone climb, 100 ms a note
    index = PassageIndex([a[-SEED:]])  # SEED + 1 notes
    assert index.longest(a[-SEED:]) == SEED + 1  # exactly one window: the query's first and last
    tail = np.concatenate([note_intervals(np.arange(8) / 7, [60, 50, 70, 40, 80, 45, 75, 55]), a[-SEED:]])
    assert index.longest(tail) == SEED + 1  # the match only at the query's last window


def test_up_and_down_are_different_steps() -> None:
    onset = np.arange(20) / 10
    up, down = note_intervals(onset, 60 + np.arange(20)), note_intervals(onset, 80 - np.arange(20))
    assert PassageIndex([up]).longest(up) == 20 and PassageIndex([up]).longest(down) == SEED


def test_an_onset_interval_past_the_cap_stays_in_its_own_field() -> None:
    (code,) = note_intervals(np.array([0.0, 4 * 3600.0]), np.array([60, 60]))  # four hours later, the same key
    assert code // STEP_CODES == 128 and code % STEP_CODES == STEP_CODES - 1


def test_a_window_hash_covers_all_seed_intervals() -> None:
    codes = np.arange(1, SEED + 1, dtype=np.int64)
    other = codes.copy()
    other[-1] += 1  # differs only in the window's last interval
    assert _window_hashes(codes)[0] != _window_hashes(other)[0]
    other = codes.copy()
    other[0] += 1  # and only in its first
    assert _window_hashes(codes)[0] != _window_hashes(other)[0]


def test_the_index_holds_exactly_the_windows_within_a_piece() -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 1000, n) for n in (SEED - 1, SEED, SEED + 3, 40)]
    index = PassageIndex(pieces)
    assert len(index.hashes) == sum(max(len(p) - SEED + 1, 0) for p in pieces)


def test_extend_is_capped_at_most() -> None:
    a = note_intervals(np.arange(40) / 10, np.full(40, 60))
    index = PassageIndex([a])
    query = np.concatenate([a, np.full(BLOCK, -2)])
    assert index._extend(query, 0, index.starts[:1], 7) == 7
