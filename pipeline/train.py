"""train stage: a Transformer-XL on the token shards, resumable, on GPU or CPU (bf16 where native), single process or
torchrun DDP. Pieces lie end to end in each row, but no token attends to an earlier piece; with `model.state_input`
the model also reads the piano's state after each token.

Imports only torch, numpy, the standard library and numpy-only music modules; DVCLive is loaded lazily
(pipeline/live.py) and skipped when it is not installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from model import TransformerXL, TransformerXLConfig
from model.precision import native_bf16
from pipeline.checkpoint import export_model, load_checkpoint, write_checkpoint
from pipeline.errors import PipelineError
from pipeline.live import Progress, log_metrics, open_live, write_run_record
from pipeline.music.piano_state import PIANO_STATE_SIZE
from pipeline.params import typed
from pipeline.segments import PieceStore, Segment, SegmentStream, load_vocab, pitch_ranges

PRECISIONS = ("auto", "bfloat16", "float32")


@dataclass
class TrainParams:
    """The `train:` section of params.yaml."""

    steps: int = 6000
    batch_size: int = 16  # rows in the global batch, split over processes and then over grad_accum chunks
    grad_accum: int = 1
    lr: float = 2.5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.01
    clip: float = 0.25
    eval_interval: int = 250
    eval_segments: int = 50
    eval_batch_size: int = 8
    checkpoint_interval: int = 250
    log_interval: int = 10
    seed: int = 1234
    transpose: int = 3
    compile: bool = False
    precision: str = "auto"  # bfloat16 autocast, float32, or auto: bfloat16 where the device computes it natively
    device: str = "auto"  # auto, cuda or cpu
    cpu_limits: dict = field(default_factory=dict)  # upper bounds on model and train params when training on a CPU
    cpu_lr: float | None = 1e-3  # the peak learning rate when training on a CPU (None: lr)


def limit_for_cpu(model_params: dict, p: TrainParams) -> tuple[dict, TrainParams, list[str]]:
    """Model and train params for a CPU, and what changed: each key of `p.cpu_limits` capped (min(value, limit)),
    and the learning rate set to `p.cpu_lr` (a model shrunk for a CPU learns faster with a larger rate).

    When d_model or n_head is lowered, d_head follows as d_model // n_head so the heads still tile the model width.
    """
    limits = p.cpu_limits or {}
    if not isinstance(limits, dict):
        raise PipelineError(f"train.cpu_limits must map model or train keys to upper bounds, not {limits!r}")
    defaults = {f.name: f.default for f in fields(TransformerXLConfig) if f.name != "vocab_size"}
    train_keys = {f.name for f in fields(TrainParams)} - {"cpu_limits", "cpu_lr", "device", "compile", "precision"}
    unknown = set(limits) - set(defaults) - train_keys
    if unknown:
        raise PipelineError(f"train.cpu_limits: unknown keys {', '.join(sorted(unknown))}")
    typed_limits = {
        **typed(TransformerXLConfig, {k: v for k, v in limits.items() if k in defaults}, "train.cpu_limits"),
        **typed(TrainParams, {k: v for k, v in limits.items() if k in train_keys}, "train.cpu_limits"),
    }
    model_params, train_values, lowered = dict(model_params), asdict(p), {}
    for key, limit in typed_limits.items():
        values = model_params if key in defaults else train_values
        current = values.get(key, defaults.get(key))  # a key left out of params.yaml has the config's default
        if current > limit:
            lowered[key] = f"{key} {current} → {limit}"
            values[key] = limit
    if lowered.keys() & {"d_model", "n_head"}:
        shape = {**defaults, **model_params}
        model_params["d_head"] = shape["d_model"] // shape["n_head"]
    if p.cpu_lr is not None and p.cpu_lr != p.lr:
        lowered["lr"] = f"lr {p.lr:g} → {p.cpu_lr:g} (train.cpu_lr)"
        train_values["lr"] = p.cpu_lr
    return model_params, TrainParams(**train_values), list(lowered.values())


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


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def model_section(values: dict) -> dict:
    """The `model:` section of params.yaml typed: TransformerXLConfig's keys and `state_input` (a bool)."""
    values = dict(values)
    state_input = values.pop("state_input", False)
    if not isinstance(state_input, bool):
        raise PipelineError(f"model.state_input must be true or false, not {state_input!r}")
    return {**typed(TransformerXLConfig, values, "model"), "state_input": state_input}


def build_model(vocab: dict, model_params: dict) -> TransformerXL:
    """The model for a token vocabulary (vocab.json): vocab_size from it, the rest from the `model:` params, where
    `state_input: true` gives it the piano state as a side input."""
    params = dict(model_params)
    state_input = params.pop("state_input", False)
    params.setdefault("side_size", PIANO_STATE_SIZE if state_input else 0)  # a checkpoint's config has side_size
    try:
        return TransformerXL(TransformerXLConfig(vocab_size=int(vocab["vocab_size"]), **params))
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"model params: {exc}") from exc


