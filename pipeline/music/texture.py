"""What a listener hears first in a stretch of piano music: its register, how many notes, how many keys at once and
for how long. Yang & Lerch's features (features.py) see these only in part: the pitch-class histogram is blind to
octaves. Notes are dicts of onset, offset (s, the sustain pedal applied, as the tokens have it), pitch, velocity.
A piece's texture track is the same, window by window, as a model reads it (pipeline/music/piano_state_torch.py
reads it by the piece clock).
"""

from __future__ import annotations

import numpy as np

from pipeline.music.performance_encoding import NOTE_OFF, NOTE_ON, STEP_S, TIME_SHIFT, decode, elapsed_steps, time_steps

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


# A piece's texture as a model reads it beside the piano state, window by window: notes per second, mean pitch,
# polyphony and mean note duration of each TEXTURE_WINDOW_S of the piece, scaled to about [0, 1], then where the
# piece stands against the track (its plan): the notes still to come by the window's end, their mean pitch, their
# mean place on the circle of fifths, the keys that sound on average over the rest of the window, and the share of the
# window left. The plan says what the next seconds hold, which the notes so far do not, so the model learns to follow
# it: the keys to come tell it when to release as the notes to come tell it when to strike, and their place on the
# circle which pitch classes to strike. While sampling, a real piece's track, drawn, keeps the music to a pianist's
# texture and key where the model's own notes would let it drift.
PIECE_TEXTURE = ("notes_per_second", "mean_pitch", "polyphony", "note_duration")
PLAN = ("notes_to_come", "pitch_to_come", "fifths_x_to_come", "fifths_y_to_come", "keys_to_come", "window_left")
PIECE_TEXTURE_SIZE = len(PIECE_TEXTURE) + len(PLAN)
TEXTURE_WINDOW_S = 10
TEXTURE_WINDOW_STEPS = round(TEXTURE_WINDOW_S / STEP_S)
PLAN_NOTES = 400  # notes to come read 1 from here on: ten seconds of the densest music
PLAN_KEYS = 31  # keys to come read 1 from here on (log2(1 + keys) / 5): no pianist holds more
# Pitches are read in octaves from middle C: a register a few semitones off is a few tenths, where pitch / 127 made
# it a few hundredths, too small a change in the input for the model to steer by.
MIDDLE_C = 60
# Pitch class c sits at 7c mod 12 of the circle of fifths' twelve places: a key's scale lies on seven neighbouring
# places, so the mean of its notes' unit vectors points at the key and is long, and a chromatic passage's is short.
FIFTH = 7
# A track's columns: what the piece holds from its start to each window's end (the notes, the sum of their pitches,
# the key-steps: steps times the keys sounding, as the piano state counts them, and the sum of the notes' places on
# the circle of fifths, x then y), then the window's scaled texture.
TRACK_BY_END = ("notes_by_end", "pitch_sum_by_end", "key_steps_by_end", "fifths_x_by_end", "fifths_y_by_end")
NOTES_BY_END, PITCH_BY_END, KEYS_BY_END, FIFTHS_X_BY_END, FIFTHS_Y_BY_END = range(len(TRACK_BY_END))
FIRST_TEXTURE = len(TRACK_BY_END)
TRACK_COLUMNS = FIRST_TEXTURE + len(PIECE_TEXTURE)


def fifths(pitch: np.ndarray) -> np.ndarray:
    """Each pitch's place on the circle of fifths as a unit vector [..., 2] (x, y; float64)."""
    angle = (FIFTH * np.asarray(pitch, np.int64) % 12) * (2 * np.pi / 12)
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def scaled_texture(figures: dict) -> np.ndarray:
    """A stretch's texture (`texture`) as the model reads it [..., len(PIECE_TEXTURE)] (float32; figures may be
    arrays of stretches): log1p(notes per second) / log1p(40), octaves of mean pitch from middle C, log2(polyphony) /
    4 and log1p(mean duration in s) / log1p(10); 0 where undefined."""
    scaled = (
        np.log1p(figures["notes_per_second"]) / np.log1p(40),
        (figures["mean_pitch"] - MIDDLE_C) / 12,
        np.log2(figures["polyphony"]) / 4,
        np.log1p(figures["note_duration"]) / np.log1p(10),
    )
    return np.nan_to_num(np.stack(scaled, axis=-1).astype(np.float32))


