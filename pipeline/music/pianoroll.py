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
