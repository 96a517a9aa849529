"""Read one MIDI performance into note and pedal arrays: symusic's C++ parser, then numpy.

All timing work is done in integer ticks, so pedal and re-strike comparisons are exact, and only the
finished ticks are converted to seconds through the file's tempo map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUSTAIN, SOSTENUTO, SOFT = 64, 66, 67
PEDALS = {SUSTAIN: "sustain", SOSTENUTO: "sostenuto", SOFT: "soft"}
DEFAULT_MSPQ = 500_000  # MIDI's tempo before the first set_tempo: 120 quarter notes per minute


class UnreadableMidi(Exception):
    """A MIDI file that cannot be turned into a performance; the message is the reason."""


@dataclass
class Performance:
    """One piece's notes (sorted by onset, pitch) and pedal intervals, times in seconds."""

    onset: np.ndarray  # float64
    offset: np.ndarray  # float64, extended by the sustain pedal
    key_offset: np.ndarray  # float64, when the key was released
    pitch: np.ndarray  # uint8
    velocity: np.ndarray  # uint8
    pedal: np.ndarray  # uint8 control number: 64 sustain, 66 sostenuto, 67 soft
    pedal_onset: np.ndarray  # float64
    pedal_offset: np.ndarray  # float64
    duration: float  # seconds to the file's last note or pedal event


def tick_seconds(ticks: np.ndarray, tempo_ticks: np.ndarray, tempo_mspq: np.ndarray, tpq: int) -> np.ndarray:
    """Convert absolute ticks to seconds through a tempo map (the last tempo at a tick wins)."""
    tempo_ticks = np.asarray(tempo_ticks, dtype=np.int64)
    tempo_mspq = np.asarray(tempo_mspq, dtype=np.float64)
    if len(tempo_ticks) == 0 or tempo_ticks[0] > 0:
        tempo_ticks = np.concatenate([[0], tempo_ticks])
        tempo_mspq = np.concatenate([[DEFAULT_MSPQ], tempo_mspq])
    seconds_per_tick = tempo_mspq / (1e6 * tpq)
    if len(tempo_ticks) == 1:  # one tempo for the whole file, as in every MAESTRO file
        return np.asarray(ticks, dtype=np.float64) * seconds_per_tick[0]
    segment_start = np.concatenate([[0.0], np.cumsum(np.diff(tempo_ticks) * seconds_per_tick[:-1])])
    k = np.searchsorted(tempo_ticks, ticks, side="right") - 1
    return segment_start[k] + (np.asarray(ticks, dtype=np.int64) - tempo_ticks[k]) * seconds_per_tick[k]


