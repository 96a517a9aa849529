"""Read MAESTRO's metadata: the CSV, or the column-oriented JSON when there is no CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

COLUMNS = (
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
)
REQUIRED = ("canonical_composer", "canonical_title", "split", "midi_filename", "duration")
MIDI_SUFFIXES = (".mid", ".midi")


@dataclass(frozen=True)
class PieceInfo:
    """One row of MAESTRO's metadata."""

    composer: str
    title: str
    split: str
    year: int | None
    midi_filename: str
    duration: float


def find_metadata(folder: Path) -> Path:
    """Return the metadata file of a MAESTRO folder: its CSV, else its JSON."""
    folder = Path(folder)
    for suffix in (".csv", ".json"):
        found = sorted(folder.glob(f"maestro-v*{suffix}")) or sorted(folder.glob(f"*{suffix}"))
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise PipelineError(f"{folder}: several metadata files ({names}); keep one")
        if found:
            return found[0]
    raise PipelineError(f"{folder}: no MAESTRO metadata (maestro-v3.0.0.csv or .json) in this folder")


def _read_rows(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            _check_columns(path, header)
            return list(reader)
    try:
        columns = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(columns, dict) or not all(isinstance(v, dict) for v in columns.values()):
        raise PipelineError(f"{path}: expected MAESTRO's column-oriented JSON ({{column: {{row: value}}}})")
    _check_columns(path, list(columns))
    rows = sorted({key for col in columns.values() for key in col}, key=int)
    return [{name: col.get(row) for name, col in columns.items()} for row in rows]


def _check_columns(path: Path, header: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise PipelineError(
            f"{path}: metadata lacks column(s) {', '.join(missing)}; MAESTRO's columns are {', '.join(COLUMNS)}"
        )


def _number(path: Path, line: int, column: str, value: object, kind: type) -> int | float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: row {line}: {column} {value!r} is not a number") from exc


def read_metadata(folder: Path) -> list[PieceInfo]:
    """Read and check a MAESTRO folder's metadata; rows keep the file's order."""
    path = find_metadata(folder)
    pieces = []
    for line, row in enumerate(_read_rows(path), start=2):
        midi = str(row.get("midi_filename") or "").strip()
        if not midi.lower().endswith(MIDI_SUFFIXES):
            raise PipelineError(f"{path}: row {line}: midi_filename {midi!r} is not a .mid or .midi file")
        duration = _number(path, line, "duration", row.get("duration"), float)
        pieces.append(
            PieceInfo(
                composer=str(row.get("canonical_composer") or ""),
                title=str(row.get("canonical_title") or ""),
                split=str(row.get("split") or ""),
                year=_number(path, line, "year", row.get("year"), int),
                midi_filename=midi,
                duration=float("nan") if duration is None else duration,
            )
        )
    if not pieces:
        raise PipelineError(f"{path}: metadata lists no pieces")
    return pieces
