"""The review commands: write the report, compare two runs for a pull request, and pull DVC's cached outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import ParamsOption, _run


def report(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="folder of README.md, figures/ and plots/")] = Path("reports"),
) -> None:
    """Write the analysis report OUT/README.md (GitHub-flavoured Markdown) with its figures in OUT/figures/ and the
    data of the comparable figures in OUT/plots/, from what the earlier stages wrote.

    The same inputs give the same bytes; what changes from run to run (commit, machine) is in its last section.
    """
    from pipeline.report.stage import Inputs
    from pipeline.report.stage import report as run_report

    path = _run(run_report, Inputs(params=params), out)
    typer.echo(f"report: {path}")


def compare(
    base_rev: Annotated[str, typer.Argument(help="a git revision or a DVC experiment's name")],
    figures: Annotated[Path, typer.Option(help="where images without an address on GitHub are written")] = Path(
        "reports/compare"
    ),
    assets_url: Annotated[str | None, typer.Option(help="where FIGURES is published (default: its path)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the Markdown here rather than print it")] = None,
) -> None:
    """The pull request's comment: which commit and machine made each side, the metrics and params diffs against
    BASE_REV, and every report figure and sample piano roll that changed, old beside new (within GitHub's limit)."""
    from pipeline.atomic import atomic_write_text
    from pipeline.review.compare import compare as run_compare

    markdown = _run(run_compare, base_rev, figures, assets_url)
    if out is None:
        typer.echo(markdown)
    else:
        atomic_write_text(out, markdown)
        typer.echo(f"compare: {out} ({len(markdown):,} characters)")


def pull(
    remote: Annotated[str | None, typer.Option(help="a DVC remote's name (default: the default one)")] = None,
) -> None:
    """`dvc pull` of every stage's cached outputs, so that `dvc repro` has nothing to do and generate and the demo
    run without training; a missing remote or missing files is a one-line error naming the command to run."""
    from pipeline.review.remote import pull as run_pull

    typer.echo(_run(run_pull, remote))
