"""The data commands: fetch MAESTRO, parse its MIDI, validate the pieces and tokenize them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import ParamsOption, _run


def fetch(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="where MAESTRO lands")] = Path("data/raw/maestro-v3.0.0"),
    downloads: Annotated[Path, typer.Option(help="download cache")] = Path("data/downloads"),
) -> None:
    """Fetch MAESTRO v3 from data.source (an http(s) URL, a local .zip or a local folder) into OUT.

    Downloads resume after an interruption and are checked against data.size and data.sha256 before extraction.
    """
    from pipeline.fetch import fetch as run_fetch
    from pipeline.params import load_section

    p = _run(load_section, "data", params)
    counts = _run(run_fetch, str(p["source"]), out, p.get("sha256") or None, p.get("size") or None, downloads)
    typer.echo(f"fetch: {counts['listed']} pieces listed, {counts['missing']} MIDI files missing -> {out}")


def parse(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="MAESTRO folder from fetch")] = Path("data/raw/maestro-v3.0.0"),
    out: Annotated[Path, typer.Option(help="folder of Parquet tables")] = Path("data/events"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/parse.json"),
) -> None:
    """Parse every MIDI file into Parquet tables (pieces, notes, pedals) with symusic, in parallel.

    A file that cannot be parsed is recorded in OUT/parse_report.json and skipped; the stage fails only when more
    than parse.max_bad_fraction of the files fail.
    """
    from pipeline.params import load_section
    from pipeline.parse import parse as run_parse

    p = _run(load_section, "parse", params)
    report = _run(
        run_parse,
        raw,
        out,
        metrics,
        workers=int(p.get("workers", 0)),
        max_bad_fraction=float(p.get("max_bad_fraction", 0.05)),
        max_duration=float(p.get("max_duration_s", 7200)),
        progress=sys.stderr.isatty(),
    )
    typer.echo(
        f"parse: {report['parsed']} of {report['files']} files, {report['notes']:,} notes, {report['hours']} h -> {out}"
    )
    for failure in report["failures"][:20]:
        typer.echo(f"  skipped {failure['midi_filename']}: {failure['reason']}", err=True)


def validate(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="MAESTRO folder from fetch")] = Path("data/raw/maestro-v3.0.0"),
    events: Annotated[Path, typer.Option(help="Parquet tables from parse")] = Path("data/events"),
    out: Annotated[Path, typer.Option(help="validated pieces and quarantine")] = Path("data/validated"),
    report: Annotated[Path, typer.Option(help="readable summary")] = Path("reports/validation.md"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/validation.json"),
) -> None:
    """Check the metadata, notes and pieces with great-expectations; quarantine every piece that fails.

    Writes OUT/pieces.parquet (the pieces that passed, all that tokenize reads), OUT/quarantine.parquet, the
    Markdown summary REPORT and the counts in METRICS. Fails only past validate.max_bad_fraction.
    """
    from pipeline.params import load_section
    from pipeline.validate import validate as run_validate

    p = _run(load_section, "validate", params)
    result = _run(
        run_validate,
        raw,
        events,
        out,
        report,
        metrics,
        duration_tolerance_s=float(p.get("duration_tolerance_s", 5.0)),
        onset_tolerance_s=float(p.get("onset_tolerance_s", 1.0)),
        min_notes=int(p.get("min_notes", 10)),
        max_bad_fraction=float(p.get("max_bad_fraction", 0.05)),
    )
    typer.echo(f"validate: {result.get('passed')} of {result.get('pieces')} pieces passed -> {out}; see {report}")


def tokenize(
    params: ParamsOption = Path("params.yaml"),
    events: Annotated[Path, typer.Option(help="Parquet tables from parse")] = Path("data/events"),
    validated: Annotated[Path, typer.Option(help="validated pieces")] = Path("data/validated"),
    out: Annotated[Path, typer.Option(help="token shards, index and vocab.json")] = Path("data/tokens"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/tokens.json"),
) -> None:
    """Encode validated pieces as performance events (Music Transformer's 388-event vocabulary plus piece start and
    end) into uint16 shards per split, with a piece index and vocab.json.

    The train split also gets time-stretched copies (tokenize.stretch); validation and test are left as played.
    """
    from pipeline.params import load_section
    from pipeline.tokenize import tokenize as run_tokenize

    p = _run(load_section, "tokenize", params)
    stats = _run(
        run_tokenize,
        events,
        validated,
        out,
        metrics,
        shard_tokens=int(p.get("shard_tokens", 1 << 23)),
        stretch=[float(f) for f in p.get("stretch", [1.0])],
        workers=int(p.get("workers", 0)),
        min_composer_pieces=int(p.get("min_composer_pieces", 20)),
    )
    for split, s in stats["splits"].items():
        typer.echo(f"tokenize: {split}: {s['copies']} pieces, {s['tokens']:,} tokens in {s['shards']} shard(s)")
