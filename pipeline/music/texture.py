"""What a listener hears first in a stretch of piano music: its register, how many notes, how many keys at once and
for how long. Yang & Lerch's features (features.py) see these only in part: the pitch-class histogram is blind to
octaves. Notes are dicts of onset, offset (s, the sustain pedal applied, as the tokens have it), pitch, velocity.
"""

from __future__ import annotations

import numpy as np

HIGH_PITCH = 96  # C7: real openings put under half a percent of their notes here or above
LONG_NOTE_S = 5.0  # real music holds next to no note longer
TEXTURE = ("mean_pitch", "high_share", "notes_per_second", "polyphony", "note_duration", "long_share")


def window(notes: dict[str, np.ndarray], start: float, seconds: float) -> dict[str, np.ndarray]:
    """The notes that start in [start, start + seconds), times from `start`, each cut at the window's end."""
    onset = np.asarray(notes["onset"], np.float64)
    keep = (onset >= start) & (onset < start + seconds)
    out = {key: np.asarray(value)[keep] for key, value in notes.items()}
    out["onset"] = onset[keep] - start
    out["offset"] = np.minimum(np.asarray(notes["offset"], np.float64)[keep], start + seconds) - start
    return out


def texture(notes: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    """One stretch of `seconds`: mean pitch, the share of notes at C7 and above, notes per second, polyphony (the
    mean number of keys sounding while any does), mean note duration (s) and the share of notes over LONG_NOTE_S
    (NaN where there are no notes)."""
    onset = np.asarray(notes["onset"], np.float64)
    duration = np.maximum(np.asarray(notes["offset"], np.float64) - onset, 0.0)
    pitch = np.asarray(notes["pitch"], np.float64)
    if len(onset) == 0:
        return {name: (0.0 if name == "notes_per_second" else np.nan) for name in TEXTURE}
    times = np.concatenate([onset, onset + duration])
    delta = np.concatenate([np.ones(len(onset)), -np.ones(len(onset))])
    order = np.lexsort((delta, times))  # at one instant a key ends before another starts
    held = np.cumsum(delta[order])[:-1]
    spans = np.diff(times[order])
    sounding = float(np.sum(spans * (held > 0)))
    return {
        "mean_pitch": float(pitch.mean()),
        "high_share": float(np.mean(pitch >= HIGH_PITCH)),
        "notes_per_second": len(onset) / seconds,
        "polyphony": float(np.sum(spans * held) / sounding) if sounding > 0 else np.nan,
        "note_duration": float(duration.mean()),
        "long_share": float(np.mean(duration > LONG_NOTE_S)),
    }


def set_texture(pieces: list[dict[str, np.ndarray]], seconds: float) -> dict[str, float]:
    """The texture of a set of stretches of `seconds`: each figure's mean over the stretches that define it, the
    shares over all their notes, and the spread (standard deviation) of their mean pitches."""
    each = [texture(notes, seconds) for notes in pieces]
    notes = np.array([len(p["onset"]) for p in pieces], np.float64)
    out = {"pieces": len(pieces)}
    for name in TEXTURE:
        values = np.array([t[name] for t in each], np.float64)
        defined = np.isfinite(values)
        if name.endswith("_share"):  # over notes, so that a short stretch weighs as little as it holds
            out[name] = float(np.average(values[defined], weights=notes[defined])) if notes[defined].sum() else np.nan
        else:
            out[name] = float(values[defined].mean()) if defined.any() else np.nan
    pitches = np.array([t["mean_pitch"] for t in each], np.float64)
    out["mean_pitch_spread"] = float(np.std(pitches[np.isfinite(pitches)])) if np.isfinite(pitches).any() else np.nan
    return out
