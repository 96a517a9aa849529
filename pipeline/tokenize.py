"""tokenize stage: validated pieces into shards of uint16 token ids per split, with a piece index and vocab.json.

Each piece also gets its composer's label (pipeline/composers.py): side information for the model, never a token.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_dir, atomic_write_text
from pipeline.composers import composer_labels, label_of
from pipeline.errors import PipelineError
from pipeline.music.performance_encoding import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, VELOCITY_BINS, encode, vocab

EVENT_RANGES = {
    "note_on": (NOTE_ON, NOTE_OFF),
    "note_off": (NOTE_OFF, TIME_SHIFT),
    "time_shift": (TIME_SHIFT, VELOCITY),
    "velocity": (VELOCITY, VELOCITY + VELOCITY_BINS),
    "special": (VELOCITY + VELOCITY_BINS, 1 << 16),
}
_NOTES: dict[str, np.ndarray] = {}  # the notes table, shared with forked workers without copying


def _encode_copies(copies: list[tuple[int, int, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Encode (copy number, first note row, note count, time stretch) copies of pieces from the shared notes."""
    rows = np.concatenate([np.arange(start, start + count) for _, start, count, _ in copies])
    factor = np.repeat([f for *_, f in copies], [count for _, _, count, _ in copies])
    copy = np.repeat([c for c, *_ in copies], [count for _, _, count, _ in copies])
    n = _NOTES
    return encode(copy, n["onset"][rows] * factor, n["offset"][rows] * factor, n["pitch"][rows], n["velocity"][rows])


def _load_notes(events: Path, piece_ids: np.ndarray) -> tuple[dict[str, np.ndarray], dict[int, tuple[int, int]]]:
    """The notes of the given pieces, grouped by piece, and each piece's (first row, row count)."""
    import pyarrow.parquet as pq

    if not (events / "notes").is_dir():
        raise PipelineError(f"{events / 'notes'}: no notes table (run the parse stage first)")
    table = pq.read_table(events / "notes", columns=["piece_id", "onset", "offset", "pitch", "velocity"])
    notes = {name: table[name].to_numpy() for name in table.column_names}
    keep = np.isin(notes["piece_id"], piece_ids)
    order = np.flatnonzero(keep)[np.argsort(notes["piece_id"][keep], kind="stable")]
    notes = {k: v[order] for k, v in notes.items()}
    ids, first, count = np.unique(notes["piece_id"], return_index=True, return_counts=True)
    return notes, {int(i): (int(f), int(c)) for i, f, c in zip(ids, first, count, strict=True)}


def tokenize(
    events: Path,
    validated: Path,
    out: Path,
    metrics: Path,
    shard_tokens: int = 1 << 23,
    stretch: list[float] | None = None,
    workers: int = 0,
    min_composer_pieces: int = 20,
) -> dict:
    """Run the stage: write data/tokens/{split}/shard-*.npy, {split}/index.json and vocab.json (with the composer
    labels); return the stats."""
    import pyarrow.parquet as pq

    events, validated, out = Path(events), Path(validated), Path(out)
    if not (validated / "pieces.parquet").is_file():
        raise PipelineError(f"{validated / 'pieces.parquet'}: no validated pieces (run the validate stage first)")
    columns = ["piece_id", "split", "composer", "file_duration"]
    pieces = pq.read_table(validated / "pieces.parquet", columns=columns).to_pydict()
    stretch = sorted(set(stretch or [1.0]))
    _NOTES.clear()
    notes, rows = _load_notes(events, np.array(pieces["piece_id"]))
    _NOTES.update(notes)
    labels, about = _piece_labels(pieces, rows, min_composer_pieces)

    stats: dict = {"vocab_size": vocab()["vocab_size"], "splits": {}}
    workers = workers or os.cpu_count() or 1
    with atomic_dir(out) as tmp:
        (tmp / "vocab.json").write_text(json.dumps({**vocab(), "labels": labels}, indent=2, ensure_ascii=False))
        for split in sorted(set(pieces["split"])):
            ids = sorted(
                i for i, s in zip(pieces["piece_id"], pieces["split"], strict=True) if s == split and i in rows
            )
            factors = stretch if split == "train" else [1.0]
            stats["splits"][split] = _tokenize_split(tmp / split, ids, rows, factors, workers, shard_tokens, about)
    _NOTES.clear()
    atomic_write_text(Path(metrics), json.dumps(stats, indent=2) + "\n")
    return stats


