"""Tokenize throughput: MIDI files to performance-event token ids, beside MidiTok's MIDILike on the same files.

Usage: python benchmarks/encoding.py [--data ../shared/data/maestro-asap] [--limit N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ours(files: list[Path]) -> int:
    """MIDI to ids in one process: the parse stage's reader, then the vectorised encoder."""
    from pipeline.music.midi import read_performance
    from pipeline.music.performance_encoding import encode

    total = 0
    for f in files:
        p = read_performance(f)
        total += len(encode(np.zeros(len(p.onset), int), p.onset, p.offset, p.pitch, p.velocity)[0])
    return total


def miditok_midilike(files: list[Path]) -> int:
    """MidiTok's MIDILike, set as close to ours as it goes: 10 ms shifts at 120 bpm, 32 velocities."""
    import miditok
    import symusic

    config = miditok.TokenizerConfig(num_velocities=32, beat_res={(0, 2): 50}, use_programs=False)
    tokenizer = miditok.MIDILike(config)
    total = 0
    for f in files:
        seq = tokenizer(symusic.Score(str(f)))
        total += sum(len(s.ids) for s in seq) if isinstance(seq, list) else len(seq.ids)
    return total


def linked_subset(data: Path, limit: int, folder: Path) -> Path:
    """A MAESTRO-shaped folder of links to the first `limit` pieces of `data`, so that the stage parses only those."""
    from pipeline.metadata import read_metadata

    pieces = read_metadata(data)[:limit]
    for piece in pieces:
        (folder / piece.midi_filename).parent.mkdir(parents=True, exist_ok=True)
        (folder / piece.midi_filename).symlink_to(data / piece.midi_filename)
    lines = (data / "maestro-v3.0.0.csv").read_text().splitlines()
    (folder / "maestro-v3.0.0.csv").write_text("\n".join(lines[: len(pieces) + 1]) + "\n")
    return folder


def stage(data: Path, limit: int) -> tuple[float, int]:
    """The tokenize stage proper (from the parse stage's Parquet, all cores), parse time excluded."""
    from pipeline.parse import parse
    from pipeline.tokenize import tokenize

    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events"
        source = linked_subset(data, limit, Path(tmp) / "raw") if limit else data
        parse(source, events, Path(tmp) / "m.json", progress=False)
        start = time.perf_counter()
        stats = tokenize(events, events, Path(tmp) / "tokens", Path(tmp) / "t.json", stretch=[1.0])
        return time.perf_counter() - start, sum(s["tokens"] for s in stats["splits"].values())


def main() -> None:
    """Time ours, MidiTok (where installed) and the tokenize stage on the same files, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maestro-asap")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files (0: all)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"skipped: no MAESTRO folder at {args.data} (pass --data)")
    from pipeline.metadata import read_metadata

    files = [args.data / p.midi_filename for p in read_metadata(args.data)][: args.limit or None]
    ours(files[:20])  # warm the page cache and imports for both contenders
    contenders = [("ours: symusic + numpy encoder, 1 process", ours)]
    if importlib.util.find_spec("miditok") is None:
        print("MidiTok is not installed (pip install -e '.[bench]'): its row is left out")
    else:
        contenders.append(("MidiTok MIDILike, 1 process", miditok_midilike))
    rows = []
    for name, fn in contenders:
        start = time.perf_counter()
        tokens = fn(files)
        rows.append((name, time.perf_counter() - start, tokens))
    rows.append(("tokenize stage from Parquet, all cores", *stage(args.data, args.limit)))

    print(f"{len(files)} files from {args.data}; {platform.machine()}, {os.cpu_count()} cores")
    print(f"{'':42} {'seconds':>8} {'files/s':>8} {'tokens/s':>12}")
    for name, seconds, tokens in rows:
        print(f"{name:42} {seconds:8.2f} {len(files) / seconds:8.0f} {tokens / seconds:12,.0f}")
    if len(contenders) == 2:
        print(f"ours / MidiTok, MIDI files to ids on one core: {rows[1][1] / rows[0][1]:.1f}x faster")


if __name__ == "__main__":
    main()
