"""Piano rolls: the same notes give the same bytes, whatever was drawn before them in the process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from pipeline.music.pianoroll import draw_piano_roll, note_name

NOTES = {
    "onset": np.array([0.0, 0.5, 1.0]),
    "offset": np.array([0.4, 1.5, 2.0]),
    "pitch": np.array([60, 64, 67]),
    "velocity": np.array([100, 40, 80]),
}

DRAW = """
import sys
import numpy as np
from pipeline.music.pianoroll import draw_piano_roll
notes = {k: np.array(v) for k, v in %r.items()}
for path in sys.argv[1:]:
    draw_piano_roll(notes, path, 2.5, "roll", primer_end=0.5)
"""


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_first_roll_of_a_process_looks_like_every_other(tmp_path):
    # Each process starts with matplotlib's defaults: the first roll must not be drawn before the style is set.
    script = DRAW % {k: v.tolist() for k, v in NOTES.items()}
    alone, first, second = tmp_path / "alone.png", tmp_path / "first.png", tmp_path / "second.png"
    subprocess.run([sys.executable, "-c", script, str(alone)], check=True, timeout=120)
    subprocess.run([sys.executable, "-c", script, str(first), str(second)], check=True, timeout=120)
    assert alone.read_bytes() == first.read_bytes() == second.read_bytes()
    assert _png_size(alone.read_bytes()) == (1200, 400)


def test_same_notes_same_bytes_and_other_notes_other_bytes(tmp_path):
    a = draw_piano_roll(NOTES, tmp_path / "a.png", 2.5, "roll").read_bytes()
    b = draw_piano_roll(NOTES, tmp_path / "b.png", 2.5, "roll").read_bytes()
    louder = {**NOTES, "velocity": NOTES["velocity"] + 20}
    c = draw_piano_roll(louder, tmp_path / "c.png", 2.5, "roll").read_bytes()
    shaded = draw_piano_roll(NOTES, tmp_path / "d.png", 2.5, "roll", primer_end=1.0).read_bytes()
    assert a == b and len({a, c, shaded}) == 3
    assert b"tEXt" not in a and b"Software" not in a and b"tIME" not in a  # no software version or date in the bytes
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, nothing left behind


def test_note_names_follow_scientific_pitch():
    assert [note_name(p) for p in (21, 60, 61, 108)] == ["A0", "C4", "C#4", "C8"]


def test_an_empty_roll_is_a_picture(tmp_path):
    empty = {k: v[:0] for k, v in NOTES.items()}
    assert _png_size(draw_piano_roll(empty, tmp_path / "e.png", 1.0, "silence").read_bytes()) == (1200, 400)
