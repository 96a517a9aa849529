"""Checkpoint files, and which run the train stage resumes: no run's state is ever overwritten.

A checkpoint holds everything a resumed run needs. It is written through a temporary file and read with
torch.load(weights_only=True), so that a crash mid-write leaves no broken file and a file runs no code. There are three
kinds, named so everywhere: the working checkpoint `data/checkpoints/last.pt` (the run that trains on; DVC never
touches it), the set-aside checkpoints beside it (`last.prev.pt` the latest, then `last.prev-1.pt`, ...), and the
shared checkpoint `data/shared/last.pt`, a copy of the last finished run's, which is a DVC output that `dvc push`
shares, so that a clone trains on from it.

A run is one training trajectory from a fresh start. Its `lineage` is a list of random ids, one drawn when it starts
and one more at every resume: of two checkpoints of one run, the earlier one's lineage begins the later one's (a run
continued on two machines branches).

A checkpoint can resume when it was trained with the same model, data and trajectory params, not past train.steps,
and, if it has finished (its own train.steps, or those wanted now), by the same code: the files the train stage
depends on (its deps in dvc.yaml), by content. So a finished run is exported as it is only while that code is
unchanged. A stopped run with steps left resumes under changed code (GPU hours are not thrown away), and its
checkpoint's `history` says which steps ran under which code.

Of the checkpoints that can resume, in the working folder and the shared one, the furthest along does (on a tie,
`last.pt`). A file moved or copied over another never destroys a run's state: the one in the way is set aside first,
unless it is an earlier checkpoint of the very run that replaces it (its lineage begins the other's, at no more
steps). A set-aside file that cannot be read is passed over with a warning; an unreadable last.pt stops the stage.

A checkpoint resumes on any device: its optimiser state is loaded as this run's optimiser would have made it here,
whichever device and AdamW kernels (fused or plain) wrote it.
"""

from __future__ import annotations

import filecmp
import hashlib
import itertools
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]  # the project whose code is running


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file, so a crash mid-write never leaves a broken checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none; an unreadable one is a PipelineError."""
    if not path.is_file():
        return None
    try:  # mapped, not read: weighing a checkpoint reads its few small entries, not its gigabyte of tensors
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: say which and how to recover)
        raise PipelineError(f"{path}: unreadable checkpoint ({exc}); delete it to train afresh") from exc


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


@dataclass
class Wanted:
    """What the run about to start trains: the model's config and the data (`identity`), the train params as
    trained, the names of those that steer training, and the code (`code_identity`)."""

    identity: dict
    params: dict
    trajectory: tuple[str, ...]
    code: dict[str, str]


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


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


def code_deps(root: Path = ROOT) -> list[Path]:
    """The files of code the train stage depends on: its deps in ROOT/dvc.yaml outside data/ (a folder's files one
    by one); without a dvc.yaml (the package installed alone), every Python file of `pipeline` and `model`."""
    dvc_yaml = Path(root) / "dvc.yaml"
    if dvc_yaml.is_file():
        import yaml

        try:
            deps = yaml.safe_load(dvc_yaml.read_text())["stages"]["train"]["deps"]
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise PipelineError(f"{dvc_yaml}: no readable deps of the train stage ({exc})") from exc
        names = [d if isinstance(d, str) else next(iter(d)) for d in deps]
        paths = [Path(root) / name for name in names if not name.startswith("data/")]
    else:
        paths = [Path(root) / "pipeline", Path(root) / "model"]
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.is_file():
            files.append(path)
    return files


def code_identity(root: Path = ROOT) -> dict[str, str]:
    """The sha256 of each file of `code_deps`, by its path in the project: what a checkpoint records of its code."""
    return {path.relative_to(root).as_posix(): file_digest(path) for path in code_deps(root)}


def code_digest(code: dict[str, str] | None) -> str:
    """A short name for a whole code identity (12 hex digits), or 'unrecorded'."""
    if code is None:
        return "unrecorded"
    lines = "".join(f"{path}\0{sha}\n" for path, sha in sorted(code.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def changed_code(saved: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The files whose content differs between a checkpoint's code and this code (added and removed ones too)."""
    if saved is None:
        return ["(a checkpoint from before code was recorded)"]
    return sorted(path for path in set(saved) | set(now) if saved.get(path) != now.get(path))


