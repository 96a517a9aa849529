"""The validate stage: each planted fault is caught, only its piece is quarantined, and the outputs say so."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MAESTRO_ASAP, METADATA_COLUMNS, note, require, tempo, write_metadata, write_midi

from pipeline.errors import PipelineError
from pipeline.parse import parse
from pipeline.validate import validate

N_NOTES = 12  # above the default min_notes of 10, so only a planted fault can fail a piece
SECONDS = 3.0  # N_NOTES quarter notes at 120 bpm, 0.25 s each: the file's duration
BETWEEN = "expect_column_values_to_be_between"
PAIR = "expect_column_pair_values_a_to_be_greater_than_b"
IN_SET = "expect_column_values_to_be_in_set"
FAULTS = {  # piece_id: (midi_filename, the expectations its piece must fail, and no other)
    1: ("2018/pitch.mid", {f"{BETWEEN}(pitch)"}),
    2: ("2018/backwards.mid", {f"{PAIR}(offset, onset)"}),
    3: ("2018/late.mid", {f"{PAIR}(onset_limit, onset)"}),
    4: ("2018/silent.mid", {f"{BETWEEN}(velocity)"}),
    5: ("2018/long.mid", {f"{BETWEEN}(duration_error)"}),
    6: ("2018/never_written.mid", {"parsed", f"{IN_SET}(file_exists)"}),
    7: ("2018/deleted.mid", {f"{IN_SET}(file_exists)"}),
    8: ("2018/split.mid", {f"{IN_SET}(split)"}),
    9: ("2018/twice.mid", {"expect_column_values_to_be_unique(midi_filename)"}),
    10: ("2018/twice.mid", {"expect_column_values_to_be_unique(midi_filename)"}),
}
CLEAN = {0: "2018/clean0.mid", **{i: f"2019/clean{i}.mid" for i in range(11, 16)}}


def write_piece(raw: Path, name: str) -> None:
    """A piece of N_NOTES rising quarter notes, SECONDS long."""
    notes = [m for i in range(N_NOTES) for m in note(i * 240, (i + 1) * 240, 48 + i)]
    write_midi(raw / name, [[tempo(0, 500_000)], notes])


def edit_note(events: Path, piece_id: int, **values: float) -> None:
    """Overwrite columns of one note (the piece's sixth) in the parsed notes table, as a faulty parser might."""
    for part in sorted((events / "notes").glob("*.parquet")):
        table = pq.read_table(part)
        rows = table.to_pylist()
        mine = [r for r in rows if r["piece_id"] == piece_id]
        if mine:
            mine[5].update(values)
            pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
            return
    raise AssertionError(f"piece {piece_id} has no notes")


def run_validate(raw: Path, events: Path, out_root: Path, **kwargs) -> dict:
    return validate(
        raw,
        events,
        out_root / "validated",
        out_root / "validation.md",
        out_root / "metrics" / "validation.json",
        **kwargs,
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> SimpleNamespace:  # noqa: ANN001
    """A parsed MAESTRO folder with one fault planted in each faulty piece, validated once."""
    root = tmp_path_factory.mktemp("planted")
    raw, events = root / "maestro", root / "events"
    rows = [{}] * 16
    for i, name in CLEAN.items():
        rows[i] = {"midi_filename": name}
    for i, (name, _) in FAULTS.items():
        rows[i] = {"midi_filename": name}
    rows[5] = {**rows[5], "duration": 60.0}  # the metadata disagrees with the file
    rows[8] = {**rows[8], "split": "training"}
    write_metadata(raw, [{"duration": SECONDS, **r} for r in rows])
    for name in {r["midi_filename"] for r in rows} - {FAULTS[6][0]}:  # never_written stays unwritten
        write_piece(raw, name)
    parse(raw, events, root / "parse.json", workers=1, max_bad_fraction=0.5, progress=False)
    (raw / FAULTS[7][0]).unlink()  # parsed, then lost from the raw folder
    edit_note(events, 1, pitch=200)
    edit_note(events, 2, offset=1.0)  # the sixth note starts at 1.25 s
    edit_note(events, 3, onset=SECONDS + 2.0, offset=SECONDS + 2.1)  # past duration + onset_tolerance_s
    edit_note(events, 4, velocity=0)
    result = run_validate(raw, events, root, max_bad_fraction=0.9)
    return SimpleNamespace(root=root, raw=raw, events=events, out=root / "validated", result=result)


@pytest.mark.parametrize("piece_id", sorted(FAULTS))
def test_each_planted_fault_quarantines_its_piece(planted, piece_id):
    quarantine = pq.read_table(planted.out / "quarantine.parquet").to_pylist()
    mine = [q for q in quarantine if q["piece_id"] == piece_id]
    name, expectations = FAULTS[piece_id]
    assert {q["expectation"] for q in mine} == expectations
    assert {q["midi_filename"] for q in mine} == {name}
    assert all(q["detail"] for q in mine)


def test_only_the_planted_pieces_are_quarantined(planted):
    passed = pq.read_table(planted.out / "pieces.parquet")
    quarantine = pq.read_table(planted.out / "quarantine.parquet")
    assert sorted(passed["piece_id"].to_pylist()) == sorted(CLEAN)
    assert set(quarantine["piece_id"].to_pylist()) == set(FAULTS)
    assert passed.schema == pq.read_table(planted.events / "pieces.parquet").schema
    assert quarantine.schema.field("piece_id").type == pa.int32()
    details = {(q["piece_id"], q["expectation"]): q["detail"] for q in quarantine.to_pylist()}
    assert details[(1, f"{BETWEEN}(pitch)")] == "pitch=200"
    assert details[(6, "parsed")] == "file listed in the metadata is missing"
    assert details[(8, f"{IN_SET}(split)")] == "split=training"


def test_report_names_every_quarantined_piece_and_its_expectation(planted):
    report = (planted.root / "validation.md").read_text()
    assert "**16 pieces checked: 6 passed, 10 quarantined" in report
    lines = report.splitlines()
    for piece_id, (name, expectations) in FAULTS.items():
        for expectation in expectations:
            assert any(line.startswith(f"| {piece_id} | {name} | `{expectation}` |") for line in lines), expectation
    notes_rows = N_NOTES * 15  # 16 pieces less never_written; deleted was parsed before it was lost
    assert f"| `{BETWEEN}(pitch)` | **FAIL** | {notes_rows - 1} | 1 |" in lines
    assert f"| `{BETWEEN}(n_notes)` | pass | 15 | 0 |" in lines
    assert "| `expect_column_to_exist(audio_filename)` | pass | — | — |" in lines


def test_metrics_count_the_quarantine(planted):
    metrics = json.loads((planted.root / "metrics" / "validation.json").read_text())
    assert metrics == {
        "pieces": 16,
        "passed": 6,
        "quarantined": 10,
        "quarantined_fraction": 0.625,
        "parse_failures": 1,
        "failed_expectations": {"metadata": 3, "notes": 4, "pieces": 1},
    }
    assert {k: v for k, v in planted.result.items() if k != "quarantine"} == metrics


def test_clean_pieces_pass_every_expectation(tiny_maestro, tmp_path):
    events = tmp_path / "events"
    parse(tiny_maestro, events, tmp_path / "parse.json", workers=1, progress=False)
    result = run_validate(tiny_maestro, events, tmp_path, min_notes=1)
    assert result["quarantined"] == 0 and result["passed"] == 3
    assert pq.read_table(tmp_path / "validated" / "pieces.parquet").equals(pq.read_table(events / "pieces.parquet"))
    assert pq.read_table(tmp_path / "validated" / "quarantine.parquet").num_rows == 0
    report = (tmp_path / "validation.md").read_text()
    assert "3 pieces checked: 3 passed, 0 quarantined" in report and "FAIL" not in report


def test_min_notes_quarantines_short_pieces(tiny_maestro, tmp_path):
    events = tmp_path / "events"
    parse(tiny_maestro, events, tmp_path / "parse.json", workers=1, progress=False)
    result = run_validate(tiny_maestro, events, tmp_path, min_notes=2, max_bad_fraction=1.0)
    assert {(q["piece_id"], q["expectation"], q["detail"]) for q in result["quarantine"]} == {
        (1, f"{BETWEEN}(n_notes)", "n_notes=1"),
        (2, f"{BETWEEN}(n_notes)", "n_notes=1"),
    }


def test_too_many_quarantined_pieces_fail_the_stage_and_write_no_output(tiny_maestro, tmp_path):
    events = tmp_path / "events"
    parse(tiny_maestro, events, tmp_path / "parse.json", workers=1, progress=False)
    run_validate(tiny_maestro, events, tmp_path, min_notes=1)
    before = pq.read_table(tmp_path / "validated" / "pieces.parquet")
    metrics_before = (tmp_path / "metrics" / "validation.json").read_text()
    write_metadata(
        tiny_maestro,
        [
            {"midi_filename": "2018/a.midi", "split": "train", "duration": 1.0},
            {"midi_filename": "2018/b.mid", "split": "holdout", "duration": 1.0},
            {"midi_filename": "2019/c.midi", "split": "test", "duration": 1.2},
        ],
    )
    with pytest.raises(PipelineError, match=r"1 of 3 pieces .* validate.max_bad_fraction=0.1") as info:
        run_validate(tiny_maestro, events, tmp_path, min_notes=1, max_bad_fraction=0.1)
    assert "2018/b.mid" in str(info.value)
    assert pq.read_table(tmp_path / "validated" / "pieces.parquet").equals(before)  # the last good output stays
    assert (tmp_path / "metrics" / "validation.json").read_text() == metrics_before
    report = (tmp_path / "validation.md").read_text()
    assert "The stage FAILED" in report and "split=holdout" in report
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    fresh = tmp_path / "fresh"
    with pytest.raises(PipelineError):
        run_validate(tiny_maestro, events, fresh, min_notes=1, max_bad_fraction=0.1)
    assert not (fresh / "validated").exists() and (fresh / "validation.md").is_file()


def test_metadata_from_column_oriented_json(tiny_maestro, tmp_path):
    events = tmp_path / "events"
    parse(tiny_maestro, events, tmp_path / "parse.json", workers=1, progress=False)
    columns = {c: {} for c in METADATA_COLUMNS}
    names = ["2018/a.midi", "2018/b.mid", "2019/c.midi"]
    for i, (name, split, duration) in enumerate(zip(names, ["train", "dev", "test"], [1.0, 1.0, 1.2], strict=True)):
        for c, v in zip(METADATA_COLUMNS, ["Test", "Piece", split, None, name, "", duration], strict=True):
            columns[c][str(i)] = v
    (tiny_maestro / "maestro-v3.0.0.csv").unlink()
    (tiny_maestro / "maestro-v3.0.0.json").write_text(json.dumps(columns))
    result = run_validate(tiny_maestro, events, tmp_path, min_notes=1, max_bad_fraction=1.0)
    assert [(q["piece_id"], q["expectation"]) for q in result["quarantine"]] == [(1, f"{IN_SET}(split)")]


def test_missing_inputs_are_named(tiny_maestro, tmp_path):
    (tmp_path / "events" / "notes").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"events/pieces.parquet: missing"):
        run_validate(tiny_maestro, tmp_path / "events", tmp_path)
    parse(tiny_maestro, tmp_path / "events", tmp_path / "parse.json", workers=1, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match=r"empty: no MAESTRO metadata"):
        run_validate(empty, tmp_path / "events", tmp_path)
    assert not (tmp_path / "validated").exists()


def test_real_maestro_asap_validates_with_few_quarantined(tmp_path):
    raw = require(MAESTRO_ASAP)
    parse(raw, tmp_path / "events", tmp_path / "parse.json", workers=0, progress=False)
    start = time.perf_counter()
    result = run_validate(raw, tmp_path / "events", tmp_path)
    seconds = time.perf_counter() - start
    assert result["pieces"] == 925 and result["quarantined_fraction"] < 0.05
    assert result["failed_expectations"]["notes"] == 0  # 3.1 M notes, all in range
    # Chan01's metadata duration (1858 s) runs to a marker 24 minutes after its last note (398 s)
    assert any(q["midi_filename"].endswith("894-2_no_repeat/Chan01.mid") for q in result["quarantine"])
    assert "925 pieces checked" in (tmp_path / "validation.md").read_text()
    assert seconds < 15, f"validate took {seconds:.1f} s on the real data"
