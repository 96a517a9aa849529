"""The parse stage on real files, read where they lie in the shared data folder (skipped when it is absent)."""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version

import numpy as np
import pyarrow.parquet as pq
from conftest import EDGE_CASES, MAESTRO_ASAP, ROOT, require, write_metadata
from reference_midi import read_reference


def _reference_arrays(path: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in read_reference(path).items()}


def test_every_real_file_gives_exactly_the_notes_mido_gives(real_events):
    pieces = pq.read_table(real_events / "pieces.parquet").to_pydict()
    notes = pq.read_table(real_events / "notes").to_pydict()
    notes = {k: np.asarray(v) for k, v in notes.items()}
    order = np.argsort(notes["piece_id"], kind="stable")
    notes = {k: v[order] for k, v in notes.items()}
    bounds = np.searchsorted(notes["piece_id"], pieces["piece_id"] + [len(pieces["piece_id"]) + 10**9])
    paths = [str(MAESTRO_ASAP / name) for name in pieces["midi_filename"]]
    assert len(paths) == 925
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        references = list(pool.map(_reference_arrays, paths, chunksize=16))
    mismatched = []
    for i, (ref, path) in enumerate(zip(references, paths, strict=True)):
        ours = {k: v[bounds[i] : bounds[i + 1]] for k, v in notes.items()}
        same = len(ours["onset"]) == len(ref["onset"]) and all(
            np.array_equal(ours[k], ref[k])
            if k in ("pitch", "velocity")
            else np.allclose(ours[k], ref[k], rtol=0, atol=1e-9)
            for k in ("onset", "offset", "key_offset", "pitch", "velocity")
        )
        same = same and abs(pieces["file_duration"][i] - float(ref["duration"])) < 1e-9
        if not same:
            mismatched.append(path)
    assert mismatched == []
    assert sum(pieces["n_notes"]) == sum(len(r["onset"]) for r in references)


def test_real_pieces_keep_their_metadata(real_events):
    pieces = pq.read_table(real_events / "pieces.parquet").to_pylist()
    with (MAESTRO_ASAP / "maestro-v3.0.0.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [p["midi_filename"] for p in pieces] == [r["midi_filename"] for r in rows]
    assert sum(p["year"] is None for p in pieces) == sum(r["year"] == "" for r in rows)
    # The file's own length and the metadata's agree for real performances (within a second).
    gaps = [abs(p["file_duration"] - p["duration"]) for p in pieces]
    assert np.median(gaps) < 1.0


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


PRINTED_SKIPS = 20  # `maestro-xl parse` prints the first this many skipped files; parse_report.json lists them all
SYMUSIC_OF_THE_CSV = "0.6.0"  # the symusic whose results cases.csv records


def _expected_reason(case: dict) -> tuple[str, bool] | None:
    """What the parse stage should say about an edge case, judged from its cases.csv row, and whether that is the
    whole reason (else the exception type it starts with); None for a file that should parse."""
    result = case["symusic_result"]
    if result.startswith("error: "):  # symusic refuses it: the stage records the exception, type first
        message = result.removeprefix("error: ")
        exact = version("symusic") == SYMUSIC_OF_THE_CSV  # another release may word its messages otherwise
        return (message, True) if exact else (message.split(":")[0] + ":", False)
    if result == "ok: 0 notes" or "all on MIDI channel 10" in case["what_is_unusual"]:
        return "contains no notes", True  # nothing to play, or only drums (the drum channel is not the piano)
    return None


def test_every_edge_case_file_parses_or_is_recorded_with_a_reason(tmp_path):
    cases = require(EDGE_CASES)
    raw = tmp_path / "raw"
    expected, rows = {}, []
    for folder in ("real", "malformed"):
        with (cases / folder / "cases.csv").open(newline="") as f:
            for case in csv.DictReader(f):
                name = f"{folder}/{case['file']}"
                (raw / folder).mkdir(parents=True, exist_ok=True)
                (raw / name).symlink_to(cases / name)
                rows.append({"midi_filename": name})
                if (reason := _expected_reason(case)) is not None:
                    expected[name] = reason
    # Copies of a broken file after them, so that more files fail than the command prints.
    broken = next(name for name in expected if name.startswith("malformed/"))
    (raw / "copies").mkdir()
    for i in range(PRINTED_SKIPS - len(expected) + 3):
        name = f"copies/{i:02d}-{broken.split('/')[1]}"
        (raw / name).symlink_to(raw / broken)
        rows.append({"midi_filename": name})
        expected[name] = expected[broken]
    write_metadata(raw, rows)
    params = tmp_path / "params.yaml"
    params.write_text("parse:\n  workers: 2\n  max_bad_fraction: 1.0\n  max_duration_s: 7200\n")
    out = tmp_path / "events"
    # A separate process with a memory ceiling and a time limit: a crash, a hang or a runaway shows up here.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "parse",
            "--params",
            str(params),
            "--raw",
            str(raw),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "metrics.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "parse_report.json").read_text())
    reasons = {f["midi_filename"]: f["reason"] for f in report["failures"]}
    parsed = pq.read_table(out / "pieces.parquet").to_pylist()
    assert report["files"] == len(rows) == len(reasons) + len(parsed)
    assert all(p["n_notes"] > 0 for p in parsed)
    # Exactly the files that cases.csv says cannot give a piano performance fail, each for the reason it gives.
    assert sorted(reasons) == sorted(expected)
    for name, reason in reasons.items():
        want, whole = expected[name]
        assert reason == want if whole else reason.startswith(want), (name, reason, want)
    # In metadata order; the first PRINTED_SKIPS printed with their reasons, the rest only in the report.
    assert [f["midi_filename"] for f in report["failures"]] == [
        r["midi_filename"] for r in rows if r["midi_filename"] in expected
    ]
    assert len(report["failures"]) > PRINTED_SKIPS
    printed = [line for line in result.stderr.splitlines() if line.lstrip().startswith("skipped ")]
    assert printed == [f"  skipped {f['midi_filename']}: {f['reason']}" for f in report["failures"][:PRINTED_SKIPS]]
