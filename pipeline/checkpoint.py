"""The model from its params, checkpoints and trained weights: written atomically, read with
torch.load(weights_only=True) so that a file runs no code.

`data/checkpoints/last.pt` holds everything a resumed run needs. It is the train stage's working file, which DVC never
touches, so a stopped run always resumes. `data/resume/last.pt` is its copy from the last run that finished: a cached
DVC output, pushed and pulled, so that a clone can train on where the run that it pulled ended (`choose_checkpoint`).
A model folder (`data/trained/`, and the package stage's `data/model/`) holds model.safetensors, config.json and
vocab.json.
"""

from __future__ import annotations

import filecmp
import hashlib
import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from model import TransformerXL, TransformerXLConfig
from model.weights import WeightsError, load_safetensors, save_safetensors
from pipeline.atomic import atomic_dir, atomic_path
from pipeline.errors import PipelineError
from pipeline.music.piano_state import PIANO_STATE_SIZE
from pipeline.params import typed
from pipeline.segments import load_vocab


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file, so a crash mid-write never leaves a broken checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none; an unreadable one is a PipelineError."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: say which and how to recover)
        raise PipelineError(f"{path}: unreadable checkpoint ({exc}); delete it to train afresh") from exc


def set_aside(path: Path) -> Path:
    """Move a checkpoint that will not be resumed to NAME.prev.pt beside it. One already there moves on to
    NAME.prev-1.pt (then -2, ...), so that no run's state is ever overwritten."""
    kept = path.with_name(f"{path.stem}.prev{path.suffix}")
    if kept.exists():
        older = next(
            p for n in itertools.count(1) if not (p := path.with_name(f"{path.stem}.prev-{n}{path.suffix}")).exists()
        )
        kept.replace(older)
    path.replace(kept)
    return kept


def mismatch(state: dict, identity: dict, params: dict, trajectory: tuple[str, ...]) -> str | None:
    """Why a checkpoint cannot be resumed with this model identity (config and data) and these train params, or None:
    a difference in the identity or in a trajectory param, or a run already past params' steps."""
    saved = state["params"]
    changed = changes(state["config"], identity) + changes(
        {k: saved.get(k) for k in trajectory}, {k: params[k] for k in trajectory}
    )
    if changed:
        return f"was trained with other settings ({', '.join(changed)})"
    if state["step"] > params["steps"]:
        return f"was trained past train.steps ({state['step']} > {params['steps']})"
    return None


def choose_checkpoint(
    path: Path,
    identity: dict,
    params: dict,
    trajectory: tuple[str, ...],
    rank: int,
    say: Callable[[str], None],
    wait: Callable[[], None],
    shared: Path | None = None,
) -> dict | None:
    """The state to resume, of those that match (`mismatch`): PATH's; else that of the checkpoint set aside last
    (NAME.prev.pt), the two then swapping places; but SHARED's (the last finished run's, which DVC pushes and pulls)
    when it is further along than either, copied over PATH. None when none matches, PATH then set aside. Every
    process reads; rank 0 alone moves files, after `wait` (a barrier) says that every process has read them."""

    def matches(state: dict | None) -> bool:
        return state is not None and mismatch(state, identity, params, trajectory) is None

    state = read_checkpoint(path)
    reason = None if state is None else mismatch(state, identity, params, trajectory)
    previous_path = path.with_name(f"{path.stem}.prev{path.suffix}")
    previous = read_checkpoint(previous_path) if reason is not None else None
    local = state if state is not None and reason is None else previous if matches(previous) else None
    finished = read_checkpoint(shared) if shared is not None else None
    if matches(finished) and (local is None or finished["step"] > local["step"]):
        wait()
        if rank == 0:
            if reason is not None:
                say(f"{path} {reason}; kept as {set_aside(path).name}")
            with atomic_path(path) as tmp:
                shutil.copyfile(shared, tmp)
            say(f"{path} ← {shared}: the checkpoint of the finished run, at step {finished['step']}")
        return finished
    if reason is None:
        return state
    wait()
    if local is not None:
        if rank == 0:
            swap = path.with_name(f"{path.stem}.swap{path.suffix}")
            path.replace(swap)
            previous_path.replace(path)
            swap.replace(previous_path)
            say(f"{path} {reason}; {previous_path.name} matches, so the two swap places and that run resumes")
        return previous
    if rank == 0:
        say(f"{path} {reason}; kept as {set_aside(path).name}, training afresh")
    return None


def share(working: Path, shared: Path) -> None:
    """Copy a finished run's WORKING checkpoint to SHARED (for DVC to cache), unless the two are already the same."""
    if not (shared.is_file() and filecmp.cmp(working, shared, shallow=False)):
        with atomic_path(shared) as tmp:
            shutil.copyfile(working, tmp)


def rank_state(mems: list, device: torch.device) -> dict:
    """What a checkpoint keeps of each process: its memories and its RNG states (dropout's, on a GPU the CUDA one)."""
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {
        "mems": [None if m is None else [t.detach().cpu() for t in m] for m in mems],
        "rng": {"cpu": torch.get_rng_state(), "cuda": cuda_rng},
    }


