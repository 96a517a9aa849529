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


def _is_down(starts: np.ndarray, stops: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each time, whether the pedal is down then, and the index of its interval."""
    k = np.searchsorted(starts, t, side="right") - 1
    down = (k >= 0) & (t < stops[np.maximum(k, 0)]) if len(starts) else np.zeros(len(t), bool)
    return down, k


def sustain_offsets(
    onset: np.ndarray, key_offset: np.ndarray, pitch: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> np.ndarray:
    """Magenta's sustain rule, vectorised: a key released under the pedal sounds until the pedal lifts,
    or until the same pitch is struck again while the pedal is down, whichever comes first."""
    onset = np.asarray(onset, dtype=np.int64)
    key_offset = np.asarray(key_offset, dtype=np.int64)
    if len(starts) == 0 or len(onset) == 0:
        return key_offset.copy()
    down_at_release, k = _is_down(starts, stops, key_offset)
    release = np.where(down_at_release, stops[np.maximum(k, 0)], key_offset)

    # The next onset of the same pitch, later than this one, that falls while the pedal is down.
    order = np.lexsort((onset, pitch)) if np.any(np.diff(onset) < 0) else np.argsort(pitch, kind="stable")
    p, s = pitch[order].astype(np.int64), onset[order]
    span = int(max(s.max(), release.max())) + 2
    struck_under_pedal, _ = _is_down(starts, stops, s)
    candidate = p * span + np.where(struck_under_pedal, s, span - 1)  # span - 1 means "none in this pitch"
    suffix_min = np.minimum.accumulate(candidate[::-1])[::-1]
    key = p * span + s
    nxt = np.searchsorted(key, key, side="right")
    has_next = nxt < len(s)
    nxt = np.minimum(nxt, len(s) - 1)
    restrike = np.where(has_next & (p[nxt] == p), suffix_min[nxt] - p * span, span - 1)

    offset = release.copy()
    offset[order] = np.minimum(release[order], restrike)
    return offset


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
    end = max((int(np.max(n["time"] + n["duration"], initial=0)) for n in notes), default=0)
    end = max([end] + [int(np.max(c["time"], initial=0)) for c in controls])

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("on", "off", "key_off", "pitch", "vel")}
    pedal_parts: dict[str, list[np.ndarray]] = {"number": [], "start": [], "stop": []}
    for n, c in zip(notes, controls, strict=True):
        on = n["time"].astype(np.int64)
        key_off = on + n["duration"].astype(np.int64)
        pitch = n["pitch"].astype(np.uint8)
        off = key_off
        for number in PEDALS:
            is_pedal = c["number"] == number
            starts, stops = pedal_intervals(c["time"][is_pedal], c["value"][is_pedal], end)
            if number == SUSTAIN:
                off = sustain_offsets(on, key_off, pitch, starts, stops)
            pedal_parts["number"].append(np.full(len(starts), number, np.uint8))
            pedal_parts["start"].append(starts)
            pedal_parts["stop"].append(stops)
        for key, value in zip(parts, (on, off, key_off, pitch, n["velocity"].astype(np.uint8)), strict=True):
            parts[key].append(value)

    cat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    if len(cat["on"]) == 0:
        raise UnreadableMidi("contains no notes")
    if cat["on"].min() < 0:
        raise UnreadableMidi(f"a note starts at a negative time (tick {cat['on'].min()})")
    keep = cat["off"] > cat["on"]  # a note of zero length makes no sound
    order = np.lexsort((cat["pitch"][keep], cat["on"][keep]))
    cat = {k: v[keep][order] for k, v in cat.items()}
    pedal = {k: np.concatenate(v) for k, v in pedal_parts.items()}
    pedal_order = np.lexsort((pedal["number"], pedal["start"]))
    pedal = {k: v[pedal_order] for k, v in pedal.items()}

    tempos = score.tempos.numpy()
    to_sec = tick_seconds(
        np.concatenate([cat["on"], cat["off"], cat["key_off"], pedal["start"], pedal["stop"], [end]]),
        tempos["time"], tempos["mspq"], tpq,
    )
    if not np.all(np.isfinite(to_sec)):
        raise UnreadableMidi("note times are not finite")
    duration = float(to_sec[-1])
    if duration > max_duration:
        raise UnreadableMidi(
            f"events span {duration:.0f} s, more than the {max_duration:.0f} s allowed (parse.max_duration_s)"
        )
    onset, offset, key_offset, pedal_onset, pedal_offset = np.split(
        to_sec[:-1], np.cumsum([len(cat["on"])] * 3 + [len(pedal["start"])])
    )
    return Performance(
        onset=onset, offset=offset, key_offset=key_offset, pitch=cat["pitch"], velocity=cat["vel"],
        pedal=pedal["number"], pedal_onset=pedal_onset, pedal_offset=pedal_offset, duration=duration,
    )
