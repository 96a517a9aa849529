"""What the report's sections share: reading an earlier stage's JSON, and GitHub-flavoured Markdown tables."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PipelineError


def read_json(path: Path) -> dict:
    """A JSON file an earlier stage wrote, or a one-line error naming the stage to run."""
    if not Path(path).is_file():
        raise PipelineError(f"{path}: not found (run the stages before report: dvc repro)")
    return json.loads(Path(path).read_text())


def table(header: list[str], rows: list[list[object]], align: str = "") -> list[str]:
    """A GitHub-flavoured Markdown table; `align` has one l or r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return [f"| {' | '.join(map(str, line))} |" for line in (header, rule, *rows)]