def write_checkpoint(path: Path, training: dict, ranks: list[dict]) -> None:
    """One checkpoint of `training`'s entries and every process's `rank_state`, in rank order."""
    save_checkpoint(path, {**training, "mems": [r["mems"] for r in ranks], "rng": [r["rng"] for r in ranks]})


def model_section(values: dict) -> dict:
    """The `model:` section of params.yaml typed: TransformerXLConfig's keys, and `state_input` and
    `composer_labels` (bools)."""
    values = dict(values)
    switches = {key: values.pop(key, False) for key in ("state_input", "composer_labels")}
    for key, value in switches.items():
        if not isinstance(value, bool):
            raise PipelineError(f"model.{key} must be true or false, not {value!r}")
    return {**typed(TransformerXLConfig, values, "model"), **switches}


def build_model(vocab: dict, model_params: dict) -> TransformerXL:
    """The model for a token vocabulary (vocab.json): vocab_size from it, the rest from the `model:` params, where
    `state_input: true` gives it the piano state as a side input and `composer_labels: true` a label per composer
    (vocab.json's `labels`)."""
    params = dict(model_params)
    state_input, composer_labels = params.pop("state_input", False), params.pop("composer_labels", False)
    params.setdefault("side_size", PIANO_STATE_SIZE if state_input else 0)  # a checkpoint's config has side_size
    if composer_labels and "labels" not in vocab:
        raise PipelineError("model.composer_labels is on, but vocab.json lists no labels (rerun the tokenize stage)")
    params.setdefault("n_labels", len(vocab["labels"]) if composer_labels else 0)
    try:
        return TransformerXL(TransformerXLConfig(vocab_size=int(vocab["vocab_size"]), **params))
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"model params: {exc}") from exc


def tokens_fingerprint(tokens: Path) -> str:
    """A sha256 over every file of the token folder: a checkpoint resumes only on the data it was trained on."""
    digest = hashlib.sha256()
    for path in sorted(Path(tokens).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(tokens).as_posix().encode() + b"\0")
            with path.open("rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()


def changes(saved: dict, now: dict) -> list[str]:
    """'key old → new' for each key whose value differs (the data by name only: its fingerprint says nothing)."""
    return [
        "the token data" if key == "data" else f"{key} {saved.get(key)} → {now.get(key)}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]


WEIGHTS, LEGACY_WEIGHTS, CONFIG, VOCAB = "model.safetensors", "model.pt", "config.json", "vocab.json"


def export_model(model: TransformerXL, out: Path, vocab: dict | None = None) -> None:
    """The trained weights (model.safetensors), config.json and the token vocabulary (vocab.json, with the composer
    labels), replacing `out` as a whole: a folder that generates with nothing else."""
    with atomic_dir(Path(out)) as tmp:
        save_safetensors(model.state_dict(), tmp / WEIGHTS, {"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")
        if vocab is not None:
            (tmp / VOCAB).write_text(json.dumps(vocab, indent=2) + "\n")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict in a model folder: model.safetensors, or an older folder's model.pt (weights_only=True)."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        try:
            return load_safetensors(folder / WEIGHTS)[0]
        except (OSError, WeightsError) as exc:
            raise PipelineError(f"{folder / WEIGHTS}: not a readable weights file ({exc})") from exc
    if (folder / LEGACY_WEIGHTS).is_file():
        print(f"note: {folder} holds {LEGACY_WEIGHTS}, the older format; the train stage now writes {WEIGHTS}")
        try:
            return torch.load(folder / LEGACY_WEIGHTS, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: say which)
            raise PipelineError(f"{folder / LEGACY_WEIGHTS}: not a readable weights file ({exc})") from exc
    raise PipelineError(f"{folder}: no trained model there (`dvc repro` trains and packages one)")


def load_model(folder: Path, map_location: str | torch.device = "cpu", side_size: int = 0) -> TransformerXL:
    """The model that `export_model` wrote, its weights read as data only; its side input must be none or the
    `side_size` features the caller makes."""
    folder = Path(folder)
    state = read_weights(folder)
    if not (folder / CONFIG).is_file():
        raise PipelineError(f"{folder / CONFIG}: missing beside the weights (the train stage writes both)")
    try:
        cfg = TransformerXLConfig(**json.loads((folder / CONFIG).read_text()))
        with torch.device("meta"):  # shapes only: a config far larger than its weights allocates nothing
            shapes = {name: tuple(t.shape) for name, t in TransformerXL(cfg).state_dict().items()}
        if shapes != {name: tuple(t.shape) for name, t in state.items()}:
            raise ValueError("the weights do not have the shapes config.json gives")
        model = TransformerXL(cfg)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 (a truncated, foreign or mismatched file: say which)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{folder}: not a model that the train stage wrote ({reason})") from exc
    if model.cfg.side_size not in (0, side_size):
        raise PipelineError(
            f"{folder}: the model reads {model.cfg.side_size} side features per token, but {side_size} are made here"
        )
    return model.to(map_location)


def model_vocab(folder: Path, tokens: Path) -> dict:
    """A model folder's vocab.json; an older folder without one falls back to the token folder's."""
    path = Path(folder) / VOCAB
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise PipelineError(f"{path}: not JSON ({exc})") from exc
    return load_vocab(tokens)
