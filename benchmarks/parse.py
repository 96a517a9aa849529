"""Parse throughput: the parse stage (Parquet written) beside raw symusic, pretty_midi and mido, same files, same run.

Usage: python benchmarks/parse.py [--data ../shared/data/maestro-asap] [--limit N] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """Seconds that `fn` took, and the notes it counted."""
    start = time.perf_counter()
    notes = fn()
    return time.perf_counter() - start, notes


def raw_symusic(files: list[Path]) -> int:
    """symusic's load alone: the notes of every track, nothing converted or written."""
    import symusic

    return sum(sum(len(t.notes) for t in symusic.Score(str(f)).tracks) for f in files)


def pretty_midi_parse(files: list[Path]) -> int:
    """pretty_midi's load: the notes of every instrument."""
    import pretty_midi

    return sum(sum(len(i.notes) for i in pretty_midi.PrettyMIDI(str(f)).instruments) for f in files)


def mido_parse(files: list[Path]) -> int:
    """The plain mido loop: load, walk every track, pair note-ons with note-offs."""
    import mido

    count = 0
    for f in files:
        for track in mido.MidiFile(f).tracks:
            held: dict[tuple[int, int], int] = {}
            for msg in track:
                if msg.type == "note_on" and msg.velocity > 0:
                    held[(msg.channel, msg.note)] = held.get((msg.channel, msg.note), 0) + 1
                elif msg.type in ("note_on", "note_off") and held.get((msg.channel, msg.note)):
                    held[(msg.channel, msg.note)] -= 1
                    count += 1
    return count


def main() -> None:
    """Time the parse stage and its peers on the same files, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maestro-asap")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files (0: all)")
    parser.add_argument("--workers", type=int, default=0, help="parse stage processes (0: every core)")
    parser.add_argument("--skip-slow", action="store_true", help="leave out pretty_midi and mido")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"skipped: no MAESTRO folder at {args.data} (pass --data)")

    from pipeline.metadata import read_metadata
    from pipeline.parse import parse

    pieces = read_metadata(args.data)[: args.limit or None]
    files = [args.data / p.midi_filename for p in pieces]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for piece in pieces:  # a MAESTRO folder of links, so that --limit applies to the stage too
            (raw / piece.midi_filename).parent.mkdir(parents=True, exist_ok=True)
            (raw / piece.midi_filename).symlink_to(args.data / piece.midi_filename)
        meta = raw / "maestro-v3.0.0.csv"
        lines = (args.data / "maestro-v3.0.0.csv").read_text().splitlines()
        meta.write_text("\n".join(lines[: len(pieces) + 1]) + "\n")

        def stage() -> int:
            """The parse stage into a fresh folder: the notes it wrote."""
            out = Path(tmp) / f"events-{time.monotonic_ns()}"
            return parse(raw, out, Path(tmp) / "metrics.json", workers=args.workers, progress=False)["notes"]

        raw_symusic(files[:20])  # warm the file cache and imports for every contender alike
        stage()
        rows = [
            ("parse stage (symusic + numpy + Parquet)", *timed(stage)),
            ("raw symusic Score()", *timed(lambda: raw_symusic(files))),
        ]
        if not args.skip_slow:
            rows += [
                ("pretty_midi PrettyMIDI()", *timed(lambda: pretty_midi_parse(files))),
                ("mido MidiFile() + note loop", *timed(lambda: mido_parse(files))),
            ]

    workers = args.workers or os.cpu_count()
    print(
        f"{len(files)} files from {args.data}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores;"
        f" parse stage with {workers} worker(s), peers in one process"
    )
    print(f"{'':42} {'seconds':>8} {'files/s':>9} {'notes/s':>12} {'stage is':>10}")
    stage_seconds = rows[0][1]
    for name, seconds, notes in rows:
        ratio = seconds / stage_seconds
        print(f"{name:42} {seconds:8.2f} {len(files) / seconds:9.0f} {notes / seconds:12,.0f} {ratio:9.2f}x")
    print(f"stage throughput / raw symusic throughput = {rows[1][1] / stage_seconds:.2f}")


if __name__ == "__main__":
    main()