def train_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.precision on `device` (None: float32): auto is bf16 where it is native."""
    if precision not in PRECISIONS:
        raise PipelineError(f"train.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return torch.bfloat16 if precision == "bfloat16" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing (float32) for None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def segment_tensors(segment: Segment, device: torch.device, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """A segment's rows as the model's inputs: tokens, targets, seq_pos, and side when the segment has it."""
    arrays = {"tokens": segment.tokens, "targets": segment.targets, "seq_pos": segment.seq_pos}
    if segment.side is not None:
        arrays["side"] = segment.side
    return {name: to_device(array[rows], device) for name, array in arrays.items()}


@torch.no_grad()
def evaluate(
    model: TransformerXL, stream: SegmentStream, max_segments: int, device: torch.device, dtype: torch.dtype | None
) -> float:
    """Mean negative log-likelihood per token (nats) over the first segments of a stream, memory carried."""
    was_training = model.training
    model.eval()
    mems, total, count = None, 0.0, 0
    for k, segment in stream.batches(0):
        if k >= max_segments:
            break
        batch = segment_tensors(segment, device)
        with autocast(device, dtype):
            _, loss, mems = model(mems=mems, **batch)
        total, count = total + float(loss) * segment.targets.size, count + segment.targets.size
    model.train(was_training)
    return total / max(count, 1)


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
    """One optimiser step over a batch (segment_tensors) split into len(mems) accumulation chunks, each carrying its
    own memory, under autocast to `dtype` (None: float32).

    `mems` is updated in place; returns the mean loss as a tensor, so the caller decides when to wait for the GPU.
    """
    chunks, total = len(mems), torch.zeros((), device=device)
    pieces = {name: tensor.chunk(chunks) for name, tensor in batch.items()}
    for c in range(chunks):
        # DDP averages gradients once per step: skip its all-reduce on every chunk but the last.
        sync = forward.no_sync() if distributed and c < chunks - 1 else contextlib.nullcontext()
        with sync, autocast(device, dtype):
            _, loss, mems[c] = forward(mems=mems[c], **{name: piece[c] for name, piece in pieces.items()})
            (loss / chunks).backward()
        total += loss.detach() / chunks
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _agree(loss: torch.Tensor, stop: bool, world: int) -> tuple[float, bool]:
    """The loss averaged over processes, and whether any was asked to stop, so that all stop at the same step."""
    if world == 1:
        return float(loss), stop
    both = torch.stack([loss.float(), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / world, bool(both[1] > 0)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Integers as int64, floats as float32, on `device`; to a GPU through pinned memory without waiting, so the host
    never stalls on it."""
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


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


def _setup(tokens: Path, model_params: dict, p: TrainParams) -> _Run:
    """The device (with train.cpu_limits and train.cpu_lr on a CPU), the seeded model, its data and optimiser."""
    rank, world, local_rank = _distributed()
    use_cuda = torch.cuda.is_available() and p.device in ("auto", "cuda")
    if p.device == "cuda" and not use_cuda:
        raise PipelineError("train.device is cuda, but no GPU is available")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        model_params, p, lowered = limit_for_cpu(model_params, p)
        if lowered and rank == 0:
            print(
                f"train: on CPU, so train.cpu_limits and train.cpu_lr set {', '.join(lowered)} (remove them to "
                "train as configured)",
                flush=True,
            )
    if p.batch_size % (world * p.grad_accum):
        raise PipelineError(
            f"train.batch_size {p.batch_size} must divide by processes × grad_accum ({world} × {p.grad_accum})"
        )

    dtype = train_dtype(p.precision, device)
    torch.manual_seed(p.seed)
    vocab = load_vocab(tokens)
    model = build_model(vocab, model_params).to(device)
    tgt_len, state = model.cfg.tgt_len, model.cfg.side_size > 0
    ranges = tuple(pitch_ranges(vocab))
    stream = SegmentStream(PieceStore(tokens, "train"), p.batch_size, tgt_len, p.seed, p.transpose, ranges, state)
    val_stream = None
    if (Path(tokens) / "validation" / "index.json").is_file():
        val_store = PieceStore(tokens, "validation")
        rows = min(p.eval_batch_size, len(val_store))  # rows need pieces
        val_stream = SegmentStream(val_store, rows, tgt_len, state_input=state)
        val_stream.rows(0)  # a validation split too short for one segment fails now, not at the first evaluation
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=p.lr,
        betas=(0.9, 0.98),
        fused=use_cuda or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, p))
    mems = [None] * p.grad_accum
    return _Run(p, rank, world, device, model, optimizer, scheduler, stream, val_stream, dtype, mems=mems)


