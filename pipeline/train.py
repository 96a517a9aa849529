"""train stage: a Transformer-XL on the token shards, resumable, on GPU or CPU (bf16 where native), in one process or
under torchrun with DDP (training/distributed.py). Pieces lie end to end in each row, but no token attends to an
earlier piece; with `model.state_input` the model also reads the piano's state after each token. On a CPU the CPU
profile caps the size (training/cpu_profile.py). Which checkpoint resumes is training/checkpoints.py's to decide: a
stopped run resumes under the same model, data and TRAJECTORY params (a raised `steps` stretches the cosine decay),
a finished one only under the same code too; anything else is set aside and trains afresh.

Imports only torch, numpy, PyYAML, the standard library and the music modules that need no more; DVCLive is loaded
lazily (training/live.py) and skipped when it is not installed.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from model import TransformerXL
from model.device import allow_tf32, autocast, compiles, compute_dtype
from pipeline.errors import PipelineError
from pipeline.model_folder import build_model, export_model, folder_vocab, reads_texture
from pipeline.params import TrainParams
from pipeline.token_folder import PieceStore, load_vocab
from pipeline.training import cpu_profile, distributed
from pipeline.training.batches import device_batches, validation_nll
from pipeline.training.checkpoints import (
    Wanted,
    changed_code,
    changes,
    choose_checkpoint,
    code_digest,
    code_identity,
    code_steps,
    load_optimizer,
    rank_state,
    share,
    tokens_fingerprint,
    write_checkpoint,
)
from pipeline.training.live import Progress, log_metrics, open_live, write_run_record, write_trained_params
from pipeline.training.segments import SegmentStream, pitch_ranges

# The train params that decide where training goes; with the model and the data, a checkpoint resumes only if they
# are the same. `steps` is apart: a raised one resumes with the new schedule.
TRAJECTORY = ("lr", "min_lr_ratio", "warmup_steps", "batch_size", "grad_accum", "seed", "weight_decay", "clip",
              "transpose", "label_dropout")  # fmt: skip


class _Stop:
    """Set by SIGTERM or SIGINT; the loop saves a checkpoint after the current step and returns."""

    requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


def _lr_factor(step: int, p: TrainParams) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio of the peak."""
    if step < p.warmup_steps:
        return (step + 1) / p.warmup_steps
    progress = min(1.0, (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps))
    return p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(
    forward: torch.nn.Module,
    model: TransformerXL,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    mems: list,
    clip: float,
    device: torch.device,
    distributed: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One optimiser step over a batch (device_batches) split into len(mems) accumulation chunks, each carrying its
    own memory, the forward pass under autocast to `dtype` (None: float32).

    `mems` is updated in place; a chunk without one (None) starts from a full-length memory of zeros, which the
    batch's seq_pos hides, so every step has the same shapes and a compiled model compiles once. Returns the mean
    loss as a tensor, so the caller decides when to wait for the GPU.
    """
    chunks, total = len(mems), torch.zeros((), device=device)
    pieces = {name: tensor.chunk(chunks) for name, tensor in batch.items()}
    for c in range(chunks):
        inputs = {name: piece[c] for name, piece in pieces.items()}
        if mems[c] is None and "seq_pos" in inputs:
            mems[c] = model.init_mems(len(inputs["tokens"]), model.cfg.mem_len)
        # DDP averages gradients once per step: skip its all-reduce on every chunk but the last.
        sync = forward.no_sync() if distributed and c < chunks - 1 else contextlib.nullcontext()
        with sync:
            with autocast(device, dtype):
                _, loss, mems[c] = forward(mems=mems[c], **inputs)
            (loss / chunks).backward()  # outside autocast, as PyTorch advises: backward runs in the forward's dtypes
        total += loss.detach() / chunks
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@dataclass
class _Run:
    """One training run: where it runs, what it trains, and how far it has got."""

    p: TrainParams
    rank: int
    world: int
    device: torch.device
    model: TransformerXL
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stream: SegmentStream
    val_stream: SegmentStream | None
    dtype: torch.dtype | None = None  # autocast's (None: float32)
    step: int = 0
    epoch: int = 0
    segment: int = 0  # the next segment of this epoch's row streams
    metrics: dict = field(default_factory=dict)
    mems: list = field(default_factory=list)  # one memory per accumulation chunk
    lineage: list = field(default_factory=lambda: [uuid.uuid4().hex[:12]])  # an id per start or resume (checkpoints.py)
    history: list = field(default_factory=list)  # {from_step, code, changed}: which steps ran under which code


def _setup(tokens: Path, model_params: dict, p: TrainParams) -> _Run:
    """The device (with the CPU profile where it applies), the seeded model, its data and optimiser."""
    try:
        rank, world, device = distributed.start(p.device)
        dtype = compute_dtype(p.precision, device)
        allow_tf32(device)  # what bf16 autocast leaves in float32 (and all of a float32 run) uses TF32 on a GPU
    except ValueError as exc:
        raise PipelineError(f"train.{exc}") from exc
    if cpu_profile.applies(p.profile, device):
        model_params, p, lowered = cpu_profile.for_training(model_params, p)
        if lowered and rank == 0:
            print(f"train: the CPU profile (train.profile {p.profile}) sets {', '.join(lowered)}", flush=True)
    if p.batch_size % (world * p.grad_accum):
        raise PipelineError(
            f"train.batch_size {p.batch_size} must divide by processes × grad_accum ({world} × {p.grad_accum})"
        )
    torch.manual_seed(p.seed)  # the same initial weights in every process
    vocab = load_vocab(tokens)
    model = build_model(vocab, model_params).to(device)
    torch.manual_seed(p.seed + rank)  # but each its own dropout masks
    tgt_len, state, labels = model.cfg.tgt_len, model.cfg.side_size > 0, model.cfg.n_labels > 0
    ranges = tuple(pitch_ranges(vocab))
    store = PieceStore(tokens, "train")
    stream = SegmentStream(store, p.batch_size, tgt_len, p.seed, p.transpose, ranges, state, labels, p.label_dropout,
                           reads_texture(model.cfg), ahead=True)  # fmt: skip
    val_stream = None
    if (Path(tokens) / "validation" / "index.json").is_file():
        val_store = PieceStore(tokens, "validation")
        rows = min(p.eval_batch_size, len(val_store))  # rows need pieces
        val_stream = SegmentStream(val_store, rows, tgt_len, state_input=state, labels=labels,
                                   texture_input=reads_texture(model.cfg))  # fmt: skip
        val_stream.rows(0)  # a validation split too short for one segment fails now, not at the first validation
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=p.lr,
        betas=(0.9, 0.98),
        fused=device.type in ("cuda", "cpu") or None,  # one kernel for all parameters, and no host sync per step
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, p))
    mems = [None] * p.grad_accum
    return _Run(p, rank, world, device, model, optimizer, scheduler, stream, val_stream, dtype, mems=mems)


def _resume(run: _Run, ckpt_path: Path, wanted: Wanted, shared: Path | None) -> dict | None:
    """Restore `run` from the checkpoint that `choose_checkpoint` picks (it also weighs SHARED/last.pt, the last
    finished run's) and return the train params it holds, or start the run's code history afresh (None). A finished
    run is restored too: its model is exported as it is. Rank 0 alone reads, chooses and says what it does; every
    process restores the state it chose."""
    say = (lambda text: print(f"train: {text}", flush=True)) if run.rank == 0 else (lambda text: None)
    shared_ckpt = None if shared is None else Path(shared) / "last.pt"
    state, error, line = None, None, None
    if run.rank == 0:  # the others' disks may hold other checkpoints, or none (no shared file system)
        try:
            state = choose_checkpoint(ckpt_path, wanted, say, shared_ckpt)
        except Exception as exc:  # any failure, or the others would wait for the state until a timeout
            error, line = exc, exc.args[0] if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
    state, line = distributed.from_first((state, line), run.rank, run.world)  # the state read onto the CPU, or why not
    if error is not None:
        raise error
    if line is not None:  # rank 0's line, on every other process
        raise PipelineError(line)
    if state is None:
        run.history = [{"from_step": 0, "code": code_digest(wanted.code), "changed": []}]
        return None
    _restore(run, state, ckpt_path, say)
    run.lineage = [*(state.get("lineage") or []), *run.lineage]  # this resume's id after the run's own
    edited = changed_code(state.get("code"), wanted.code)
    first = {"from_step": 0, "code": code_digest(state.get("code")), "changed": []}  # before histories were kept
    run.history = list(state.get("history") or [first])
    if edited:  # a stopped run (a finished one of other code never resumes): the steps from here run under this code
        run.history.append({"from_step": run.step, "code": code_digest(wanted.code), "changed": edited})
    done = " (a finished run of this code: its model is exported as it is)" if run.step == run.p.steps else ""
    say(f"resuming from {ckpt_path} at step {run.step}{done}")
    if edited:
        say(f"the code changed since step {run.step} began ({', '.join(edited)}): the run trains on under this code, "
            "and reports/train/run.json records which steps ran under which")  # fmt: skip
    _say_settings(run, state["params"], say)
    return state["params"]


def _restore(run: _Run, state: dict, ckpt_path: Path, say: Callable[[str], None]) -> None:
    """Load a checkpoint's weights, optimiser, schedule, position, metrics, memories and RNG states into `run`."""
    run.model.load_state_dict(state["model"])
    load_optimizer(run.optimizer, state["optimizer"])  # as this run's AdamW, on this device, would have made it
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.epoch, run.segment = state["step"], state["epoch"], state["segment"]
    for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs, strict=True):
        group["lr"] = base * _lr_factor(run.step, run.p)  # this run's schedule (train.steps may have changed)
    run.metrics = dict(state["metrics"])
    mems, rng, layers = state["mems"], state["rng"], run.model.cfg.n_layer
    # A checkpoint from before memories were one per layer also kept the last layer's output, which nothing reads.
    mems = [[None if m is None else m[:layers] for m in chunks] for chunks in mems]
    if len(mems) != run.world:  # the global batch is the same: its rows' memories are dealt out again
        say(f"{ckpt_path} was written by {len(mems)} process(es): its memories go to {run.world} (dropout differs)")
        mems = distributed.reshard(mems, run.world, run.p.grad_accum)
    run.mems = [None if m is None else [t.to(run.device) for t in m] for m in mems[run.rank]]
    if run.rank < len(rng):
        torch.set_rng_state(rng[run.rank]["cpu"])
        if run.device.type == "cuda" and rng[run.rank]["cuda"] is not None:
            torch.cuda.set_rng_state(rng[run.rank]["cuda"], run.device)


def _say_settings(run: _Run, saved: dict, say: Callable[[str], None]) -> None:
    """What changed in the train params since the checkpoint: a stretched schedule, and settings that steer nothing."""
    now = asdict(run.p)
    if saved.get("steps") != run.p.steps:
        old = TrainParams(**{**now, "steps": saved["steps"]})
        say(
            f"train.steps {saved['steps']} → {run.p.steps}: the cosine decay now ends at step {run.p.steps} (the "
            f"learning rate at step {run.step} is {run.p.lr * _lr_factor(run.step, run.p):.3g}, was "
            f"{run.p.lr * _lr_factor(run.step, old):.3g})"
        )
    others = changes({k: v for k, v in saved.items() if k != "steps"}, {k: now.get(k) for k in saved if k != "steps"})
    if others:
        say(f"changed since the checkpoint, without changing what is trained: {', '.join(others)}")


def _loop(
    run: _Run,
    forward: torch.nn.Module,
    save: Callable[[], None],
    log: Callable[[dict], None],
    on_step: Callable[[int], None] | None,
    ckpt_path: Path,
) -> bool:
    """Train to train.steps, or until SIGTERM or SIGINT; return whether it was stopped before the end."""
    p, rank, world = run.p, run.rank, run.world
    stop = _Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    progress = Progress(p.steps, run.step, p.batch_size * run.model.cfg.tgt_len)
    stopping = False
    try:
        while run.step < p.steps and not stopping:
            for k, batch in device_batches(run.stream, run.device, run.epoch, run.segment, slice(rank, None, world)):
                loss = train_step(
                    forward, run.model, run.optimizer, batch, run.mems, p.clip, run.device, world > 1, run.dtype
                )
                run.scheduler.step()
                run.step, run.segment = run.step + 1, k + 1  # the next segment to train on, as a checkpoint records
                step, logged = run.step, {}
                if step % p.log_interval == 0 or step == p.steps:  # the only host syncs, so the GPU is never idle
                    run.metrics["train/loss"], stopping = distributed.agree(loss, stop.requested, world)
                    if rank == 0:
                        progress.update(step, run.metrics["train/loss"], run.scheduler.get_last_lr()[0])
                        logged["train/loss"] = run.metrics["train/loss"]
                if run.val_stream is not None and rank == 0 and (step % p.eval_interval == 0 or step == p.steps):
                    nll = validation_nll(run.model, run.val_stream, p.eval_segments, run.device, run.dtype)
                    run.metrics["val/nll"] = logged["val/nll"] = nll
                    progress.line(f"step {step}: validation NLL {nll:.4f} nats/token")
                if logged:
                    log(logged)
                if on_step is not None:
                    on_step(step)
                stopping = stopping or (stop.requested and world == 1)  # many processes agree at log steps only
                if step % p.checkpoint_interval == 0 or step == p.steps or stopping:
                    save()
                if step >= p.steps or stopping:
                    break
            else:
                run.epoch, run.segment, run.mems = run.epoch + 1, 0, [None] * p.grad_accum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    stopped = stopping and run.step < p.steps
    if stopped and rank == 0:
        progress.line(f"train: stopped at step {run.step}; {ckpt_path} holds everything to resume")
    return stopped


def train(
    tokens: Path,
    checkpoints: Path,
    model_out: Path,
    live_dir: Path | None,
    model_params: dict,
    p: TrainParams,
    on_step: Callable[[int], None] | None = None,
    shared: Path | None = None,
    code: dict[str, str] | None = None,
) -> dict:
    """Train, resuming the checkpoint that pipeline/training/checkpoints.py picks among checkpoints/last.pt, the runs
    set aside beside it and SHARED/last.pt; return the final metrics (rank 0's). A run that finishes copies its
    checkpoint to SHARED/last.pt. CODE is the code identity (default: `code_identity()`, the train stage's code deps).
    LIVE_DIR/params.yaml records what is trained: the model's shape and the train params after the profile."""
    run = _setup(tokens, model_params, p)
    p, cfg, rank, world = run.p, run.model.cfg, run.rank, run.world
    ckpt_path = Path(checkpoints) / "last.pt"
    trained = {k: v for k, v in asdict(p).items() if k not in ("cpu_limits", "cpu_lr")}  # their effect is in p
    identity = {**asdict(cfg), "data": tokens_fingerprint(tokens)}
    wanted = Wanted(identity, trained, TRAJECTORY, code_identity() if code is None else code)
    saved = _resume(run, ckpt_path, wanted, shared)
    resumed = saved is not None
    try:
        compiled = compiles(p.compile, run.device)
    except ValueError as exc:
        raise PipelineError(f"train.{exc}") from exc
    forward = distributed.wrap(run.model, run.device, world, compiled)
    tokens_per_step, num_params = p.batch_size * cfg.tgt_len, run.model.num_params()
    live = _open_records(run, live_dir, resumed, trained, compiled) if rank == 0 else None

    save = partial(_save, run, ckpt_path, wanted)

    def log(logged: dict) -> None:
        """Log this step's metrics with DVCLive (rank 0)."""
        if live is not None:
            log_metrics(live, run.step, logged, num_params, tokens_per_step)

    started, first_step = time.perf_counter(), run.step
    if _loop(run, forward, save, log, on_step, ckpt_path):
        return {"interrupted": True, "step": run.step}
    if run.step == first_step and saved not in (None, trained):  # no step left: the checkpoint says what it ends as
        save()
    if rank == 0:
        export_model(run.model, Path(model_out), folder_vocab(run.model.cfg, tokens))
        if shared is not None:
            share(ckpt_path, Path(shared) / "last.pt", lambda text: print(f"train: {text}", flush=True))
        seconds, steps = time.perf_counter() - started, run.step - first_step
        record = None if live_dir is None else Path(live_dir) / "run.json"
        if record is not None and (steps or not record.is_file()):  # a finished run exported again: its record stays
            code = code_steps(run.history, run.step)
            write_run_record(record, seconds, steps, tokens_per_step, run.device.type, world, code)
        if live is not None:  # the summary, even if no step ran
            log_metrics(live, run.step, run.metrics, num_params, tokens_per_step, plot=False)
            live.end()
    distributed.barrier(world)
    return {"step": run.step, **run.metrics}


def _save(run: _Run, ckpt_path: Path, wanted: Wanted) -> None:
    """Write the checkpoint: rank 0 writes every process's memories and RNG states, the others wait for it."""
    training = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "config": wanted.identity,
        "params": wanted.params,
        "code": wanted.code,
        "lineage": run.lineage,
        "history": run.history,
        "step": run.step,
        "epoch": run.epoch,
        "segment": run.segment,
        "metrics": run.metrics,
    }
    ranks = distributed.gather_on_first(rank_state(run.mems, run.device), run.rank, run.world)
    if run.rank == 0:
        write_checkpoint(ckpt_path, training, ranks)
    distributed.barrier(run.world)  # no process stops (torchrun would then stop rank 0) before the file is whole


def _open_records(run: _Run, live_dir: Path | None, resumed: bool, trained: dict, compiled: bool):  # noqa: ANN202
    """DVCLive (None without LIVE_DIR), with a resumed run's metrics as its checkpoint has them, and
    LIVE_DIR/params.yaml: what is trained, after the CPU profile."""
    live = open_live(live_dir, resume_step=run.step if resumed else None)
    if live_dir is not None:
        precision = "bfloat16" if run.dtype == torch.bfloat16 else "float32"
        profile = "cpu" if cpu_profile.applies(run.p.profile, run.device) else "full"
        record = {"model": asdict(run.model.cfg), "train": trained, "profile": profile, "device": run.device.type,
                  "precision": precision, "compile": compiled, "processes": run.world}  # fmt: skip
        write_trained_params(Path(live_dir) / "params.yaml", record)
    if live is not None and resumed:  # the checkpoint's values, not those a killed run logged after it
        log_metrics(live, run.step, run.metrics, run.model.num_params(), run.p.batch_size * run.model.cfg.tgt_len,
                    plot=False)  # fmt: skip
    return live
