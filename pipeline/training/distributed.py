"""Several processes under torchrun: the process group, DDP around the model, agreement between ranks, and the
per-rank state a checkpoint gathers on rank 0. A single process (no torchrun) skips all of it."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from model.device import pick_device


def start(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). On a GPU the process's device is set before the process group starts, and the
    group is bound to it (`device_id`), as NCCL needs to avoid a hang; CPUs use gloo."""
    rank, world, local_rank = (
        int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    )
    device = pick_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return rank, world, device


def wrap(model: torch.nn.Module, device: torch.device, world: int, compile_model: bool) -> torch.nn.Module:
    """What the training step calls: DDP around the model with several processes, and torch.compile around that
    (compile(DDP(model)), so that the gradients' all-reduce overlaps the backward pass)."""
    forward = model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(forward) if compile_model else forward


def agree(loss: torch.Tensor, stop: bool, world: int) -> tuple[float, bool]:
    """The loss averaged over processes, and whether any was asked to stop, so that all stop at the same step."""
    if world == 1:
        return float(loss), stop
    both = torch.stack([loss.float(), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / world, bool(both[1] > 0)


def gather_on_first(local: object, rank: int, world: int) -> list | None:
    """Every rank's `local` in rank order, on rank 0 only (None elsewhere)."""
    if world == 1:
        return [local]
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return gathered


def from_first(value: object, rank: int, world: int) -> object:
    """Rank 0's `value` on every rank (VALUE itself in a single process); the other ranks' VALUE is not read."""
    if world == 1:
        return value
    # Pickled into a byte tensor (on the GPU with NCCL); a tensor arrives on the device it left, so send CPU ones.
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    """Wait for every process (nothing to wait for in a single one)."""
    if world > 1:
        dist.barrier()


def finish() -> None:
    """Close the process group, if this process started one, once training is over."""
    if dist.is_initialized():
        dist.destroy_process_group()


def reshard(saved: list[list], world: int, chunks: int) -> list[list]:
    """Memories per process and accumulation chunk ([rank][chunk] -> a tensor per layer, or None), written by
    len(saved) processes, dealt out to `world` processes of `chunks` chunks: process k of W holds the global rows
    k, k + W, ..., in chunks of consecutive ones, so the rows go back to their global order and are dealt again."""
    if any(chunk is None for rank in saved for chunk in rank):  # an epoch had just begun: no memory yet
        return [[None] * chunks for _ in range(world)]
    layers, old = len(saved[0][0]), len(saved)
    rows = [[torch.cat([chunk[layer] for chunk in rank]) for layer in range(layers)] for rank in saved]
    dealt: list[list] = [[[] for _ in range(chunks)] for _ in range(world)]
    for layer in range(layers):
        first = rows[0][layer]
        whole = first.new_empty((sum(r[layer].size(0) for r in rows), *first.shape[1:]))
        for k in range(old):
            whole[k::old] = rows[k][layer]
        for k in range(world):
            for c, part in enumerate(whole[k::world].chunk(chunks)):
                dealt[k][c].append(part.contiguous())
    return dealt