def code_steps(history: list[dict], step: int) -> list[dict]:
    """A run's code history as run.json records it: each code's digest, the files changed from the one before, and
    the steps [from_step, to_step) it trained."""
    ends = [entry["from_step"] for entry in history[1:]] + [step]
    return [{**entry, "to_step": end} for entry, end in zip(history, ends, strict=True)]


def changes(saved: dict, now: dict) -> list[str]:
    """'key old → new' for each key whose value differs (the data by name only: its fingerprint says nothing)."""
    return [
        "the token data" if key == "data" else f"{key} {saved.get(key)} → {now.get(key)}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]


def finished(state: dict, steps: int) -> bool:
    """Whether the checkpoint's run has no step left: it reached the train.steps it was trained for, or STEPS."""
    return state["step"] >= min(state["params"]["steps"], steps)


def mismatch(state: dict, wanted: Wanted) -> str | None:
    """Why a checkpoint cannot resume as `wanted`, or None: other settings (model, data or a trajectory param), a run
    already past train.steps, or a finished run of other code."""
    saved, trajectory = state["params"], wanted.trajectory
    changed = changes(state["config"], wanted.identity) + changes(
        {k: saved.get(k) for k in trajectory}, {k: wanted.params[k] for k in trajectory}
    )
    if changed:
        return f"was trained with other settings ({', '.join(changed)})"
    if state["step"] > wanted.params["steps"]:
        return f"was trained past train.steps ({state['step']} > {wanted.params['steps']})"
    edited = changed_code(state.get("code"), wanted.code)
    if edited and finished(state, wanted.params["steps"]):
        return f"finished under other code ({', '.join(edited)})"
    return None


def set_aside(path: Path, folder: Path | None = None) -> Path:
    """Move a checkpoint that will not train on to NAME.prev.pt in FOLDER (default: its own). One already there moves
    on to the first free NAME.prev-N.pt (N = 1, 2, ...), so that no run's state is ever overwritten."""
    folder = Path(folder or path.parent)
    kept = folder / f"{path.stem}.prev{path.suffix}"
    if kept.exists():
        older = next(p for n in itertools.count(1) if not (p := folder / f"{path.stem}.prev-{n}{path.suffix}").exists())
        kept.replace(older)
    try:
        os.replace(path, kept)
    except OSError:  # data/shared on another file system than data/checkpoints: a whole copy first, then the move
        with atomic_path(kept) as tmp:
            shutil.copyfile(path, tmp)
        path.unlink()
    return kept


def superseded(old: dict | None, new: dict) -> bool:
    """Whether OLD is an earlier checkpoint of NEW's own run (its lineage begins NEW's), which NEW may replace."""
    lineage = [] if old is None else old.get("lineage") or []
    return bool(lineage) and new.get("lineage", [])[: len(lineage)] == lineage and old["step"] <= new["step"]


def candidates(working: Path, shared: Path | None) -> list[Path]:
    """The checkpoints to weigh: the working one, the runs set aside beside it (and one caught mid-move), the shared
    one; in the order that breaks a tie."""
    beside = sorted(p for p in working.parent.glob(f"{working.stem}.*{working.suffix}") if p.is_file())
    return [working, *beside, *([Path(shared)] if shared is not None else [])]


def choose_checkpoint(
    working: Path, wanted: Wanted, say: Callable[[str], None], shared: Path | None = None
) -> dict | None:
    """The state to resume (see the module's docstring), now at WORKING; None to train afresh, with WORKING set aside.
    One process calls it (rank 0, which hands the state to the others): the others' disks may hold other files."""
    states = {path: _weigh(path, path not in (working, shared), say) for path in candidates(working, shared)}
    fits = [(path, s) for path, s in states.items() if s is not None and mismatch(s, wanted) is None]
    chosen = max(fits, key=lambda fit: fit[1]["step"], default=None)  # the first of the furthest along
    if chosen is None or chosen[0] != working:
        _move_into_place(working, states[working], chosen, wanted, say)
    return None if chosen is None else chosen[1]


def _weigh(path: Path, aside: bool, say: Callable[[str], None] | None) -> dict | None:
    """A candidate's state; a run set aside (ASIDE) that cannot be read is passed over, with a warning from SAY."""
    try:
        return read_checkpoint(path)
    except PipelineError as exc:
        if not aside:
            raise
        if say is not None:
            say(f"warning: {exc.args[0].split('; ')[0]}; passed over")
        return None


def _move_into_place(
    working: Path, current: dict | None, chosen: tuple[Path, dict] | None, wanted: Wanted, say: Callable[[str], None]
) -> None:
    """Put the CHOSEN checkpoint at WORKING, setting the CURRENT one there aside unless CHOSEN continues its run."""
    source, state = chosen if chosen is not None else (None, None)
    name = None if source is None else source.name if source.parent == working.parent else str(source)
    held = None
    if source is not None and source.parent == working.parent:  # out of the way of set_aside's renames
        held = source.replace(working.with_name(f"{working.stem}.resuming-{uuid.uuid4().hex[:8]}{working.suffix}"))
    if current is not None and (state is None or not superseded(current, state)):
        reason = mismatch(current, wanted) or f"is at step {current['step']}, behind {name}"
        say(f"{working} {reason}; kept as {set_aside(working).name}" + (", training afresh" if state is None else ""))
    if held is not None:
        held.replace(working)
        say(f"{working} ← {source.name}, which matches: that run resumes, at step {state['step']}")
    elif source is not None:
        with atomic_path(working) as tmp:
            shutil.copyfile(source, tmp)
        say(f"{working} ← {source}: the checkpoint of the finished run, at step {state['step']}")


def share(working: Path, shared: Path, say: Callable[[str], None]) -> None:
    """Copy a finished run's WORKING checkpoint to SHARED, for DVC to cache. The checkpoint there is set aside beside
    WORKING first, unless the working folder already keeps its run at least as far along (WORKING itself, when this
    run continued it, or a run set aside there)."""
    if shared.is_file():
        if filecmp.cmp(working, shared, shallow=False):
            return
        old, kept = read_checkpoint(shared), [_weigh(path, path != working, None) for path in candidates(working, None)]
        if not any(state is not None and superseded(old, state) for state in kept):
            say(f"{shared} holds another run's checkpoint; kept as {set_aside(shared, working.parent)}")
    with atomic_path(shared) as tmp:
        shutil.copyfile(working, tmp)


# The group settings that this run's optimiser chose for its device, which a checkpoint's groups must not override.
DEVICE_FLAGS = ("fused", "capturable", "foreach")


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a checkpoint's optimiser state into OPTIMIZER as if OPTIMIZER had made it here, on this device."""
    # load_state_dict puts each `step` where the *saved* groups' fused or capturable flag says (float32 on the
    # parameter's device, else left as it is): plain AdamW's steps would stay on the CPU, where CUDA's fused AdamW
    # refuses them. So the saved groups take this optimiser's flags first.
    groups = [
        {**old, **{key: now[key] for key in DEVICE_FLAGS if key in now}}
        for old, now in zip(saved["param_groups"], optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({**saved, "param_groups": groups})
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            continue
        for param in group["params"]:  # the plain kernels keep `step` on the host, wherever the checkpoint had it
            state = optimizer.state.get(param, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].cpu()
