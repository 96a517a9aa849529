"""Read one stage's section of params.yaml with PyYAML, and give its values the types a stage's dataclass declares.

Every section's dataclass is here (train:, evaluate:, generate:, demo:), rather than beside its stage, so that the
command line and the demo can show their defaults without loading torch. The model: section is typed against the
model's own config (pipeline/model_folder.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


def load_section(name: str, path: Path | str = "params.yaml") -> dict[str, Any]:
    """Return the `name:` section of the params file, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        import yaml
    except ImportError as exc:
        raise PipelineError(f"{path}: reading params.yaml needs PyYAML (pip install pyyaml)") from exc
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}{_where(exc)}: not valid YAML: {_problem(exc)}") from exc
    if not isinstance(params, dict) or name not in params or not isinstance(params[name], dict):
        raise PipelineError(f"{path}: no '{name}:' section")
    return params[name]


def _where(exc: Exception) -> str:
    """':line:column' of the mark PyYAML points at (1-based), or '' when it gives none."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _problem(exc: Exception) -> str:
    """PyYAML's reason on one line (its str() spans several, with a snippet of the file)."""
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    text = f"{problem} ({context})" if problem and context else problem or str(exc)
    return " ".join(text.split())


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


def _boolean_or_word(value: Any) -> bool | str:
    """A boolean where the value reads as one (true, no, ...), else the word itself (such as auto)."""
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in _TRUE | _FALSE):
        return _boolean(value)
    return str(value)


_CONVERT = {
    "int": _integer,
    "float": float,
    "float | None": float,  # None itself is passed through
    "int | None": _integer,
    "list": lambda value: list(value) if isinstance(value, (list, tuple)) else [value],
    "bool": _boolean,
    "bool | str": _boolean_or_word,
    "dict": lambda value: dict(value or {}),
}


@dataclass
class GenerateParams:
    """The `generate:` section of params.yaml; `maestro-xl generate` options override it."""

    samples: int = 4  # per primer and composer
    seconds: float = 30.0  # of new music per sample
    wav_samples: int = 4  # WAV files for the first this many samples only (each 30 s is 2.6 MB)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 0.98  # 1: off
    seed: int = 1234  # sample i draws from its own generator, seeded seed + i
    primers: list = field(default_factory=list)  # validation piece ids; empty: unconditional samples
    # samples for each (names or surnames in vocab.json; none: no composer given); []: no composer at all
    composers: list = field(default_factory=list)
    guidance: float = 1.0  # classifier-free guidance of the composer label: 1 is plain conditioning, 0 ignores it
    primer_seconds: float = 10.0  # of each primer
    keep_primer: bool = True  # the output begins with the primer
    stop_at_piece_end: bool = False  # let the model end a sample early; False samples each to its full length
    max_note_s: float = 8.0  # the decoding rule: a key sounding this long is released (0: off)
    long_samples: int = 0  # also this many of long_seconds, from nothing, no composer (the report's long form)
    long_seconds: float = 120.0
    mem_len: int | None = None  # hidden states kept per layer while sampling; None: twice the model's own
    precision: str = "auto"  # float32, bfloat16 (weights' matmuls), or auto: bfloat16 where it pays (decode_dtype)
    device: str = "auto"  # auto, cuda or cpu


@dataclass
class TrainParams:
    """The `train:` section of params.yaml."""

    steps: int = 38000
    batch_size: int = 64  # rows in the global batch, split over processes and then over grad_accum chunks
    grad_accum: int = 1
    lr: float = 2.5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 1000
    weight_decay: float = 0.01
    clip: float = 0.25
    # The validation loss (val/nll) while training: every eval_interval steps, on eval_segments segments of
    # eval_batch_size rows. The evaluate stage's evaluation (eval.json) is another, full scoring.
    eval_interval: int = 1000
    eval_segments: int = 50
    eval_batch_size: int = 8
    checkpoint_interval: int = 2000
    log_interval: int = 10
    seed: int = 1234
    transpose: int = 3
    label_dropout: float = 0.1  # the share of pieces trained without their composer label (label 0) each epoch
    compile: bool | str = "auto"  # torch.compile the model: true, false, or auto (on a GPU)
    precision: str = "auto"  # bfloat16 autocast, float32, or auto: bfloat16 where the device computes it natively
    device: str = "auto"  # auto, cuda or cpu
    profile: str = "auto"  # the CPU profile (cpu_limits, cpu_lr): auto (on a CPU), cpu (always) or full (never)
    cpu_limits: dict = field(default_factory=dict)  # upper bounds on model and train params in the CPU profile
    cpu_lr: float | None = 1e-3  # the peak learning rate in the CPU profile (None: lr)


@dataclass
class EvaluateParams:
    """The `evaluate:` section of params.yaml."""

    tgt_len: int = 512  # tokens scored per forward pass
    mem_len: int = 1024  # hidden states kept per layer: twice the training memory
    same_length: bool = True  # every query sees mem_len keys
    clamp_len: int = -1  # relative distances beyond this share one encoding (-1: none)
    batch_size: int = 16  # pieces scored side by side
    ngram_order: int = 4
    device: str = "auto"  # auto, cuda or cpu
    identify_tokens: int = 512  # a model with composer labels names each piece's composer from this many tokens
    label_tokens: int = 2048  # and is scored with each piece's label on this many of its first tokens (0: all)
    precision: str = "auto"  # float32, bfloat16 (autocast), or auto: bfloat16 where the device computes it natively
    cpu_limits: dict = field(default_factory=dict)  # upper bounds on the keys above when evaluating on a CPU


@dataclass
class DemoParams:
    """The `demo:` section of params.yaml; the sampling settings come from `generate:`."""

    seconds: float = 20.0  # the page's default length of new music
    max_seconds: float = 120.0  # the longest a visitor may ask for
    max_upload_mb: float = 2.0  # a larger primer upload is refused with a message
