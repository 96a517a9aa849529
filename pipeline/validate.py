"""validate stage: great-expectations suites over the metadata and the parsed tables; failing pieces are quarantined."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.atomic import atomic_dir, atomic_write_text, write_parquet
from pipeline.errors import PipelineError
from pipeline.metadata import COLUMNS, find_metadata

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

SPLITS = ["train", "validation", "test"]
SUITES = ("metadata", "notes", "pieces")
PARSED = "parsed"  # the pseudo-expectation of a piece that parse could not read
NOTE_COLUMNS = ["piece_id", "onset", "offset", "key_offset", "pitch", "velocity"]
COMPUTED = {  # columns the stage adds before validating, explained in the report
    "file_exists": "metadata: `midi_filename` is a file under the raw folder",
    "onset_limit": "notes: the piece's metadata `duration` + `validate.onset_tolerance_s`",
    "duration_error": "pieces: abs(`file_duration` - `duration`), in seconds",
}


@dataclass
class Check:
    """One expectation's outcome over a table: rows passed and failed, and a detail for each failing piece."""

    suite: str
    expectation: str  # type(column), e.g. expect_column_values_to_be_between(pitch)
    success: bool
    passed: int | None = None  # rows; None for a table-level expectation such as a column's presence
    failed: int | None = None
    pieces: dict[int, str] = field(default_factory=dict)


def _label(kind: str, kwargs: dict) -> str:
    columns = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return f"{kind}({', '.join(columns)})"


def _value(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _exception(info: dict) -> str | None:
    """The message of an expectation that could not be evaluated (GX nests it per metric, or not)."""
    nested = [v for v in info.values() if isinstance(v, dict)] or [info]
    return next((str(i.get("exception_message")) for i in nested if i.get("raised_exception")), None)


def _widen(frame):  # noqa: ANN001, ANN202 (pandas.DataFrame)
    """Cast integer columns to int64: GX vectorises its pandas checks only for int64 and float64 (uint8: 20x slower)."""
    for name, dtype in frame.dtypes.items():
        if dtype.kind in "iu":
            frame[name] = frame[name].astype("int64")
    return frame


def run_suite(context, suite: str, frame, expectations: list) -> list[Check]:  # noqa: ANN001
    """Validate a pandas frame (with a piece_id column) against expectations, in their order."""
    import great_expectations as gx

    batch = (
        context.data_sources.add_pandas(suite)
        .add_dataframe_asset(suite)
        .add_batch_definition_whole_dataframe(suite)
        .get_batch(batch_parameters={"dataframe": _widen(frame)})
    )
    result = batch.validate(
        gx.ExpectationSuite(name=suite, expectations=expectations),
        # COMPLETE lists every failing row; its piece_id tells which piece to quarantine
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["piece_id"],
            "return_unexpected_index_query": False,
        },
    )
    checks = {}
    for r in result.results:
        label = _label(r.expectation_config.type, r.expectation_config.kwargs)
        error = _exception(r.exception_info or {})
        if error:
            raise PipelineError(f"validate: {suite} suite: {label} could not be evaluated: {error}")
        check = Check(suite, label, bool(r.success))
        res = r.result or {}
        if "element_count" in res:  # a row-level expectation; rows with nulls it skips count as neither
            check.failed = int(res.get("unexpected_count") or 0)
            check.passed = int(res["element_count"]) - check.failed - int(res.get("missing_count") or 0)
            counts: dict[int, int] = {}
            for row in res.get("unexpected_index_list") or []:
                piece = int(row["piece_id"])
                counts[piece] = counts.get(piece, 0) + 1
                if counts[piece] == 1:
                    check.pieces[piece] = ", ".join(f"{k}={_value(v)}" for k, v in row.items() if k != "piece_id")
            for piece, n in counts.items():
                if n > 1:
                    check.pieces[piece] = f"{n} rows, first: {check.pieces[piece]}"
        checks[label] = check
    order = [_label(e.expectation_type, e.configuration.kwargs) for e in expectations]
    return [checks[label] for label in order]


def metadata_frame(raw: Path):  # noqa: ANN201 (pandas.DataFrame)
    """MAESTRO's metadata rows as they are (CSV or column-oriented JSON), with piece_id and file_exists added."""
    import pandas as pd

    raw = Path(raw)
    path = find_metadata(raw)
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        try:
            columns = json.loads(path.read_text(encoding="utf-8"))
            frame = pd.DataFrame(columns)
            frame = frame.loc[sorted(frame.index, key=int)].reset_index(drop=True)
        except (ValueError, TypeError) as exc:
            raise PipelineError(f"{path}: expected MAESTRO's column-oriented JSON ({exc})") from exc
        frame = frame.apply(lambda col: col.map(lambda v: "" if v is None or pd.isna(v) else str(v)))
    if "duration" in frame:  # a duration that is not a number becomes null, which the suite reports
        frame["duration"] = pd.to_numeric(frame["duration"], errors="coerce")
    if frame.empty:
        raise PipelineError(f"{path}: metadata lists no pieces")
    frame.insert(0, "piece_id", range(len(frame)))  # parse's piece_id is the row's position in the metadata
    if "midi_filename" in frame:
        frame["file_exists"] = [bool(name) and (raw / name).is_file() for name in frame["midi_filename"]]
    return frame


