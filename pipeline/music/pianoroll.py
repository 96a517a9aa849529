"""Piano-roll pictures of performances: one bar per note, darker when louder.

Saved as the report's figures are (`plot.save_png`): the same notes always give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.music.plot import pyplot, save_png

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(pitch: int) -> str:
    """MIDI pitch to scientific pitch notation (60 is C4)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def draw_piano_roll(notes: dict[str, np.ndarray], path: Path, end: float, title: str, primer_end: float = 0.0) -> Path:
    """Write a piano roll of `notes` from 0 to `end` seconds to `path`, shading the primer (before primer_end)."""
    plt = pyplot()  # the style is set before the figure is made, so every roll looks alike
    onset, offset = np.asarray(notes["onset"], float), np.asarray(notes["offset"], float)
    pitch, velocity = np.asarray(notes["pitch"], int), np.asarray(notes["velocity"], float)
    low, high = (int(pitch.min()) - 2, int(pitch.max()) + 2) if len(pitch) else (57, 75)
    fig, ax = plt.subplots(figsize=(12, 4), dpi=100)
    if primer_end > 0:
        ax.axvspan(0, primer_end, color="#dbe9f6", zorder=0)
        ax.text(primer_end / 2, high - 0.5, "primer", ha="center", va="top", fontsize=9, color="#31688e")
    colors = plt.get_cmap("Blues")(0.35 + 0.65 * np.clip(velocity, 0, 127) / 127)
    ax.barh(pitch, offset - onset, left=onset, height=0.8, color=colors, edgecolor="#08306b", linewidth=0.3, zorder=2)
    c_notes = [p for p in range(low, high + 1) if p % 12 == 0]
    ax.set_yticks(c_notes, [note_name(p) for p in c_notes])
    ax.set_ylim(low - 0.5, high + 0.5)
    ax.set_xlim(0, max(end, 1e-3))
    ax.set_xlabel("seconds")
    ax.set_ylabel("pitch")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="y", color="#eeeeee", zorder=1)
    save_png(fig, path)
    return Path(path)


LOWEST_KEY, HIGHEST_KEY = 21, 108  # the piano's A0 and C8
ROLL_BACKGROUND, ROLL_PRIMER = (255, 255, 255), (219, 233, 246)  # as draw_piano_roll's page and primer shading


def roll_image(
    notes: dict[str, np.ndarray], end: float, primer_end: float = 0.0, width: int = 960, key_px: int = 3
) -> np.ndarray:
    """A piano roll as an RGB array [88 × key_px, width, 3], cheap enough to redraw while the music is written: the
    piano's 88 keys from the top (C8) down, 0 to `end` seconds across, the primer shaded, each note a bar the
    darker the louder (the colours of draw_piano_roll)."""
    image = np.empty((88 * key_px, width, 3), np.uint8)
    image[:] = ROLL_BACKGROUND
    scale = width / max(end, 1e-3)
    image[:, : int(round(primer_end * scale))] = ROLL_PRIMER
    pitch = np.asarray(notes["pitch"], int)
    keep = (pitch >= LOWEST_KEY) & (pitch <= HIGHEST_KEY)
    left = np.clip(np.round(np.asarray(notes["onset"], float)[keep] * scale).astype(int), 0, width)
    right = np.clip(np.round(np.asarray(notes["offset"], float)[keep] * scale).astype(int), 0, width)
    shade = 0.35 + 0.65 * np.clip(np.asarray(notes["velocity"], float)[keep], 0, 127) / 127
    colors = np.round(255 * _blues(shade)).astype(np.uint8)
    for key, x0, x1, color in zip(HIGHEST_KEY - pitch[keep], left, np.maximum(right, left + 1), colors, strict=True):
        image[key * key_px : (key + 1) * key_px - (key_px > 1), x0:x1] = color  # a gap of a pixel between keys
    return image


def _blues(shade: np.ndarray) -> np.ndarray:
    """Matplotlib's Blues colour map at `shade` (0 to 1), as RGB in 0 to 1, without importing matplotlib."""
    stops = np.linspace(0, 1, 9)
    table = np.array(  # the nine colours that define Blues
        [[247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214],
         [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]]
    ) / 255  # fmt: skip
    return np.stack([np.interp(shade, stops, table[:, c]) for c in range(3)], axis=-1)
