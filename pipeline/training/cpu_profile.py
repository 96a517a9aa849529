"""The CPU profile: the train and evaluate stages cap their sizes (each section's `cpu_limits`), so that `dvc repro`
ends in minutes on a laptop. For training `train.profile` says when: auto (on a CPU), cpu (everywhere, for a quick
run on a GPU) or full (never); what was trained is written to reports/train/params.yaml, which `dvc exp show`
lists. The evaluation caps its segment and memory whenever it runs on a CPU, whatever the model's size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch

from model import TransformerXLConfig
from pipeline.errors import PipelineError
from pipeline.params import typed

PROFILES = ("auto", "cpu", "full")
Params = TypeVar("Params")  # a stage's params dataclass


def applies(profile: str, device: torch.device) -> bool:
    """Whether the CPU profile's limits apply with train.profile `profile` on `device`."""
    if profile not in PROFILES:
        raise PipelineError(f"train.profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    return profile == "cpu" or (profile == "auto" and device.type == "cpu")


def cap(values: dict[str, Any], limits: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`values` with each key of `limits` lowered to its limit where it is above it, and what was lowered."""
    values, lowered = dict(values), []
    for key, limit in limits.items():
        if values[key] > limit:
            lowered.append(f"{key} {values[key]} → {limit}")
            values[key] = limit
    return values, lowered


def for_training(model_params: dict, p: Params) -> tuple[dict, Params, list[str]]:
    """Model and train params for the CPU profile, and what changed: each key of `p.cpu_limits` capped, and the
    learning rate set to `p.cpu_lr` (a model shrunk for a CPU learns faster with a larger rate).

    When d_model or n_head is lowered, d_head follows as d_model // n_head so the heads still tile the model width.
    """
    limits = p.cpu_limits or {}
    if not isinstance(limits, dict):
        raise PipelineError(f"train.cpu_limits must map model or train keys to upper bounds, not {limits!r}")
    shape = {f.name: f.default for f in dataclasses.fields(TransformerXLConfig) if f.name != "vocab_size"}
    settings = {"cpu_limits", "cpu_lr", "device", "compile", "precision", "profile"}
    train_keys = {f.name for f in dataclasses.fields(p)} - settings
    unknown = set(limits) - set(shape) - train_keys
    if unknown:
        raise PipelineError(f"train.cpu_limits: unknown keys {', '.join(sorted(unknown))}")
    model_limits = typed(TransformerXLConfig, {k: v for k, v in limits.items() if k in shape}, "train.cpu_limits")
    train_limits = typed(type(p), {k: v for k, v in limits.items() if k in train_keys}, "train.cpu_limits")
    model_values, lowered = cap({**shape, **model_params}, model_limits)
    model_params = {k: v for k, v in model_values.items() if k in model_params or k in model_limits}
    train_values, lowered_train = cap(dataclasses.asdict(p), train_limits)
    if any(change.split()[0] in ("d_model", "n_head") for change in lowered):
        model_params["d_head"] = model_values["d_model"] // model_values["n_head"]
    lowered += lowered_train
    if p.cpu_lr is not None and p.cpu_lr != p.lr:
        lowered.append(f"lr {p.lr:g} → {p.cpu_lr:g} (train.cpu_lr)")
        train_values["lr"] = p.cpu_lr
    return model_params, type(p)(**train_values), lowered


def for_evaluation(p: Params) -> tuple[Params, list[str]]:
    """Evaluate params with each key of `p.cpu_limits` capped (evaluating on a CPU), and what was lowered."""
    limits = typed(type(p), dict(p.cpu_limits or {}), "evaluate.cpu_limits")
    limits.pop("cpu_limits", None)
    values, lowered = cap(dataclasses.asdict(p), limits)
    return type(p)(**values), lowered