def pedal_intervals(times: np.ndarray, values: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Down intervals [start, stop) of one pedal from its time-sorted control events (value >= 64 is down).

    Several events at one tick leave the pedal as the last of them says; a pedal never lifted is lifted at `end`.
    """
    times = np.asarray(times, dtype=np.int64)
    if len(times) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    last_at_tick = np.append(times[1:] != times[:-1], True)
    times, down = times[last_at_tick], np.asarray(values)[last_at_tick] >= 64
    was_down = np.concatenate([[False], down[:-1]])
    starts, stops = times[down & ~was_down], times[~down & was_down]
    if len(stops) < len(starts):
        stops = np.append(stops, max(end, starts[-1]))
    return starts, stops


def sustain_offsets(
    onset: np.ndarray, key_offset: np.ndarray, pitch: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> np.ndarray:
    """Magenta's sustain rule, vectorised: a key released under the pedal sounds until the pedal lifts,
    or until the same pitch is struck again while the pedal is down, whichever comes first."""
    n = len(onset)
    if len(starts) == 0 or n == 0:
        return key_offset.copy()
    # Whether the pedal is down at each key release and at each onset, and which down interval it is in.
    times = np.concatenate([key_offset, onset])
    k = np.searchsorted(starts, times, side="right") - 1
    k_safe = np.maximum(k, 0)
    down = (k >= 0) & (times < stops[k_safe])
    release = np.where(down[:n], stops[k_safe[:n]], key_offset)

    # The next onset of the same pitch, later than this one, that falls while the pedal is down.
    order = np.lexsort((onset, pitch)) if np.any(onset[1:] < onset[:-1]) else np.argsort(pitch, kind="stable")
    p, s = pitch[order].astype(np.int64), onset[order]
    span = int(max(s.max(), release.max())) + 2
    candidate = p * span + np.where(down[n:][order], s, span - 1)  # span - 1 means "none in this pitch"
    suffix_min = np.minimum.accumulate(candidate[::-1])[::-1]
    key = p * span + s
    new_run = np.concatenate([[True], key[1:] != key[:-1]])
    run_end = np.append(np.flatnonzero(new_run)[1:], n)
    nxt = run_end[np.cumsum(new_run) - 1]  # first position with a larger (pitch, onset)
    has_next = nxt < n
    nxt = np.minimum(nxt, n - 1)
    restrike = np.where(has_next & (p[nxt] == p), suffix_min[nxt] - p * span, span - 1)

    offset = np.empty_like(release)
    offset[order] = np.minimum(release[order], restrike)
    return offset


def _track_arrays(notes: dict, controls: dict, end: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One track's notes (onset, offset, key offset, pitch, velocity) and pedals (number, start, stop), in ticks."""
    onset = notes["time"].astype(np.int64)
    key_offset = onset + notes["duration"]
    pitch = notes["pitch"].astype(np.uint8)
    offset, pedals = key_offset, [[], [], []]
    numbers = controls["number"]
    for number in PEDALS:
        is_pedal = numbers == number
        if not is_pedal.any():
            continue
        starts, stops = pedal_intervals(controls["time"][is_pedal], controls["value"][is_pedal], end)
        if number == SUSTAIN:
            offset = sustain_offsets(onset, key_offset, pitch, starts, stops)
        for part, value in zip(pedals, (np.full(len(starts), number, np.uint8), starts, stops), strict=True):
            part.append(value)
    pedals = [np.concatenate(part) if part else np.zeros(0, np.int64) for part in pedals]
    return [onset, offset, key_offset, pitch, notes["velocity"].astype(np.uint8)], pedals


def read_performance(path: Path | str, max_duration: float = 7200.0) -> Performance:
    """Parse a MIDI file with symusic and return its merged piano performance; raise UnreadableMidi if it can't."""
    import symusic

    try:
        score = symusic.Score(str(path))
    except Exception as exc:  # symusic raises RuntimeError, or anything else on odd input
        raise UnreadableMidi(f"{type(exc).__name__}: {exc}") from exc
    tpq = int(score.ticks_per_quarter)
    if tpq <= 0:
        raise UnreadableMidi(f"unsupported time division (ticks per quarter {tpq})")
    tracks = [t for t in score.tracks if not t.is_drum]
    notes = [t.notes.numpy() for t in tracks]
    controls = [t.controls.numpy() for t in tracks]
    end = max(
        [int(np.max(n["time"] + n["duration"], initial=0)) for n in notes]
        + [int(np.max(c["time"], initial=0)) for c in controls]
        + [0]
    )
    if sum(len(n["time"]) for n in notes) == 0:
        raise UnreadableMidi("contains no notes")
    per_track = [_track_arrays(n, c, end) for n, c in zip(notes, controls, strict=True)]
    if len(per_track) == 1:
        (on, off, key_off, pitch, vel), (number, start, stop) = per_track[0]
    else:
        on, off, key_off, pitch, vel = (np.concatenate(c) for c in zip(*(t[0] for t in per_track), strict=True))
        number, start, stop = (np.concatenate(c) for c in zip(*(t[1] for t in per_track), strict=True))
    if on.min() < 0:
        raise UnreadableMidi(f"a note starts at a negative time (tick {on.min()})")
    keep = off > on  # a note of zero length makes no sound
    if not keep.all():
        on, off, key_off, pitch, vel = on[keep], off[keep], key_off[keep], pitch[keep], vel[keep]
    d_on, d_pitch = np.diff(on), np.diff(pitch.astype(np.int16))
    if not np.all((d_on > 0) | ((d_on == 0) & (d_pitch >= 0))):  # symusic usually hands them over sorted
        order = np.lexsort((pitch, on))
        on, off, key_off, pitch, vel = on[order], off[order], key_off[order], pitch[order], vel[order]
    if len(start) > 1:
        order = np.lexsort((number, start))
        number, start, stop = number[order], start[order], stop[order]

    tempos = score.tempos.numpy()
    to_sec = tick_seconds(
        np.concatenate([on, off, key_off, start, stop, [end]]),
        tempos["time"],
        tempos["mspq"],
        tpq,
    )
    if not np.all(np.isfinite(to_sec)):
        raise UnreadableMidi("note times are not finite")
    duration = float(to_sec[-1])
    if duration > max_duration:
        raise UnreadableMidi(
            f"events span {duration:.0f} s, more than the {max_duration:.0f} s allowed (parse.max_duration_s)"
        )
    onset, offset, key_offset, pedal_onset, pedal_offset = np.split(
        to_sec[:-1], np.cumsum([len(on)] * 3 + [len(start)])
    )
    return Performance(
        onset=onset,
        offset=offset,
        key_offset=key_offset,
        pitch=pitch,
        velocity=vel,
        pedal=number,
        pedal_onset=pedal_onset,
        pedal_offset=pedal_offset,
        duration=duration,
    )
