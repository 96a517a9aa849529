"""The parse stage on MAESTRO-shaped folders: its tables, its report, and what it does with bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import METADATA_COLUMNS, note, tempo, write_metadata, write_midi

from pipeline.errors import PipelineError
from pipeline.metadata import read_metadata
from pipeline.parse import parse, parse_file


def leftovers(folder) -> list[str]:  # noqa: ANN001
    """Temporary files or folders a stage may have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def run_parse(raw, tmp_path, **kwargs) -> dict:  # noqa: ANN001
    kwargs.setdefault("workers", 1)
    return parse(raw, tmp_path / "out" / "events", tmp_path / "out" / "metrics.json", progress=False, **kwargs)


def test_tables_of_a_tiny_maestro(tiny_maestro, tmp_path):
    report = run_parse(tiny_maestro, tmp_path)
    events = tmp_path / "out" / "events"
    pieces = pq.read_table(events / "pieces.parquet").to_pylist()
    notes = pq.read_table(events / "notes").sort_by([("piece_id", "ascending"), ("onset", "ascending")]).to_pylist()
    pedals = pq.read_table(events / "pedals").to_pylist()

    assert [(p["piece_id"], p["midi_filename"], p["split"], p["year"], p["n_notes"]) for p in pieces] == [
        (0, "2018/a.midi", "train", 2018, 2),
        (1, "2018/b.mid", "validation", None, 1),
        (2, "2019/c.midi", "test", 2018, 1),
    ]
    assert [p["file_duration"] for p in pieces] == pytest.approx([1.0, 1.0, 1.2])
    rows = [
        (
            n["piece_id"],
            round(n["onset"], 9),
            round(n["offset"], 9),
            round(n["key_offset"], 9),
            n["pitch"],
            n["velocity"],
        )
        for n in notes
    ]
    assert rows == (
        [
            (0, 0.0, 0.5, 0.5, 60, 64),
            (0, 0.5, 1.0, 1.0, 64, 64),
            (1, 0.0, 1.0, 1.0, 67, 90),
            (2, 0.3, 1.2, 0.6, 72, 64),  # 600,000 us per quarter; the pedal holds the note to tick 960
        ]
    )
    assert pedals == [{"piece_id": 2, "pedal": "sustain", "onset": 0.0, "offset": pytest.approx(1.2)}]
    assert report["failed"] == 0 and report["notes"] == 4
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["parsed"] == 3


def test_parallel_parse_writes_the_same_tables_as_one_process(tmp_path):
    raw = tmp_path / "maestro"
    rows = []
    for i in range(24):
        name = f"2018/p{i:02d}.mid"
        write_midi(
            raw / name,
            [[tempo(0, 400_000 + 1000 * i)], note(0, 100 + i, 40 + i) + note(50, 300, 90 - i, 10 + i)],
        )
        rows.append({"midi_filename": name})
    write_metadata(raw, rows)
    one = parse(raw, tmp_path / "one", tmp_path / "m1.json", workers=1, progress=False)
    two = parse(raw, tmp_path / "two", tmp_path / "m2.json", workers=2, progress=False)
    assert one == two
    for table in ("pieces.parquet", "notes", "pedals"):
        a = pq.read_table(tmp_path / "one" / table).sort_by([("piece_id", "ascending")])
        b = pq.read_table(tmp_path / "two" / table).sort_by([("piece_id", "ascending")])
        assert a.equals(b), table


