"""The notes the report compares: a split's pieces, each piece's opening, and a generated sample's new notes (after
its primer), each a dict of onset, offset (s), pitch and velocity arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError


def split_notes(pieces: dict, notes: dict, split: str) -> list[dict[str, np.ndarray]]:
    """Each piece of a split as its own note dict, in piece order."""
    rows = np.flatnonzero(pieces["split"] == split)
    order = np.argsort(notes["piece"], kind="stable")
    bounds = np.searchsorted(notes["piece"][order], np.arange(len(pieces["piece_id"]) + 1))
    keys = ("onset", "offset", "pitch", "velocity")
    return [{k: notes[k][order[bounds[r] : bounds[r + 1]]] for k in keys} for r in rows]


def openings(pieces: list[dict], seconds: float) -> list[dict[str, np.ndarray]]:
    """Each piece's first `seconds` from its time 0, as a sample from nothing is (ends cut there); pieces that end
    before then are left out."""
    from pipeline.music.texture import window

    return [window(p, 0.0, seconds) for p in pieces if len(p["onset"]) and float(np.max(p["offset"])) >= seconds]


def new_notes(midi: Path, start: float) -> dict[str, np.ndarray]:
    """The notes of a sample's MIDI file from `start` seconds on (after its primer), times from there; a silent
    sample has none."""
    from pipeline.music.midi import UnreadableMidi, read_performance

    keys = ("onset", "offset", "pitch", "velocity")
    if not Path(midi).is_file():
        raise PipelineError(f"{midi}: listed in samples.json but missing (rerun the generate stage)")
    try:
        perf = read_performance(midi)
    except UnreadableMidi as exc:
        if str(exc) != "contains no notes":  # a silent sample is the only MIDI of generate's the reader refuses
            raise PipelineError(f"{midi}: unreadable sample ({exc})") from exc
        return {k: np.zeros(0) for k in keys}
    new = perf.onset >= start - 1e-6
    return {"onset": perf.onset[new] - start, "offset": perf.offset[new] - start, "pitch": perf.pitch[new],
            "velocity": perf.velocity[new]}  # fmt: skip
