"""train stage: a Transformer-XL on the token shards, resumable, on GPU (bf16) or CPU, single process or torchrun DDP.

Imports only torch, numpy and the standard library; DVCLive is loaded lazily and skipped when it is not installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from model import TransformerXL, TransformerXLConfig
from pipeline.errors import PipelineError
from pipeline.segments import PieceStore, SegmentStream, load_vocab, pitch_ranges


@dataclass
class TrainParams:
    """The `train:` section of params.yaml."""

    steps: int = 2000
    batch_size: int = 16  # rows in the global batch, split over processes and then over grad_accum chunks
    grad_accum: int = 1
    lr: float = 2.5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip: float = 0.25
    eval_interval: int = 200
    eval_segments: int = 50
    eval_batch_size: int = 8
    checkpoint_interval: int = 200
    log_interval: int = 10
    seed: int = 1234
    transpose: int = 3
    compile: bool = False
    device: str = "auto"  # auto, cuda or cpu


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


def build_model(vocab: dict, model_params: dict) -> TransformerXL:
    """The model for a token vocabulary (vocab.json): vocab_size from it, the rest from the `model:` params."""
    try:
        return TransformerXL(TransformerXLConfig(vocab_size=int(vocab["vocab_size"]), **model_params))
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"model params: {exc}") from exc


@torch.no_grad()
def evaluate(model: TransformerXL, stream: SegmentStream, max_segments: int, device: torch.device) -> float:
    """Mean negative log-likelihood per token (nats) over the first segments of a stream, memory carried."""
    was_training = model.training
    model.eval()
    mems, total, count = None, 0.0, 0
    for k, x, y in stream.batches(0):
        if k >= max_segments:
            break
        with _autocast(device):
            _, loss, mems = model(
                torch.from_numpy(x.astype(np.int64)).to(device), torch.from_numpy(y.astype(np.int64)).to(device), mems
            )
        total, count = total + float(loss) * y.size, count + y.size
    model.train(was_training)
    return total / max(count, 1)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file, so a crash mid-write never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, config: TransformerXLConfig, params: TrainParams) -> dict | None:
    """The checkpoint to resume, or None to start afresh; loaded with weights_only, so it can run no code."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"]["vocab_size"] != config.vocab_size:
        raise PipelineError(
            f"{path}: checkpoint vocabulary has {state['config']['vocab_size']} tokens, the tokens' vocab.json "
            f"{config.vocab_size}; delete the checkpoint to train afresh"
        )
    if state["config"] != asdict(config) or state["params"] != asdict(params):
        print(f"train: {path} was trained with other model or train params; starting afresh")
        return None
    return state


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
    rank, world, local_rank = _distributed()
    use_cuda = torch.cuda.is_available() and p.device in ("auto", "cuda")
    if p.device == "cuda" and not use_cuda:
        raise PipelineError("train.device is cuda, but no GPU is available")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if p.batch_size % (world * p.grad_accum):
        raise PipelineError(
            f"train.batch_size {p.batch_size} must divide by processes × grad_accum ({world} × {p.grad_accum})"
        )

    torch.manual_seed(p.seed)
    vocab = load_vocab(tokens)
    model = build_model(vocab, model_params).to(device)
    cfg = model.cfg
    stream = SegmentStream(
        PieceStore(tokens, "train"), p.batch_size, cfg.tgt_len, p.seed, p.transpose, tuple(pitch_ranges(vocab))
    )
    val_stream = None
    if (Path(tokens) / "validation" / "index.json").is_file():
        val_stream = SegmentStream(PieceStore(tokens, "validation"), p.eval_batch_size, cfg.tgt_len)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=p.lr,
        betas=(0.9, 0.98),
        fused=use_cuda or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, p))

    step, epoch, segment = 0, 0, 0
    chunks = p.grad_accum
    mems: list = [None] * chunks
    ckpt_path = Path(checkpoints) / "last.pt"
    state = load_checkpoint(ckpt_path, cfg, p)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, segment = state["step"], state["epoch"], state["segment"]
        if len(state["mems"]) != world:
            raise PipelineError(f"{ckpt_path} was written by {len(state['mems'])} process(es); resume with as many")
        mems = [None if m is None else [t.to(device) for t in m] for m in state["mems"][rank]]
        torch.set_rng_state(state["rng"][rank])
        if rank == 0:
            print(f"train: resuming from {ckpt_path} at step {step}")

    forward = torch.compile(model) if p.compile else model
    ddp = (
        torch.nn.parallel.DistributedDataParallel(forward, device_ids=[local_rank] if use_cuda else None)
        if world > 1
        else forward
    )
    live = _live(live_dir, resume=state is not None) if rank == 0 else None

    stop = _Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    metrics: dict = {}
    tokens_per_step = p.batch_size * cfg.tgt_len
    started, start_step = time.perf_counter(), step
    try:
        while step < p.steps and not stop.requested:
            for k, x, y in stream.batches(epoch, segment):
                x = torch.from_numpy(x[rank::world].astype(np.int64)).to(device)
                y = torch.from_numpy(y[rank::world].astype(np.int64)).to(device)
                loss_sum = 0.0
                for c, (xc, yc) in enumerate(zip(x.chunk(chunks), y.chunk(chunks), strict=True)):
                    sync = contextlib.nullcontext() if world == 1 or c == chunks - 1 else ddp.no_sync()
                    with sync, _autocast(device):
                        _, loss, mems[c] = ddp(xc, yc, mems[c])
                        (loss / chunks).backward()
                    loss_sum += float(loss.detach()) / chunks
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, segment = step + 1, k + 1  # the next segment to train on, as a checkpoint records
                if world > 1:
                    reduced = torch.tensor([loss_sum], device=device)
                    dist.all_reduce(reduced)
                    loss_sum = float(reduced) / world
                metrics["train/loss"] = loss_sum
                logged = {}
                if rank == 0 and (step % p.log_interval == 0 or step == p.steps):
                    rate = (step - start_step) * tokens_per_step / (time.perf_counter() - started)
                    left = (p.steps - step) * tokens_per_step / max(rate, 1e-9)
                    print(
                        f"step {step}/{p.steps} loss {loss_sum:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                        f"{rate:,.0f} tok/s, {left / 60:.1f} min left",
                        flush=True,
                    )
                    logged["train/loss"] = loss_sum
                if val_stream is not None and rank == 0 and (step % p.eval_interval == 0 or step == p.steps):
                    metrics["val/nll"] = logged["val/nll"] = evaluate(model, val_stream, p.eval_segments, device)
                    print(f"step {step}: validation NLL {metrics['val/nll']:.4f} nats/token", flush=True)
                if live is not None and logged:
                    live.step = step
                    for name, value in logged.items():
                        live.log_metric(name, value)
                    live.make_summary()
                if on_step is not None:
                    on_step(step)
                if step % p.checkpoint_interval == 0 or step == p.steps or stop.requested:
                    _checkpoint(ckpt_path, model, optimizer, scheduler, cfg, p, step, epoch, segment, mems, rank, world)
                if step >= p.steps or stop.requested:
                    break
            else:
                epoch, segment, mems = epoch + 1, 0, [None] * chunks
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop.requested:
        if rank == 0:
            print(f"train: stopped at step {step}; {ckpt_path} holds everything to resume")
        return {"interrupted": True, "step": step}
    if rank == 0:
        _export(model, cfg, Path(model_out))
        if live is not None:
            live.end()
    if world > 1:
        dist.barrier()
    return {"step": step, **metrics}


def _live(live_dir: Path | None, resume: bool):  # noqa: ANN202 (a dvclive.Live, or None)
    if live_dir is None:
        return None
    try:
        from dvclive import Live
    except ImportError:
        print("train: dvclive is not installed; metrics are printed only")
        return None
    return Live(dir=str(live_dir), resume=resume, dvcyaml=None, save_dvc_exp=False)


def _checkpoint(path, model, optimizer, scheduler, cfg, p, step, epoch, segment, mems, rank, world) -> None:  # noqa: ANN001
    """Gather every rank's memory and RNG state, and let rank 0 write one checkpoint."""
    local = {"mems": [None if m is None else [t.detach().cpu() for t in m] for m in mems], "rng": torch.get_rng_state()}
    gathered = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    if rank == 0:
        save_checkpoint(
            path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "config": asdict(cfg),
                "params": asdict(p),
                "step": step,
                "epoch": epoch,
                "segment": segment,
                "mems": [g["mems"] for g in gathered],
                "rng": [g["rng"] for g in gathered],
            },
        )


def _export(model: TransformerXL, cfg: TransformerXLConfig, out: Path) -> None:
    """The trained weights (state dict, for torch.load(weights_only=True)) and the config beside them."""
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
