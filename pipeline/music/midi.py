"""MIDI files in and out: a file read into a piano performance (symusic's C++ parser, then numpy), and notes written
back with mido. Magenta's `midi_io` and the sustain rule of its `sequences_lib`, for this project.

All timing work is done in integer ticks, so pedal and re-strike comparisons are exact, and only the
finished ticks are converted to seconds through the file's tempo map. Notes travel as a dict of arrays with the keys
`onset`, `offset` (seconds), `pitch` and `velocity`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import symusic

SUSTAIN, SOSTENUTO, SOFT = 64, 66, 67
PEDALS = {SUSTAIN: "sustain", SOSTENUTO: "sostenuto", SOFT: "soft"}


class UnreadableMidi(Exception):
    """A MIDI file that cannot be turned into a performance; the message is the reason."""


class TooLong(UnreadableMidi):
    """A MIDI file whose events span more than the reader allows."""


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


def tempo_map(tempo_ticks: np.ndarray, tempo_mspq: np.ndarray, tpq: int) -> tuple[np.ndarray, np.ndarray]:
    """(first tick, seconds per tick) of each tempo segment, built the way pretty_midi builds it, so that times are
    the same floats note-seq reads: 120 bpm until a tempo is set, a change to the same rate is no change."""
    ticks, scales = [0], [60.0 / (120.0 * tpq)]
    for tick, mspq in zip(np.asarray(tempo_ticks).tolist(), np.asarray(tempo_mspq).tolist(), strict=True):
        scale = 60.0 / ((6e7 / mspq) * tpq)
        if tick == 0:
            ticks, scales = [0], [scale]
        elif scale != scales[-1]:
            ticks.append(tick)
            scales.append(scale)
    return np.array(ticks, np.int64), np.array(scales, np.float64)


def tick_seconds(ticks: np.ndarray, tempo_ticks: np.ndarray, tempo_mspq: np.ndarray, tpq: int) -> np.ndarray:
    """Convert absolute ticks to seconds through a tempo map (the last tempo at a tick wins)."""
    starts, scales = tempo_map(tempo_ticks, tempo_mspq, tpq)
    ticks = np.asarray(ticks, dtype=np.int64)
    if len(starts) == 1:  # one tempo for the whole file, as in every MAESTRO file
        return scales[0] * ticks
    # Each segment starts where the previous one ends, accumulated segment by segment as pretty_midi does.
    segment_start = np.zeros(len(starts))
    for k in range(1, len(starts)):
        segment_start[k] = segment_start[k - 1] + scales[k - 1] * (starts[k] - starts[k - 1])
    k = np.searchsorted(starts, ticks, side="right") - 1
    return segment_start[k] + scales[k] * (ticks - starts[k])


def pedal_intervals(times: np.ndarray, values: np.ndarray, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Down intervals [start, stop) of one pedal from its time-sorted control events (value >= 64 is down).

    As in note-seq, the pedal is up after a tick that holds any value below 64 (its presses are applied before its
    lifts), and down after a tick of presses only; a pedal never lifted is lifted at `end`.
    """
    times = np.asarray(times, dtype=np.int64)
    if len(times) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first_at_tick = np.flatnonzero(np.concatenate([[True], times[1:] != times[:-1]]))
    times, down = times[first_at_tick], np.logical_and.reduceat(np.asarray(values) >= 64, first_at_tick)
    was_down = np.concatenate([[False], down[:-1]])
    starts, stops = times[down & ~was_down], times[~down & was_down]
    if len(stops) < len(starts):
        stops = np.append(stops, max(end, starts[-1]))
    return starts, stops


