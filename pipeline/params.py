"""Read one stage's section of params.yaml, and give its values the types a stage's dataclass declares.

PyYAML is used when it is installed. The train path must also run on a GPU machine with only torch, numpy and the
standard library, so without PyYAML the file is read by `read_plain_yaml`, which covers what params.yaml holds,
including the layout `dvc exp run -S` rewrites it into.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

_KEY = re.compile(r"^([A-Za-z_][\w.-]*)\s*:(?:\s+(.*))?$")
_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}
_NUMBER = re.compile(r"^[-+]?(\d[\d_]*)?(\.\d*)?([eE][-+]?\d+)?$")


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


def typed(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """`values` converted to the types of dataclass `cls`'s fields (YAML reads 1e-5 as a string); unknown keys fail."""
    kinds = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls)}
    unknown = set(values) - set(kinds)
    if unknown:
        raise PipelineError(f"unknown {section} params: {', '.join(sorted(unknown))}")
    out = {}
    for key, value in values.items():
        convert = _CONVERT.get(kinds[key])
        try:
            out[key] = value if convert is None or (value is None and kinds[key] != "dict") else convert(value)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{section}.{key}: {value!r} is not a valid {kinds[key]}") from exc
    return out


def _integer(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _boolean(value: Any) -> bool:
    if not isinstance(value, str):
        return bool(value)
    if value.lower() not in _TRUE | _FALSE:
        raise ValueError(value)
    return value.lower() in _TRUE


_CONVERT = {
    "int": _integer,
    "float": float,
    "float | None": float,  # None itself is passed through
    "int | None": _integer,
    "list": lambda value: list(value) if isinstance(value, (list, tuple)) else [value],
    "bool": _boolean,
    "dict": lambda value: dict(value or {}),
}


def read_plain_yaml(text: str, source: Path | str = "params") -> dict[str, Any]:
    """Block mappings by indentation, block and flow lists of scalars, plain scalars continued on deeper lines."""
    root: dict[str, Any] = {}
    mappings: list[tuple[int, dict]] = [(-1, root)]  # open mappings, by the indent of the key that opened them
    pending: tuple[int, dict, str] | None = None  # a key whose value starts on a later line
    items: tuple[int, list] | None = None  # the block list being read, by the indent of its dashes
    last: tuple[int, dict, str] | None = None  # the last plain scalar, which a deeper line continues
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent, content, where = len(line) - len(line.lstrip(" ")), line.strip(), f"{source}:{number}"
        if content == "-" or content.startswith("- "):
            if pending is not None and indent >= pending[0]:  # DVC writes the dashes at the key's own indent
                items = (indent, [])
                pending[1][pending[2]] = items[1]
                pending = None
            if items is None or indent != items[0]:
                raise PipelineError(f"{where}: a list item outside a list")
            items[1].append(_scalar(content[1:].strip()))
            continue
        match = _KEY.match(content)
        if match is None:
            if pending is not None and indent > pending[0]:
                pending[1][pending[2]] = _scalar(content)
                last, pending = pending, None
            elif last is not None and indent > last[0] and isinstance(last[1][last[2]], str):
                last[1][last[2]] += " " + content
            else:
                raise PipelineError(f"{where}: expected 'key: value', found {content!r}")
            continue
        items = last = None
        if pending is not None:
            if indent > pending[0]:
                pending[1][pending[2]] = child = {}
                mappings.append((pending[0], child))
            else:
                pending[1][pending[2]] = None
            pending = None
        while indent <= mappings[-1][0]:
            mappings.pop()
        parent, key, value = mappings[-1][1], match.group(1), (match.group(2) or "").strip()
        if value:
            parent[key] = _scalar(value)
            last = (indent, parent, key)
        else:
            pending = (indent, parent, key)
    if pending is not None:
        pending[1][pending[2]] = None
    return root


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch) and (quote or i == 0 or line[i - 1] in " \t[{,:"):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(value: str) -> Any:
    """A YAML 1.1 scalar as PyYAML reads it: null, booleans, numbers, quoted strings, one-level flow collections."""
    if value in ("", "~") or value.lower() == "null":
        return None
    if value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    if value.startswith("[") and value.endswith("]"):
        return [_scalar(v.strip()) for v in value[1:-1].split(",") if v.strip()]
    if value.startswith("{") and value.endswith("}"):
        pairs = [v.split(":", 1) for v in value[1:-1].split(",") if v.strip()]
        return {k.strip(): _scalar(v.strip()) for k, v in pairs}
    if _NUMBER.match(value) and any(c.isdigit() for c in value):
        plain = value.replace("_", "")
        return int(plain) if re.fullmatch(r"[-+]?\d+", plain) else float(plain)
    return value