def metadata_expectations(frame, gx) -> list:  # noqa: ANN001
    """MAESTRO's columns are present; split, duration and midi_filename hold sensible values."""
    e = gx.expectations
    checks = [e.ExpectColumnToExist(column=c) for c in COLUMNS]
    row_checks = {
        "split": [e.ExpectColumnValuesToBeInSet(column="split", value_set=SPLITS)],
        "duration": [
            e.ExpectColumnValuesToNotBeNull(column="duration"),
            e.ExpectColumnValuesToBeBetween(column="duration", min_value=0, strict_min=True),
        ],
        "midi_filename": [
            e.ExpectColumnValuesToBeUnique(column="midi_filename"),
            e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        ],
    }
    # a missing column already fails ExpectColumnToExist; checking its values would only raise
    return checks + [c for name, more in row_checks.items() if name in frame for c in more]


def notes_expectations(gx) -> list:  # noqa: ANN001
    """MIDI ranges, notes that end after they start, and onsets within the piece's listed duration."""
    e = gx.expectations
    return [
        *[e.ExpectColumnValuesToNotBeNull(column=c) for c in NOTE_COLUMNS],
        e.ExpectColumnValuesToBeBetween(column="pitch", min_value=0, max_value=127),
        e.ExpectColumnValuesToBeBetween(column="velocity", min_value=1, max_value=127),
        e.ExpectColumnValuesToBeBetween(column="onset", min_value=0),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="offset", column_B="onset"),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="onset_limit", column_B="onset", or_equal=True),
    ]


def pieces_expectations(gx, duration_tolerance_s: float, min_notes: int) -> list:  # noqa: ANN001
    """The file's length agrees with the metadata, and the piece has enough notes to learn from."""
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeBetween(column="duration_error", max_value=duration_tolerance_s),
        e.ExpectColumnValuesToBeBetween(column="n_notes", min_value=min_notes),
    ]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_report(metrics: dict, checks: list[Check], quarantine: list[dict], limit: float, failed: bool) -> str:
    """The Markdown report: a summary, one table per suite, then every quarantined piece."""
    lines = [
        "# Validation report",
        "",
        f"**{metrics['pieces']} pieces checked: {metrics['passed']} passed, {metrics['quarantined']} quarantined "
        f"({metrics['quarantined_fraction']:.2%}; the stage fails above `validate.max_bad_fraction` = {limit:.2%}).**",
    ]
    if failed:
        lines += ["", "**The stage FAILED: too many pieces were quarantined, so no validated output was written.**"]
    if metrics["parse_failures"]:
        lines += ["", f"{metrics['parse_failures']} piece(s) could not be parsed and are quarantined as `{PARSED}`."]
    for suite in SUITES:
        lines += ["", f"## Suite `{suite}`", "", "| expectation | status | rows passed | rows failed |"]
        lines += ["| --- | --- | ---: | ---: |"]
        for c in (c for c in checks if c.suite == suite):
            rows = ("—", "—") if c.passed is None else (c.passed, c.failed)
            lines.append(
                f"| `{_cell(c.expectation)}` | {'pass' if c.success else '**FAIL**'} | {rows[0]} | {rows[1]} |"
            )
    lines += ["", "Computed columns: " + "; ".join(f"`{k}`: {v}" for k, v in COMPUTED.items()) + "."]
    lines += ["", f"## Quarantined pieces ({metrics['quarantined']})", ""]
    if quarantine:
        lines += ["| piece_id | midi_filename | failed expectation | detail |", "| ---: | --- | --- | --- |"]
        lines += [
            f"| {q['piece_id']} | {_cell(q['midi_filename'])} | `{_cell(q['expectation'])}` | {_cell(q['detail'])} |"
            for q in quarantine
        ]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _parse_failures(events: Path) -> dict[int, str]:
    path = events / "parse_report.json"
    if not path.is_file():
        return {}
    return {int(f["piece_id"]): str(f["reason"]) for f in json.loads(path.read_text()).get("failures", [])}