def sustain_offsets(
    onset: np.ndarray, key_offset: np.ndarray, pitch: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """note-seq's sustain rule (`apply_sustain_control_changes`), vectorised; returns the offsets and which notes stay.

    A key released while the pedal is down sounds until the pedal lifts. A strike while the pedal is down ends every
    earlier note of its pitch, held or released; an earlier note that started at the same tick is removed. At one
    tick, pedal changes come before strikes and strikes before releases.
    """
    n = len(onset)
    if len(starts) == 0 or n == 0:
        return key_offset.copy(), np.ones(n, bool)
    # Whether the pedal is down at each key release and at each onset, and which down interval it is in.
    times = np.concatenate([key_offset, onset])
    k = np.searchsorted(starts, times, side="right") - 1
    k_safe = np.maximum(k, 0)
    down = (k >= 0) & (times < stops[k_safe])
    release = np.where(down[:n], stops[k_safe[:n]], key_offset)

    # The first later note of the same pitch (by onset, then row) that starts while the pedal is down.
    order = np.lexsort((onset, pitch))
    p, s = pitch[order].astype(np.int64), onset[order]
    span = int(max(s.max(), release.max())) + 2
    candidate = p * span + np.where(down[n:][order], s, span - 1)  # span - 1 means "none in this pitch"
    suffix_min = np.minimum.accumulate(candidate[::-1])[::-1]
    later = np.append(suffix_min[1:], (p[-1] + 1) * span) - p * span  # from another pitch: >= span, so "none"
    restrike = np.minimum(later, span - 1)

    offset, keep = np.empty_like(release), np.empty(n, bool)
    offset[order] = np.minimum(release[order], restrike)
    keep[order] = restrike != s
    return offset, keep


def _track_arrays(notes: dict, controls: dict, ends: dict[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One track's notes (onset, offset, key offset, pitch, velocity) and pedals (number, start, stop), in ticks.

    Notes of zero length are left out before the pedal is applied, as pretty_midi's reader leaves them out.
    """
    sounding = notes["duration"] > 0
    onset = notes["time"][sounding].astype(np.int64)
    key_offset = onset + notes["duration"][sounding]
    pitch, velocity = notes["pitch"][sounding].astype(np.uint8), notes["velocity"][sounding].astype(np.uint8)
    offset, keep, pedals = key_offset, np.ones(len(onset), bool), [[], [], []]
    numbers = controls["number"]
    for number in PEDALS:
        is_pedal = numbers == number
        if not is_pedal.any():
            continue
        starts, stops = pedal_intervals(controls["time"][is_pedal], controls["value"][is_pedal], ends[number])
        if number == SUSTAIN:
            offset, keep = sustain_offsets(onset, key_offset, pitch, starts, stops)
        for part, value in zip(pedals, (np.full(len(starts), number, np.uint8), starts, stops), strict=True):
            part.append(value)
    pedals = [np.concatenate(part) if part else np.zeros(0, np.int64) for part in pedals]
    return [onset[keep], offset[keep], key_offset[keep], pitch[keep], velocity[keep]], pedals


def read_performance(path: Path | str, max_duration: float = 7200.0) -> Performance:
    """Parse a MIDI file with symusic and return its merged piano performance; raise UnreadableMidi if it can't."""
    score, tpq = _score(path)
    every = [(t.is_drum, t.notes.numpy(), t.controls.numpy()) for t in score.tracks]  # each track converted once
    end, ends = _event_ends(every)
    notes = [(n, c) for drum, n, c in every if not drum]
    (on, off, key_off, pitch, vel), (number, start, stop) = _merged_tracks(notes, ends)
    if on.min() < 0:
        raise UnreadableMidi(f"a note starts at a negative time (tick {on.min()})")
    d_on, d_pitch = np.diff(on), np.diff(pitch.astype(np.int16))
    if not np.all((d_on > 0) | ((d_on == 0) & (d_pitch >= 0))):  # symusic usually hands them over sorted
        order = np.lexsort((pitch, on))
        on, off, key_off, pitch, vel = on[order], off[order], key_off[order], pitch[order], vel[order]
    if len(start) > 1:
        order = np.lexsort((number, start))
        number, start, stop = number[order], start[order], stop[order]
    to_sec = _event_seconds(score, tpq, [on, off, key_off, start, stop], end)
    duration = float(to_sec[-1])
    if duration > max_duration:
        raise TooLong(f"events span {duration:.0f} s, more than the {max_duration:.0f} s allowed")
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


def _score(path: Path | str) -> tuple[symusic.Score, int]:
    """The file parsed by symusic, and its ticks per quarter note; raise UnreadableMidi if it can't."""
    import symusic

    try:
        score = symusic.Score(str(path))
    except Exception as exc:  # symusic raises RuntimeError, or anything else on odd input
        raise UnreadableMidi(f"{type(exc).__name__}: {exc}") from exc
    tpq = int(score.ticks_per_quarter)
    if tpq <= 0:
        raise UnreadableMidi(f"unsupported time division (ticks per quarter {tpq})")
    return score, tpq


def _event_ends(every: list[tuple[bool, dict, dict]]) -> tuple[int, dict[int, int]]:
    """The tick of the last note or control event of the non-drum tracks, and the tick at which each pedal never
    lifted is lifted, from every track's (is_drum, notes, controls); raise UnreadableMidi if no note sounds."""
    notes = [n for drum, n, _ in every if not drum]
    controls = [c for drum, _, c in every if not drum]
    end = max(
        [int(np.max(n["time"] + n["duration"], initial=0)) for n in notes]
        + [int(np.max(c["time"], initial=0)) for c in controls]
        + [0]
    )
    if sum(int(np.count_nonzero(n["duration"] > 0)) for n in notes) == 0:
        raise UnreadableMidi("contains no notes")
    # note-seq lifts a sustain pedal that is never lifted at the last note release or sustain event of the file. Its
    # reader keeps control events only in tracks that have a sounding note, drum tracks among them.
    sounding = [c for _, n, c in every if np.any(n["duration"] > 0)]
    sustain_end = max(
        [int(np.max((n["time"] + n["duration"])[n["duration"] > 0], initial=0)) for n in notes]
        + [int(np.max(c["time"][c["number"] == SUSTAIN], initial=0)) for c in sounding]
    )
    return end, {number: sustain_end if number == SUSTAIN else end for number in PEDALS}


def _merged_tracks(tracks: list[tuple[dict, dict]], ends: dict[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The notes (onset, offset, key offset, pitch, velocity) and pedals (number, start, stop) of all the (notes,
    controls) tracks together, in ticks, each track's in its own order."""
    per_track = [_track_arrays(n, c, ends) for n, c in tracks]
    if len(per_track) == 1:
        return per_track[0]
    notes = [np.concatenate(c) for c in zip(*(t[0] for t in per_track), strict=True)]
    pedals = [np.concatenate(c) for c in zip(*(t[1] for t in per_track), strict=True)]
    return notes, pedals


def _event_seconds(score: symusic.Score, tpq: int, ticks: list[np.ndarray], end: int) -> np.ndarray:
    """The times in seconds of the events `ticks` (concatenated) and then of `end`, through the file's tempo map;
    raise UnreadableMidi for a tempo of zero or times that are not finite."""
    tempos = score.tempos.numpy()
    if np.any(tempos["mspq"] <= 0):
        raise UnreadableMidi("a tempo of zero microseconds per quarter note")
    to_sec = tick_seconds(np.concatenate([*ticks, [end]]), tempos["time"], tempos["mspq"], tpq)
    if not np.all(np.isfinite(to_sec)):
        raise UnreadableMidi("note times are not finite")
    return to_sec


def cut_notes(notes: dict[str, np.ndarray], seconds: float) -> dict[str, np.ndarray]:
    """The notes that start before `seconds`, each ending by then (note-seq's `extract_subsequence` of the start)."""
    keep = np.asarray(notes["onset"]) < seconds
    cut = {k: np.asarray(v)[keep] for k, v in notes.items()}
    cut["offset"] = np.minimum(cut["offset"], seconds)
    return cut


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
