"""Primers for generation: the opening seconds of a MIDI file or of a validation piece, as the model's tokens.

A MIDI file is read with the parse stage's reader (sustain applied), so a primer is encoded exactly as the training
data was. Notes still sounding at the cut end there, as note-seq's `extract_subsequence` ends them, and a silence
before the cut is kept, so the continuation starts at the cut (or at the file's end, if that comes first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.segments import PieceStore
from pipeline.tokenizer import PIECE_START, SHIFT_STEPS, STEP_S, STEPS_PER_SECOND, TIME_SHIFT, decode, encode


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


def cut_notes(notes: dict[str, np.ndarray], seconds: float) -> dict[str, np.ndarray]:
    """The notes that start before `seconds`, each ending by then."""
    keep = np.asarray(notes["onset"]) < seconds
    cut = {k: np.asarray(v)[keep] for k, v in notes.items()}
    cut["offset"] = np.minimum(cut["offset"], seconds)
    return cut


def encode_primer(notes: dict[str, np.ndarray], source: str, end: float) -> Primer:
    """Encode primer notes as one piece without its PIECE_END, lasting until `end` seconds: a silence after the last
    event becomes time shifts, so the continuation starts where the primer was cut."""
    tokens, _ = encode(
        np.zeros(len(notes["onset"]), np.int64), notes["onset"], notes["offset"], notes["pitch"], notes["velocity"]
    )
    tokens = tokens[:-1].astype(np.int64)
    steps = elapsed_steps(tokens)
    gap = max(int(np.floor(end * STEPS_PER_SECOND + 0.5)) - steps, 0)  # rounded as the tokenizer rounds times
    full, rest = divmod(gap, SHIFT_STEPS)
    shifts = [TIME_SHIFT + SHIFT_STEPS - 1] * full + ([TIME_SHIFT + rest - 1] if rest else [])
    return Primer(np.concatenate([tokens, np.array(shifts, np.int64)]), steps + gap, source)


def elapsed_steps(tokens: np.ndarray) -> int:
    """Time steps that the TIME_SHIFT events of `tokens` add up to."""
    t = np.asarray(tokens, np.int64)
    shifts = t[(t >= TIME_SHIFT) & (t < TIME_SHIFT + SHIFT_STEPS)]
    return int((shifts - TIME_SHIFT + 1).sum())


def primer_from_midi(path: Path, seconds: float) -> Primer:
    """A MIDI file's first `seconds`, read as the parse stage reads it; a bad file is a one-line PipelineError."""
    from pipeline.performance import UnreadableMidi, read_performance

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
    return encode_primer(notes, str(path), min(seconds, performance.duration))


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
    return encode_primer(
        notes, f"validation piece {piece_id} ({composer})", min(seconds, elapsed_steps(piece) * STEP_S)
    )


def unconditional() -> Primer:
    """No primer: the piece starts from PIECE_START alone."""
    return Primer(np.array([PIECE_START], np.int64), 0, "none")