def texture_track(tokens: np.ndarray) -> np.ndarray:
    """A piece's texture track from its tokens [windows, TRACK_COLUMNS]: for each TEXTURE_WINDOW_S, the notes, the
    sum of their pitches, the key-steps (`key_steps`) and the sum of their `fifths` from the start to the window's
    end, then `texture` of the notes that start in the window, cut at its end (the last window as long as the music),
    scaled; in one pass over the notes: no note outlasts its window once cut, so the windows' sounding times add up
    over one sweep."""
    notes, steps = decode(tokens), elapsed_steps(tokens)
    windows = max(1, -(-steps // TEXTURE_WINDOW_STEPS))
    onset, pitch = np.asarray(notes["onset"], np.float64), np.asarray(notes["pitch"], np.float64)
    w = np.minimum(np.round(onset / STEP_S).astype(np.int64) // TEXTURE_WINDOW_STEPS, windows - 1)
    offset = np.minimum(np.asarray(notes["offset"], np.float64), (w + 1) * TEXTURE_WINDOW_S)
    duration = np.maximum(offset - onset, 0.0)
    order = np.argsort(onset, kind="stable")  # decode sorts by onset already; the sweep must not rely on it
    reach = np.maximum.accumulate(offset[order])  # the latest end so far: what lies before it already sounds
    before = np.concatenate([[-np.inf], reach[:-1]])
    sounding = np.bincount(w[order], np.maximum(offset[order] - np.maximum(onset[order], before), 0.0), windows)
    count = np.bincount(w, minlength=windows)
    seconds = np.clip(steps - np.arange(windows) * TEXTURE_WINDOW_STEPS, 1, TEXTURE_WINDOW_STEPS) * STEP_S
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty window: NaN, then 0
        figures = {
            "notes_per_second": count / seconds,
            "mean_pitch": np.bincount(w, pitch, windows) / count,
            "polyphony": np.bincount(w, duration, windows) / sounding,
            "note_duration": np.bincount(w, duration, windows) / count,
        }
        ends = np.minimum(np.arange(1, windows + 1) * TEXTURE_WINDOW_STEPS, steps)
        circle = fifths(notes["pitch"])
        by_end = np.stack([np.cumsum(count), np.cumsum(np.bincount(w, pitch, windows)), key_steps(tokens)[ends],
                           *(np.cumsum(np.bincount(w, circle[:, i], windows)) for i in (0, 1))], 1)  # fmt: skip
        return np.concatenate([by_end.astype(np.float32), scaled_texture(figures)], axis=1)


def key_steps(tokens: np.ndarray) -> np.ndarray:
    """The key-steps of one piece's tokens by each time step [steps + 1]: the sum over the steps before it of the keys
    sounding, a key sounding while it has an open strike, as the piano state counts them (a release with none open
    is ignored), all at once: each key's strike count as a running sum held at zero by its running minimum."""
    t = np.asarray(tokens, np.int64)
    clock = np.cumsum(time_steps(t))
    steps = int(clock[-1]) if len(t) else 0
    keyed = (t >= NOTE_ON) & (t < TIME_SHIFT)  # strikes and releases
    key, at = (t[keyed] - NOTE_ON) % (NOTE_OFF - NOTE_ON), clock[keyed]
    delta = np.where(t[keyed] < NOTE_OFF, 1, -1)
    order = np.argsort(key, kind="stable")  # each key's strikes and releases together, in time order
    key, at, delta = key[order], at[order], delta[order]
    first = np.r_[True, key[1:] != key[:-1]][: len(key)]
    group = np.cumsum(first)
    total = np.cumsum(delta)
    running = total - (total - delta)[first][group - 1]  # the key's own running sum
    big = 2 * (len(delta) + 1)  # keeps each key's running minimum to its own events
    held = running - np.minimum(np.minimum.accumulate(running - group * big) + group * big, 0)
    until = np.where(np.r_[first[1:], True][: len(key)], steps, np.r_[at[1:], steps][: len(key)])  # the next event
    sounding = held > 0
    count = np.bincount(at[sounding], minlength=steps + 1) - np.bincount(until[sounding], minlength=steps + 1)
    return np.r_[0, np.cumsum(np.cumsum(count)[:steps])]


def token_windows(tokens: np.ndarray, windows: int) -> np.ndarray:
    """The window of the piece's clock after each token [len(tokens)], the last of `windows` from there on."""
    clock = np.cumsum(time_steps(np.asarray(tokens, np.int64)))
    return np.minimum(clock // TEXTURE_WINDOW_STEPS, windows - 1)


def transposed(tracks: np.ndarray, semitones: np.ndarray) -> np.ndarray:
    """Texture tracks [pieces, windows, columns] of the pieces moved by `semitones` [pieces]: the pitch sums and the
    mean pitch of each window with notes move with them, the sum of their places on the circle of fifths turns by
    seven places per semitone, the rest stays."""
    out = np.array(tracks, np.float32)
    moved = np.asarray(semitones, np.float32)[:, None]
    out[..., PITCH_BY_END] += moved * out[..., NOTES_BY_END]
    turn = fifths(semitones)[:, None]  # [pieces, 1, 2]: a semitone moves each pitch class seven places round
    cos, sin = turn[..., 0], turn[..., 1]
    x, y = (np.asarray(tracks)[..., column].astype(np.float64) for column in (FIFTHS_X_BY_END, FIFTHS_Y_BY_END))
    out[..., FIFTHS_X_BY_END] = x * cos - y * sin
    out[..., FIFTHS_Y_BY_END] = x * sin + y * cos
    has_notes = out[..., FIRST_TEXTURE + PIECE_TEXTURE.index("notes_per_second")] > 0
    out[..., FIRST_TEXTURE + PIECE_TEXTURE.index("mean_pitch")] += np.where(has_notes, moved / 12, 0)
    return out


def padded_tracks(tracks: list[np.ndarray], windows: int = 0) -> np.ndarray:
    """Texture tracks of several pieces as one array [pieces, max(windows, the longest), columns], each shorter one
    carried on with its last window: the same texture, and as many notes again in each window after."""
    longest = max(windows, *(len(t) for t in tracks))
    out = []
    for track in tracks:
        last = track[-1].copy()
        by_end = slice(0, FIRST_TEXTURE)
        step = last[by_end] - (track[-2, by_end] if len(track) > 1 else 0)  # what the last window adds
        extra = np.repeat(last[None], longest - len(track), axis=0)
        extra[:, by_end] += np.arange(1, longest - len(track) + 1)[:, None] * step
        out.append(np.concatenate([track, extra]))
    return np.stack(out).astype(np.float32)