def test_bad_files_are_recorded_and_skipped(tiny_maestro, tmp_path):
    (tiny_maestro / "2018" / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff")
    (tiny_maestro / "2018" / "empty.mid").write_bytes(b"")
    write_metadata(
        tiny_maestro,
        [
            {"midi_filename": "2018/a.midi"},
            {"midi_filename": "2018/corrupt.mid"},
            {"midi_filename": "2018/empty.mid"},
            {"midi_filename": "2018/missing.mid"},
        ],
    )
    report = run_parse(tiny_maestro, tmp_path, max_bad_fraction=0.9)
    reasons = {f["midi_filename"]: f["reason"] for f in report["failures"]}
    assert set(reasons) == {"2018/corrupt.mid", "2018/empty.mid", "2018/missing.mid"}
    assert "missing" in reasons["2018/missing.mid"]
    assert all(reasons.values())
    saved = json.loads((tmp_path / "out" / "events" / "parse_report.json").read_text())
    assert saved["failures"] == report["failures"]
    ids = pq.read_table(tmp_path / "out" / "events" / "pieces.parquet")["piece_id"].to_pylist()
    assert ids == [0]


def test_too_many_bad_files_fail_the_stage_and_write_nothing(tiny_maestro, tmp_path):
    (tiny_maestro / "2018" / "b.mid").write_bytes(b"not midi at all")
    with pytest.raises(PipelineError, match=r"1 of 3 files .* parse.max_bad_fraction=0.1") as info:
        run_parse(tiny_maestro, tmp_path, max_bad_fraction=0.1)
    assert "2018/b.mid" in str(info.value)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["events.failed-report.json"]
    assert json.loads((out / "events.failed-report.json").read_text())["failures"][0]["midi_filename"] == "2018/b.mid"


def test_a_failed_run_keeps_the_previous_output(tiny_maestro, tmp_path):
    run_parse(tiny_maestro, tmp_path)
    before = pq.read_table(tmp_path / "out" / "events" / "notes")
    (tiny_maestro / "2018" / "a.midi").write_bytes(b"garbage")
    with pytest.raises(PipelineError):
        run_parse(tiny_maestro, tmp_path, max_bad_fraction=0.0)
    assert pq.read_table(tmp_path / "out" / "events" / "notes").equals(before)
    assert leftovers(tmp_path / "out") == []


def test_csv_missing_a_column_is_a_clear_error(tiny_maestro, tmp_path):
    write_metadata(
        tiny_maestro,
        [{"midi_filename": "2018/a.midi"}],
        columns=[c for c in METADATA_COLUMNS if c != "split"],
    )
    with pytest.raises(PipelineError, match=r"maestro-v3.0.0.csv: metadata lacks column\(s\) split"):
        run_parse(tiny_maestro, tmp_path)
    assert not (tmp_path / "out" / "events").exists()


def test_metadata_from_column_oriented_json_when_there_is_no_csv(tiny_maestro):
    from_csv = read_metadata(tiny_maestro)
    csv_path = tiny_maestro / "maestro-v3.0.0.csv"
    columns = {c: {} for c in METADATA_COLUMNS}
    for i, piece in enumerate(from_csv):
        values = [
            piece.composer,
            piece.title,
            piece.split,
            piece.year,
            piece.midi_filename,
            "",
            piece.duration,
        ]
        for c, v in zip(METADATA_COLUMNS, values, strict=True):
            columns[c][str(i)] = v
    (tiny_maestro / "maestro-v3.0.0.json").write_text(json.dumps(columns))
    csv_path.unlink()
    assert read_metadata(tiny_maestro) == from_csv


def test_metadata_with_a_bad_number_names_row_and_column(tiny_maestro):
    write_metadata(tiny_maestro, [{"midi_filename": "2018/a.midi", "duration": "long"}])
    with pytest.raises(PipelineError, match=r"row 2: duration 'long' is not a number"):
        read_metadata(tiny_maestro)


def test_a_file_too_long_is_recorded_with_the_setting_that_allows_it(tmp_path):
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], note(0, 480, 60) + note(480 * 7200, 480 * 7202, 62)])
    assert parse_file(path, 3600.0) == "events span 3601 s, more than the 3600 s allowed (parse.max_duration_s)"
    assert parse_file(tmp_path / "missing.mid", 3600.0) == "file listed in the metadata is missing"
    assert not isinstance(parse_file(path, 3602.0), str)
