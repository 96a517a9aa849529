"""Read one stage's section of params.yaml.

PyYAML is used when it is installed. The train path must also run on a GPU machine with only torch, numpy and the
standard library, so without PyYAML the file is read by `read_plain_yaml`, which covers what params.yaml uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


def load_section(name: str, path: Path | str = "params.yaml") -> dict[str, Any]:
    """Return the `name:` section of the params file, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found (run from the project root or pass --params)")
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        params = read_plain_yaml(text, path)
    else:
        params = yaml.safe_load(text) or {}
    if name not in params or not isinstance(params[name], dict):
        raise PipelineError(f"{path}: no '{name}:' section")
    return params[name]


def read_plain_yaml(text: str, source: Path | str = "params") -> dict[str, Any]:
    """Nested `key: value` mappings by indentation, with JSON-like scalars and flow lists, and `#` comments."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, colon, value = line.strip().partition(":")
        if not colon or not key:
            raise PipelineError(f"{source}:{number}: expected 'key: value', found {raw.strip()!r}")
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key.strip()] = _scalar(value.strip())
        else:
            parent[key.strip()] = child = {}
            stack.append((indent, child))
    return root


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(value: str) -> Any:
    if value in ("~", "null", "Null", "NULL"):
        return None
    if value in ("true", "True", "false", "False"):
        return value.lower() == "true"
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        return value[1:-1].replace("''", "'")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
