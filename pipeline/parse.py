"""parse stage: every MIDI file of the raw MAESTRO folder into Parquet tables of pieces, notes and pedals."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_dir, atomic_write_text, write_parquet
from pipeline.errors import PipelineError
from pipeline.metadata import PieceInfo, read_metadata
from pipeline.music.midi import PEDALS, Performance, TooLong, UnreadableMidi, read_performance

Outcome = tuple[int, float] | str  # (note count, file duration) of a parsed file, or why it failed
TABLES = ("notes", "pedals")  # each a folder of Parquet parts, one part per chunk of files


def parse_file(path: Path, max_duration: float) -> Performance | str:
    """Parse one file; any failure becomes its reason, so one bad file never stops the stage."""
    if not path.is_file():
        return "file listed in the metadata is missing"
    try:
        return read_performance(path, max_duration)
    except TooLong as exc:
        return f"{exc} (parse.max_duration_s)"
    except UnreadableMidi as exc:
        return str(exc)
    except Exception as exc:  # a reader bug must not take the whole stage down
        return f"{type(exc).__name__}: {exc}"


def performance_tables(ids: list[int], performances: list[Performance]) -> dict:  # -> {name: pyarrow.Table}
    """The notes and pedals tables of several parsed pieces."""
    import pyarrow as pa

    def column(name: str, dtype: type) -> np.ndarray:
        arrays = [getattr(p, name) for p in performances]
        return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)

    piece_id = np.array(ids, dtype=np.int32)
    n_notes = [len(p.onset) for p in performances]
    n_pedals = [len(p.pedal) for p in performances]
    return {
        "notes": pa.table(
            {
                "piece_id": np.repeat(piece_id, n_notes),
                "onset": column("onset", np.float64),
                "offset": column("offset", np.float64),
                "key_offset": column("key_offset", np.float64),
                "pitch": column("pitch", np.uint8),
                "velocity": column("velocity", np.uint8),
            }
        ),
        "pedals": pa.table(
            {
                "piece_id": np.repeat(piece_id, n_pedals),
                "pedal": pa.DictionaryArray.from_arrays(PEDAL_INDEX[column("pedal", np.uint8)], PEDAL_DICTIONARY),
                "onset": column("pedal_onset", np.float64),
                "offset": column("pedal_offset", np.float64),
            }
        ),
    }


PEDAL_DICTIONARY = list(PEDALS.values())
PEDAL_INDEX = np.zeros(256, np.int8)  # control number -> position of its name in PEDAL_DICTIONARY
PEDAL_INDEX[list(PEDALS)] = np.arange(len(PEDALS))


def parse_chunk(part: int, items: list[tuple[int, Path]], out: Path, max_duration: float) -> list[Outcome]:
    """Parse a chunk of (piece id, path) and write its notes and pedals as part `part` of each table."""
    ids, performances, outcomes = [], [], []
    for piece_id, path in items:
        result = parse_file(path, max_duration)
        if isinstance(result, str):
            outcomes.append(result)
        else:
            ids.append(piece_id)
            performances.append(result)
            outcomes.append((len(result.onset), result.duration))
    if performances:
        for name, table in performance_tables(ids, performances).items():
            write_parquet(table, out / name / f"part-{part:05d}.parquet")
    return outcomes


def parse_all(paths: list[Path], out: Path, workers: int, max_duration: float, progress: bool = True) -> list[Outcome]:
    """Parse files in parallel over `workers` processes (0: all cores) into parts under `out`, in input order."""
    import pyarrow.parquet  # noqa: F401  (imported once here, so forked workers start with it loaded)
    import symusic  # noqa: F401
    from rich.progress import Progress

    for name in TABLES:
        (out / name).mkdir(parents=True, exist_ok=True)
    items = list(enumerate(paths))
    workers = workers or os.cpu_count() or 1
    size = max(1, min(32, len(items) // (workers * 4)))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    if workers == 1 or len(chunks) == 1:
        return [o for part, chunk in enumerate(chunks) for o in parse_chunk(part, chunk, out, max_duration)]
    results: list[list[Outcome]] = [[] for _ in chunks]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool, Progress(disable=not progress) as bar:
        task = bar.add_task("parse MIDI", total=len(paths))
        futures = {pool.submit(parse_chunk, part, chunk, out, max_duration): part for part, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            part = futures[future]
            results[part] = future.result()
            bar.advance(task, len(chunks[part]))
    return [outcome for chunk in results for outcome in chunk]


def pieces_table(pieces: list[PieceInfo], outcomes: list[Outcome]):  # -> pyarrow.Table
    """One row per parsed piece: its metadata, its duration measured from the file and its note count."""
    import pyarrow as pa

    ok = [(i, o) for i, o in enumerate(outcomes) if not isinstance(o, str)]
    info = [pieces[i] for i, _ in ok]
    return pa.table(
        {
            "piece_id": pa.array([i for i, _ in ok], pa.int32()),
            "composer": pa.array([p.composer for p in info], pa.string()),
            "title": pa.array([p.title for p in info], pa.string()),
            "split": pa.array([p.split for p in info], pa.string()),
            "year": pa.array([p.year for p in info], pa.int32()),
            "midi_filename": pa.array([p.midi_filename for p in info], pa.string()),
            "duration": pa.array([p.duration for p in info], pa.float64()),
            "file_duration": pa.array([o[1] for _, o in ok], pa.float64()),
            "n_notes": pa.array([o[0] for _, o in ok], pa.int32()),
        }
    )


def parse(
    raw: Path,
    out: Path,
    metrics: Path,
    workers: int = 0,
    max_bad_fraction: float = 0.05,
    max_duration: float = 7200.0,
    progress: bool = True,
) -> dict:
    """Run the stage: parse every listed file, write the tables and the parse report, fail past the bad limit."""
    raw, out = Path(raw), Path(out)
    pieces = read_metadata(raw)
    with atomic_dir(out) as tmp:
        outcomes = parse_all([raw / p.midi_filename for p in pieces], tmp, workers, max_duration, progress)
        failed = [
            {"piece_id": i, "midi_filename": pieces[i].midi_filename, "reason": o}
            for i, o in enumerate(outcomes)
            if isinstance(o, str)
        ]
        parsed = [o for o in outcomes if not isinstance(o, str)]
        report = {
            "files": len(pieces),
            "parsed": len(parsed),
            "failed": len(failed),
            "notes": sum(n for n, _ in parsed),
            "hours": round(sum(d for _, d in parsed) / 3600, 3),
            "failures": failed,
        }
        fraction = len(failed) / len(pieces)
        if fraction > max_bad_fraction:
            report_path = out.with_name(out.name + ".failed-report.json")
            atomic_write_text(report_path, json.dumps(report, indent=2))
            examples = "\n".join(f"  {f['midi_filename']}: {f['reason']}" for f in failed[:10])
            raise PipelineError(
                f"{len(failed)} of {len(pieces)} files ({fraction:.1%}) could not be parsed, more than "
                f"parse.max_bad_fraction={max_bad_fraction}; nothing was written. Full list: {report_path}\n"
                f"{examples}"
            )
        write_parquet(pieces_table(pieces, outcomes), tmp / "pieces.parquet")
        (tmp / "parse_report.json").write_text(json.dumps(report, indent=2))
    summary = {k: v for k, v in report.items() if k != "failures"}
    atomic_write_text(Path(metrics), json.dumps(summary, indent=2) + "\n")
    return report
