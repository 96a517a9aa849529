"""Read one stage's section of params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError


def load_section(name: str, path: Path | str = "params.yaml") -> dict[str, Any]:
    """Return the `name:` section of the params file, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found (run from the project root or pass --params)")
    with path.open() as f:
        params = yaml.safe_load(f) or {}
    if name not in params or not isinstance(params[name], dict):
        raise PipelineError(f"{path}: no '{name}:' section")
    return params[name]
