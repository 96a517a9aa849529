"""Primers: what a sample continues. The opening of a MIDI file (read with the parse stage's reader, sustain applied,
so that it is encoded exactly as the training data was), the opening of a validation piece's tokens, or nothing.

A primer is cut at primer_seconds: notes still sounding end there, and a silence before the cut is kept, so the
continuation starts at the cut (or at the file's end, if that comes first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.music.midi import UnreadableMidi, cut_notes, read_performance
from pipeline.music.performance_encoding import PIECE_START, STEP_S, decode, elapsed_steps, encode_opening
from pipeline.params import GenerateParams
from pipeline.token_folder import PieceStore


@dataclass
class Primer:
    """A primer's tokens (PIECE_START, its events, no PIECE_END), where it ends in 10 ms steps, and what it is."""

    tokens: np.ndarray
    steps: int
    source: str

    @property
    def seconds(self) -> float:
        """Where the primer ends, as `decode` gives times: steps × STEP_S."""
        return self.steps * STEP_S


def primer_from_midi(path: Path, seconds: float) -> Primer:
    """A MIDI file's first `seconds`, read as the parse stage reads it; a bad file is a one-line PipelineError."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: primer file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: primer file is empty")
    try:
        performance = read_performance(path)
    except UnreadableMidi as exc:
        raise PipelineError(f"{path}: not a readable MIDI primer ({exc})") from exc
    notes = {k: getattr(performance, k) for k in ("onset", "offset", "pitch", "velocity")}
    notes = cut_notes(notes, seconds)
    if len(notes["onset"]) == 0:
        raise PipelineError(f"{path}: no note starts in the first {seconds:g} s (see --primer-seconds)")
    return Primer(*encode_opening(notes, min(seconds, performance.duration)), str(path))


def primer_from_piece(tokens: Path, piece_id: int, seconds: float) -> Primer:
    """The first `seconds` of a validation piece, from the tokenize stage's shards."""
    store = PieceStore(tokens, "validation")
    index = store.index
    rows = [
        i
        for i, (pid, s) in enumerate(zip(index["piece_id"], index["stretch"], strict=True))
        if pid == piece_id and s == 1.0
    ]
    if not rows:
        raise PipelineError(f"generate.primers: piece {piece_id} is not in {Path(tokens) / 'validation'}")
    piece = store.piece(rows[0])
    notes = cut_notes(decode(piece), seconds)
    if len(notes["onset"]) == 0:
        raise PipelineError(f"generate.primers: piece {piece_id} has no note in its first {seconds:g} s")
    composer = index["composer"][rows[0]] if "composer" in index else "?"
    end = min(seconds, elapsed_steps(piece) * STEP_S)
    return Primer(*encode_opening(notes, end), f"validation piece {piece_id} ({composer})")


def unconditional() -> Primer:
    """No primer: the piece starts from PIECE_START alone."""
    return Primer(np.array([PIECE_START], np.int64), 0, "none")


def load_primers(p: GenerateParams, primer_file: Path | None, tokens: Path) -> list[Primer]:
    """The primer file, else the validation pieces of p.primers, else one empty primer (unconditional samples)."""
    if primer_file is not None:
        return [primer_from_midi(primer_file, p.primer_seconds)]
    if p.primers:
        return [primer_from_piece(tokens, piece, p.primer_seconds) for piece in p.primers]
    return [unconditional()]
