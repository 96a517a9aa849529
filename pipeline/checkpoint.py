"""Checkpoints and trained weights: written atomically, read with torch.load(weights_only=True) so a file runs no code.

`data/checkpoints/last.pt` holds everything a resumed run needs; `data/model/` holds the weights and config.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from model import TransformerXL, TransformerXLConfig
from pipeline.atomic import atomic_dir, atomic_path
from pipeline.errors import PipelineError


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file, so a crash mid-write never leaves a broken checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, config: dict, params: dict) -> dict | None:
    """The checkpoint to resume, or None to start afresh (none there, or one trained with other params)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: say which and how to recover)
        raise PipelineError(f"{path}: unreadable checkpoint ({exc}); delete it to train afresh") from exc
    if state["config"]["vocab_size"] != config["vocab_size"]:
        raise PipelineError(
            f"{path}: checkpoint vocabulary has {state['config']['vocab_size']} tokens, the tokens' vocab.json "
            f"{config['vocab_size']}; delete the checkpoint to train afresh"
        )
    if state["config"] != config or state["params"] != params:
        print(f"train: {path} was trained with other model or train params; starting afresh")
        return None
    return state


def write_checkpoint(path: Path, training: dict, mems: list, rank: int, world: int, device: torch.device) -> None:
    """Gather every rank's memory and RNG states, and let rank 0 write one checkpoint with `training`'s entries."""
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None  # dropout's, on a GPU
    rng = {"cpu": torch.get_rng_state(), "cuda": cuda_rng}
    local = {"mems": [None if m is None else [t.detach().cpu() for t in m] for m in mems], "rng": rng}
    gathered: list = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    if rank == 0:
        save_checkpoint(path, {**training, "mems": [g["mems"] for g in gathered], "rng": [g["rng"] for g in gathered]})


def export_model(model: TransformerXL, out: Path) -> None:
    """The trained weights (a state dict) and config.json, replacing `out` as a whole."""
    with atomic_dir(Path(out)) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        (tmp / "config.json").write_text(json.dumps(asdict(model.cfg), indent=2))


def load_model(folder: Path, map_location: str | torch.device = "cpu", side_size: int = 0) -> TransformerXL:
    """The model that `export_model` wrote, weights loaded with weights_only=True; its side input must be none or
    the `side_size` features the caller makes."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise PipelineError(f"{path}: no trained model there (run the train stage first)")
    try:
        model = TransformerXL(TransformerXLConfig(**json.loads(config_path.read_text())))
        model.load_state_dict(torch.load(weights_path, map_location=map_location, weights_only=True))
    except Exception as exc:  # noqa: BLE001 (a truncated, foreign or mismatched file: say which)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{folder}: not a model that the train stage wrote ({reason})") from exc
    if model.cfg.side_size not in (0, side_size):
        raise PipelineError(
            f"{folder}: the model reads {model.cfg.side_size} side features per token, but {side_size} are made here"
        )
    return model.to(map_location)