def validate(
    raw: Path,
    events: Path,
    out: Path,
    report: Path,
    metrics: Path,
    *,
    duration_tolerance_s: float = 5.0,
    onset_tolerance_s: float = 1.0,
    min_notes: int = 10,
    max_bad_fraction: float = 0.05,
) -> dict:
    """Run the stage: validate, quarantine failing pieces, write passing pieces, report and metrics.

    A piece is quarantined when any of its rows fails a row-level expectation of any suite, or when parse could not
    read it. When more than `max_bad_fraction` of the pieces are quarantined the stage raises PipelineError and
    leaves `out` (and `metrics`) as they were, but still writes `report`, so the reason can be read.
    """
    import pyarrow.parquet as pq

    raw, events, out = Path(raw), Path(events), Path(out)
    for path in (events / "pieces.parquet", events / "notes"):
        if not path.exists():
            raise PipelineError(f"{path}: missing; run the parse stage first")
    meta = metadata_frame(raw)
    pieces = pq.read_table(events / "pieces.parquet")
    notes = pq.read_table(events / "notes", columns=NOTE_COLUMNS)
    piece_frame, checks = _run_suites(meta, pieces, notes, duration_tolerance_s, onset_tolerance_s, min_notes)
    parsed = set(pieces["piece_id"].to_pylist())
    quarantine = _quarantine(meta, piece_frame, parsed, _parse_failures(events), checks)
    bad = sorted({r["piece_id"] for r in quarantine})
    total = len(set(range(len(meta))) | parsed)
    summary = _summary(total, bad, quarantine, checks)

    failed = len(bad) / total > max_bad_fraction
    atomic_write_text(Path(report), render_report(summary, checks, quarantine, max_bad_fraction, failed))
    if failed:
        examples = "\n".join(f"  {q['midi_filename']}: {q['expectation']} ({q['detail']})" for q in quarantine[:10])
        raise PipelineError(
            f"{len(bad)} of {total} pieces ({len(bad) / total:.1%}) failed validation, more than "
            f"validate.max_bad_fraction={max_bad_fraction}; nothing was written to {out}. Report: {report}\n{examples}"
        )
    _write_validated(out, pieces, bad, quarantine)
    atomic_write_text(Path(metrics), json.dumps(summary, indent=2) + "\n")
    return {**summary, "quarantine": quarantine}


def _run_suites(
    meta: pd.DataFrame,
    pieces: pa.Table,
    notes: pa.Table,
    duration_tolerance_s: float,
    onset_tolerance_s: float,
    min_notes: int,
) -> tuple[pd.DataFrame, list[Check]]:
    """The checks of the three suites, in order, and the pieces' frame they ran on (with its duration_error)."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx  # slow to import (~2 s), so only this stage pays for it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)

    piece_frame = pieces.to_pandas()
    piece_frame["duration_error"] = (piece_frame["file_duration"] - piece_frame["duration"]).abs()
    note_frame = notes.to_pandas()
    # each note gets its piece's listed duration; a note of a piece missing from pieces.parquet gets NaN and fails
    limits = piece_frame.set_index("piece_id")["duration"] + onset_tolerance_s
    note_frame["onset_limit"] = note_frame["piece_id"].map(limits)

    checks = [
        *run_suite(context, "metadata", meta, metadata_expectations(meta, gx)),
        *run_suite(context, "notes", note_frame, notes_expectations(gx)),
        *run_suite(context, "pieces", piece_frame, pieces_expectations(gx, duration_tolerance_s, min_notes)),
    ]
    return piece_frame, checks


def _quarantine(
    meta: pd.DataFrame, piece_frame: pd.DataFrame, parsed: set[int], reasons: dict[int, str], checks: list[Check]
) -> list[dict]:
    """One row per reason a piece is quarantined (parse could not read it, or a check failed on it), by piece_id."""
    names = {int(i): str(n) for i, n in zip(meta["piece_id"], meta.get("midi_filename", [""] * len(meta)), strict=True)}
    names.update((int(i), str(n)) for i, n in zip(piece_frame["piece_id"], piece_frame["midi_filename"], strict=True))
    rows = [
        {"piece_id": i, "expectation": PARSED, "detail": reasons.get(i, "absent from pieces.parquet")}
        for i in range(len(meta))
        if i not in parsed
    ]
    rows += [{"piece_id": i, "expectation": c.expectation, "detail": d} for c in checks for i, d in c.pieces.items()]
    return sorted(({**r, "midi_filename": names.get(r["piece_id"], "")} for r in rows), key=lambda r: r["piece_id"])


def _summary(total: int, bad: list[int], quarantine: list[dict], checks: list[Check]) -> dict:
    """The stage's metrics: pieces checked, passed and quarantined, parse failures, failed expectations per suite."""
    return {
        "pieces": total,
        "passed": total - len(bad),
        "quarantined": len(bad),
        "quarantined_fraction": round(len(bad) / total, 6),
        "parse_failures": sum(r["expectation"] == PARSED for r in quarantine),
        "failed_expectations": {s: sum(not c.success for c in checks if c.suite == s) for s in SUITES},
    }


def _write_validated(out: Path, pieces: pa.Table, bad: list[int], quarantine: list[dict]) -> None:
    """Write the pieces that passed and the quarantine table to `out`, atomically."""
    import pyarrow as pa
    import pyarrow.compute as pc

    with atomic_dir(out) as tmp:
        keep = pc.invert(pc.is_in(pieces["piece_id"], pa.array(bad, pa.int32())))
        write_parquet(pieces.filter(keep), tmp / "pieces.parquet")
        schema = pa.schema(
            [
                ("piece_id", pa.int32()),
                ("midi_filename", pa.string()),
                ("expectation", pa.string()),
                ("detail", pa.string()),
            ]
        )
        write_parquet(pa.Table.from_pylist(quarantine, schema=schema), tmp / "quarantine.parquet")
