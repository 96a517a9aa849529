"""The `maestro-xl` command line: one Typer command per pipeline stage, each reading its params.yaml section.

The commands live by room: `data` (fetch, parse, validate, tokenize), `learning` (train, evaluate, package), `listen`
(generate, demo) and `review` (report, compare, pull); `common` holds the app and what they share. Each command
imports its stage's code inside its body, so that importing the CLI stays light (no torch, polars, symusic or dvc).
"""

from __future__ import annotations

from pipeline.cli import data, learning, listen, review
from pipeline.cli.common import app

__all__ = ["app"]

# Every command, in the order `maestro-xl --help` lists them.
for command in (
    *(data.fetch, data.parse, data.validate, data.tokenize),
    *(learning.train, learning.evaluate, learning.package),
    *(listen.generate, listen.demo),
    *(review.report, review.compare, review.pull),
):
    app.command()(command)
