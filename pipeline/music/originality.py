"""Whether a performance copies others: the longest passage it shares with any piece of a collection, a run of notes
with the same pitch steps and onset intervals, so that a transposed copy counts too.

A piece becomes the intervals between its consecutive notes, ordered by onset step (the encoding's 10 ms) and then
pitch: (semitones up or down, steps later). Two pieces share a run of n notes where n - 1 of their consecutive
intervals are equal. `PassageIndex` indexes a collection once: every window of SEED intervals hashed and sorted.
A query looks up its own windows and extends each hit interval by interval, so the lengths it returns are exact;
a run of SEED notes or fewer is reported as SEED (no window of SEED intervals matched).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.music.performance_encoding import quantize

SEED = 5  # intervals per indexed window: a shared run of SEED + 1 notes is the shortest found exactly
STEP_CODES = 1 << 20  # onset intervals are capped here (about three hours), pitch steps lie in -127..127
BLOCK = 32  # intervals compared per pass when a hit is extended
_BASE = np.uint64(0x9E3779B97F4A7C15)  # an odd multiplier: the window hash is a polynomial in it, modulo 2^64
_GAP = -1  # between two pieces of the collection: no window across it matches


def note_intervals(onset: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """The intervals between consecutive notes (by onset step, then pitch) as int64 codes of (pitch step, steps)."""
    steps, _ = quantize(np.asarray(onset, np.float64), np.asarray(onset, np.float64))
    order = np.lexsort((pitch, steps))
    steps, pitch = steps[order].astype(np.int64), np.asarray(pitch, np.int64)[order]
    return (np.diff(pitch) + 128) * STEP_CODES + np.minimum(np.diff(steps), STEP_CODES - 1)


def _window_hashes(codes: np.ndarray) -> np.ndarray:
    """The hash of every window of SEED codes (one per start that has SEED codes after it)."""
    n = len(codes) - SEED + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    values = codes.astype(np.uint64)  # _GAP wraps to 2^64 - 1, a code no interval has
    hashes = np.zeros(n, np.uint64)
    for t in range(SEED):
        hashes = hashes * _BASE + values[t : t + n]
    return hashes


class PassageIndex:
    """Every window of SEED intervals of a collection of pieces, for `longest` runs shared with it."""

    def __init__(self, pieces: Iterable[np.ndarray]) -> None:
        parts = [part for codes in pieces for part in (np.asarray(codes, np.int64), np.array([_GAP]))]
        self.codes = np.concatenate([np.array([_GAP]), *parts, np.full(BLOCK, _GAP)])
        hashes = _window_hashes(self.codes)
        gaps = np.concatenate([[0], np.cumsum(self.codes == _GAP)])
        clean = np.flatnonzero(gaps[SEED : SEED + len(hashes)] == gaps[: len(hashes)])  # windows within a piece
        order = np.argsort(hashes[clean], kind="stable")
        self.hashes, self.starts = hashes[clean][order], clean[order]

    def longest(self, codes: np.ndarray) -> int:
        """The most notes in a run that `codes` (a piece's note_intervals) shares with a piece of the collection;
        SEED for a piece that shares no run of SEED + 1 notes (or has fewer notes)."""
        codes = np.asarray(codes, np.int64)
        hashes = _window_hashes(codes)
        lo, hi = np.searchsorted(self.hashes, hashes, "left"), np.searchsorted(self.hashes, hashes, "right")
        best = 0  # intervals
        padded = np.concatenate([codes, np.full(BLOCK, _GAP - 1)])  # past the end: matches nothing
        for i in np.flatnonzero(hi > lo):
            if len(codes) - i <= best:
                break
            best = max(best, self._extend(padded, int(i), self.starts[lo[i] : hi[i]], len(codes) - i))
        return max(best + 1, SEED)

    def _extend(self, query: np.ndarray, i: int, starts: np.ndarray, most: int) -> int:
        """The longest run of equal intervals from query[i] and from any of `starts` in the collection, capped at
        `most` (the query's intervals from i)."""
        length, alive = np.zeros(len(starts), np.int64), np.ones(len(starts), bool)
        offset = 0
        while alive.any() and offset < most:
            rows = np.flatnonzero(alive)
            at = np.minimum(starts[rows, None] + offset + np.arange(BLOCK), len(self.codes) - 1)
            equal = self.codes[at] == query[i + offset : i + offset + BLOCK]
            run = np.where(equal.all(axis=1), BLOCK, equal.argmin(axis=1))
            length[rows] += run
            alive[rows] = run == BLOCK
            offset += BLOCK
        return int(min(length.max(), most))