def _resume(run: _Run, ckpt_path: Path, identity: dict, compared: dict) -> bool:
    """Restore `run` from the checkpoint when it holds an unfinished run of the same config, params and data."""
    state = load_checkpoint(ckpt_path, identity, compared)
    if state is not None and state["step"] >= run.p.steps:
        # The stage reruns only when something changed (code, or forced): a finished run is trained again.
        print(f"train: {ckpt_path} holds a finished run; training afresh", flush=True)
        state = None
    if state is None:
        return False
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.epoch, run.segment = state["step"], state["epoch"], state["segment"]
    run.metrics = dict(state["metrics"])
    if len(state["mems"]) != run.world:
        raise PipelineError(f"{ckpt_path} was written by {len(state['mems'])} process(es); resume with as many")
    run.mems = [None if m is None else [t.to(run.device) for t in m] for m in state["mems"][run.rank]]
    torch.set_rng_state(state["rng"][run.rank]["cpu"])
    if run.device.type == "cuda" and state["rng"][run.rank]["cuda"] is not None:
        torch.cuda.set_rng_state(state["rng"][run.rank]["cuda"], run.device)
    if run.rank == 0:
        print(f"train: resuming from {ckpt_path} at step {run.step}", flush=True)
    return True


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
            for k, segment in run.stream.batches(run.epoch, run.segment):
                batch = segment_tensors(segment, run.device, slice(rank, None, world))
                loss = train_step(
                    forward, run.model, run.optimizer, batch, run.mems, p.clip, run.device, world > 1, run.dtype
                )
                run.scheduler.step()
                run.step, run.segment = run.step + 1, k + 1  # the next segment to train on, as a checkpoint records
                step, logged = run.step, {}
                if step % p.log_interval == 0 or step == p.steps:  # the only host syncs, so the GPU is never idle
                    run.metrics["train/loss"], stopping = _agree(loss, stop.requested, world)
                    if rank == 0:
                        progress.update(step, run.metrics["train/loss"], run.scheduler.get_last_lr()[0])
                        logged["train/loss"] = run.metrics["train/loss"]
                if run.val_stream is not None and rank == 0 and (step % p.eval_interval == 0 or step == p.steps):
                    nll = evaluate(run.model, run.val_stream, p.eval_segments, run.device, run.dtype)
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
) -> dict:
    """Train, resuming from checkpoints/last.pt when it matches; return the final metrics (rank 0's)."""
    run = _setup(tokens, model_params, p)
    p, cfg, rank, world = run.p, run.model.cfg, run.rank, run.world
    ckpt_path = Path(checkpoints) / "last.pt"
    identity = {**asdict(cfg), "data": tokens_fingerprint(tokens)}
    compared = {k: v for k, v in asdict(p).items() if k not in ("cpu_limits", "cpu_lr")}  # their effect is in p
    resumed = _resume(run, ckpt_path, identity, compared)

    forward = torch.compile(run.model) if p.compile else run.model
    if world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=device_ids)
    tokens_per_step, num_params = p.batch_size * cfg.tgt_len, run.model.num_params()
    live = open_live(live_dir, resume_step=run.step if resumed else None) if rank == 0 else None
    if live is not None:
        if resumed:  # the checkpoint's values, not those a killed run logged after it
            log_metrics(live, run.step, run.metrics, num_params, tokens_per_step, plot=False)
        precision = "bfloat16" if run.dtype == torch.bfloat16 else "float32"
        live.log_params(
            {
                "model": asdict(cfg),
                "train": asdict(p),
                "device": run.device.type,
                "precision": precision,
                "processes": world,
            }
        )

    def save() -> None:
        training = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "config": identity,
            "params": compared,
            "step": run.step,
            "epoch": run.epoch,
            "segment": run.segment,
            "metrics": run.metrics,
        }
        write_checkpoint(ckpt_path, training, run.mems, rank, world, run.device)

    def log(logged: dict) -> None:
        if live is not None:
            log_metrics(live, run.step, logged, num_params, tokens_per_step)

    started, first_step = time.perf_counter(), run.step
    if _loop(run, forward, save, log, on_step, ckpt_path):
        return {"interrupted": True, "step": run.step}
    if rank == 0:
        export_model(run.model, Path(model_out))
        if live_dir is not None:
            seconds, steps = time.perf_counter() - started, run.step - first_step
            write_run_record(Path(live_dir) / "run.json", seconds, steps, tokens_per_step, run.device.type, world)
        if live is not None:  # the summary, even if no step ran
            log_metrics(live, run.step, run.metrics, num_params, tokens_per_step, plot=False)
            live.end()
    if world > 1:
        dist.barrier()
    return {"step": run.step, **run.metrics}