def _piece_labels(
    pieces: dict[str, list], rows: dict[int, tuple[int, int]], min_composer_pieces: int
) -> tuple[list[dict], dict[str, dict]]:
    """The composer labels of vocab.json, drawn from the pieces with notes (those in `rows`), and per piece id its
    composer, label and length in seconds (the piece index's `about`)."""
    duration = dict(zip(pieces["piece_id"], pieces["file_duration"], strict=True))
    composer = dict(zip(pieces["piece_id"], pieces["composer"], strict=True))
    kept = [i in rows for i in pieces["piece_id"]]  # pieces with notes: those that get tokens
    labels = composer_labels(
        [s for s, k in zip(pieces["split"], kept, strict=True) if k],
        [c for c, k in zip(pieces["composer"], kept, strict=True) if k],
        min_composer_pieces,
    )
    label = {i: label_of(c, labels) for i, c in composer.items()}
    return labels, {"composer": composer, "label": label, "seconds": duration}


def _tokenize_split(
    folder: Path,
    ids: list[int],
    rows: dict[int, tuple[int, int]],
    factors: list[float],
    workers: int,
    shard_tokens: int,
    about: dict[str, dict],
) -> dict:
    """Encode a split's pieces, each once per time-stretch factor, into `folder`'s shards and index; return the
    split's stats."""
    copies = [(k, *rows[i], f) for k, (i, f) in enumerate((i, f) for i in ids for f in factors)]
    tokens, lengths = _encode_all(copies, workers)
    index = _write_shards(folder, tokens, lengths, shard_tokens, ids, factors, about)
    seconds = sum(index["seconds"])
    counts = np.bincount(tokens, minlength=1 << 16)
    return {
        "pieces": len(ids),
        "copies": len(copies),
        "tokens": int(len(tokens)),
        "tokens_per_second": round(len(tokens) / seconds, 3) if seconds else 0.0,
        "shards": int(max(index["shard"], default=-1) + 1),
        "event_frequency": {
            name: round(float(counts[lo:hi].sum() / max(len(tokens), 1)), 5) for name, (lo, hi) in EVENT_RANGES.items()
        },
    }


def _encode_all(copies: list[tuple[int, int, int, float]], workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode every copy, in parallel over chunks of pieces, keeping their order."""
    if not copies:
        return np.zeros(0, np.uint16), np.zeros(0, np.int64)
    total = sum(c[2] for c in copies)
    target = max(total // (workers * 4), 1)
    chunks, current, size = [], [], 0
    for copy in copies:
        current.append(copy)
        size += copy[2]
        if size >= target:
            chunks.append(current)
            current, size = [], 0
    chunks += [current] if current else []
    if workers == 1 or len(chunks) == 1:
        results = [_encode_copies(c) for c in chunks]
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(_encode_copies, chunks))
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _write_shards(
    folder: Path,
    tokens: np.ndarray,
    lengths: np.ndarray,
    shard_tokens: int,
    ids: list[int],
    factors: list[float],
    about: dict[str, dict],
) -> dict[str, list]:
    """Cut the token stream into shards of whole pieces (at most `shard_tokens` each) and write the piece index,
    which also gives each copy's composer, label and length in seconds (`about`: per piece id), so that training
    and evaluation need no Parquet reader."""
    folder.mkdir(parents=True)
    if len(lengths) and lengths.max() > shard_tokens:
        raise PipelineError(
            f"a piece of {int(lengths.max()):,} tokens does not fit tokenize.shard_tokens={shard_tokens:,}; raise it"
        )
    starts = np.cumsum(lengths) - lengths
    index: dict[str, list] = {
        name: [] for name in ("piece_id", "stretch", "shard", "start", "length", "composer", "label", "seconds")
    }
    shard, shard_start = 0, 0
    for k, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        if start + length - shard_start > shard_tokens:
            np.save(folder / f"shard-{shard:05d}.npy", tokens[shard_start:start])
            shard, shard_start = shard + 1, start
        piece_id, factor = ids[k // len(factors)], factors[k % len(factors)]
        index["piece_id"].append(piece_id)
        index["stretch"].append(factor)
        index["composer"].append(about["composer"][piece_id])
        index["label"].append(about["label"][piece_id])
        index["seconds"].append(about["seconds"][piece_id] * factor)
        index["shard"].append(shard)
        index["start"].append(start - shard_start)
        index["length"].append(length)
    if len(lengths):
        np.save(folder / f"shard-{shard:05d}.npy", tokens[shard_start:])
    (folder / "index.json").write_text(json.dumps(index))
    return index
