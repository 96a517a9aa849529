"""Write-then-rename: a failed write keeps the old output and leaves no temporary; Parquet as stages write it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.atomic import atomic_dir, atomic_write_text, write_parquet


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "table.parquet"
    old = pa.table({"piece_id": pa.array([1], pa.int32())})
    write_parquet(old, path)

    def breaks_halfway(table, where, **kwargs):  # noqa: ANN001, ANN003
        with open(where, "wb") as f:
            f.write(b"PAR1 half a table")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", breaks_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pa.table({"piece_id": pa.array([2, 3], pa.int32())}), path)
    monkeypatch.undo()
    assert pq.read_table(path).equals(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def test_parquet_tables_are_lz4_with_dictionary_ids(tmp_path):
    table = pa.table({"piece_id": pa.array([4, 4, 5], pa.int32()), "onset": pa.array([0.0, 0.5, 1.0])})
    write_parquet(table, tmp_path / "notes.parquet")
    meta = pq.ParquetFile(tmp_path / "notes.parquet").metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert {c.compression for c in columns.values()} == {"LZ4"}
    assert any("DICTIONARY" in e for e in columns["piece_id"].encodings)
    assert not any("DICTIONARY" in e for e in columns["onset"].encodings)
    assert pq.read_table(tmp_path / "notes.parquet").equals(table)


def test_a_failed_folder_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "events"
    with atomic_dir(dest) as tmp:
        atomic_write_text(tmp / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        atomic_write_text(tmp / "a.txt", "new")
        raise RuntimeError("stage failed")
    assert (dest / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events"]
