"""The listening page's wait: seconds from pressing Generate to a take that plays (MIDI, piano roll and the WAV
rendered), against the peer a visitor would otherwise use, `maestro-xl generate` for the same request, in the same
run. Both sample with the CPU-trained model; the page's start-up (loading the model once) is timed apart.

The request: 20 s of music after the first 10 s of a validation piece's MIDI file (the same file for both), composer
Chopin when the model has labels; the page's take draws the growing piano roll as the page does. The page's figure
is the median of --takes takes, each with its own seed.

Usage: python benchmarks/demo.py [--model data/model] [--tokens data/tokens] [--primer FILE.mid] [--seconds 20]
                                 [--takes 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MAESTRO_ASAP = ROOT.parent / "shared" / "data" / "maestro-asap"

from pipeline.composers import ANY  # noqa: E402
from pipeline.demo.studio import Request, Studio  # noqa: E402
from pipeline.music.pianoroll import roll_image  # noqa: E402
from pipeline.params import (  # noqa: E402
    DemoParams,
    GenerateParams,
    load_section,
    typed,
)


def a_validation_file() -> Path | None:
    """The first validation performance of the shared MAESTRO-shaped folder, when it is there."""
    import csv

    metadata = MAESTRO_ASAP / "maestro-v3.0.0.csv"
    if not metadata.is_file():
        return None
    with metadata.open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "validation")
    return MAESTRO_ASAP / row["midi_filename"]


def takes(studio: Studio, primer: Path, composer: str, seconds: float, count: int) -> list[float]:
    """Seconds from the request to a take that plays, for `count` takes with seeds 0, 1, …"""
    waits = []
    for take in range(count):
        request = Request(upload=primer, primer_seconds=10, composer=composer, seconds=seconds, seed=take)
        started = time.perf_counter()
        made = studio.compose(request, lambda share, notes, end: roll_image(notes, end + seconds, end))
        waits.append(time.perf_counter() - started)
        assert made.wav is not None or isinstance(studio.synth, str), "a take with FluidSynth has its WAV"
    return waits


def main() -> None:
    """Time the page's takes and the command on the same request, and print both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "model")
    parser.add_argument("--tokens", type=Path, default=ROOT / "data" / "tokens", help="the page's validation pieces")
    parser.add_argument("--primer", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--takes", type=int, default=5)
    args = parser.parse_args()
    primer = args.primer or a_validation_file()
    if primer is None or not primer.is_file():
        sys.exit(f"no primer: pass --primer FILE.mid (or put MAESTRO at {MAESTRO_ASAP})")
    settings = GenerateParams(**typed(GenerateParams, load_section("generate", ROOT / "params.yaml"), "generate"))
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}")
    print(f"primer: {primer.name}, 10 s; {args.seconds:g} s of new music")

    started = time.perf_counter()
    studio = Studio(args.model, args.tokens, settings, DemoParams())
    startup = time.perf_counter() - started
    if isinstance(studio.synth, str):  # the takes still time sampling and drawing, but not the page's whole wait
        print(f"no WAV: {studio.synth}; the takes below are timed without rendering it")
    composer = "Chopin" if "Chopin" in studio.composers() else ANY
    try:
        waits = takes(studio, primer, composer, args.seconds, args.takes)
    finally:
        studio.close()
    page = statistics.median(waits)
    each = ", ".join(f"{w:.2f}" for w in waits)
    print(f"page: start-up {startup:.1f} s (once); per take {each} s, median {page:.2f} s")

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "pipeline", "generate", "--model", str(args.model), "--primer", str(primer),
                   "--primer-seconds", "10", "--seconds", str(args.seconds), "--samples", "1", "--wav-samples", "1",
                   "--composer", composer if composer != ANY else "none", "--tokens", str(args.tokens),
                   "--out", out]  # fmt: skip
        started = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True)
        command_s = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"`maestro-xl generate` failed:\n{run.stderr[-2000:]}")
    print(f"peer, `maestro-xl generate` for the same request: {command_s:.2f} s (a fresh process that loads the model, "
          "and samples the take again without the note-length rule for the report)")  # fmt: skip
    print(f"the page's take is ready {command_s / page:.1f}× sooner; {args.seconds:g} s of music in {page:.2f} s "
          f"({args.seconds / page:.1f}× real time)")  # fmt: skip


if __name__ == "__main__":
    main()
