"""What every command shares: the Typer app, the --params option, help defaults and the one-line error on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="MAESTRO v3 to a Transformer-XL piano composer, one pipeline stage per command (see dvc.yaml).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", help="params file whose stage section is read")]


def _default(value: object) -> str:
    """A help text's bracketed default, escaped where Typer reads help texts as Rich markup ([auto] is a style tag)."""
    text = f"[{value:g}]" if isinstance(value, float) else f"[{value}]"
    if app.rich_markup_mode != "rich":
        return text
    from rich.markup import escape

    return escape(text)


def _fail(message: str) -> None:
    """Print `error: MESSAGE` in red to stderr and exit with status 1."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _run(stage, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
    """Call a stage, turning a PipelineError into a one-line error message and exit status 1."""
    from pipeline.errors import PipelineError

    try:
        return stage(*args, **kwargs)
    except PipelineError as exc:
        _fail(str(exc))
