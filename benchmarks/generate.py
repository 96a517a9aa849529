"""Generation throughput: cached decoding (`TransformerXL.step`) against recomputing the whole context window for
every token, and against the plain incremental forward, at a context of 1,024 tokens, in the same run.

Each contender starts from the same 1,024-token prompt (a validation piece when there are token shards), so the
memory (or window) is full from the first timed token. The prompt is not timed; the steps are, after two untimed
ones. Seconds of music per second = tokens/s ÷ the validation split's tokens per second of music.

Usage: python benchmarks/generate.py [--model data/model] [--tokens data/tokens] [--params params.yaml]
                                     [--context 1024] [--batches 1 8] [--steps 64] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import AttnSpan, TransformerXL  # noqa: E402
from model.device import autocast, cpu_has_bf16, native_bf16  # noqa: E402
from model.sampling import start_decoding  # noqa: E402
from pipeline.generation.decoding import piano_state_input  # noqa: E402
from pipeline.model_folder import reads_texture  # noqa: E402
from pipeline.music.piano_state import PIANO_STATE_SIZE  # noqa: E402
from pipeline.music.texture import TRACK_COLUMNS  # noqa: E402

TOKENS_PER_SECOND_OF_MUSIC = 43.0  # MAESTRO's average, when there are no token shards to measure it on


def vocabulary(model_dir: Path, tokens: Path) -> dict:
    """The vocabulary the train stage builds the default model from: the token folder's vocab.json, else the trained
    model's, else the encoding's own (which lists no composer labels)."""
    for path in (tokens / "vocab.json", model_dir / "vocab.json"):
        if path.is_file():
            return json.loads(path.read_text())
    from pipeline.music.performance_encoding import vocab

    return vocab()


def models(model_dir: Path, tokens: Path, params: Path) -> dict[str, TransformerXL]:
    """The default-size model (the params' model:, freshly initialised) and the trained one (or a CPU-sized one)."""
    from pipeline.model_folder import build_model, load_model, model_section
    from pipeline.params import load_section

    torch.manual_seed(0)
    vocab = vocabulary(model_dir, tokens)
    shape = {**model_section(load_section("model", params)), "dropout": 0.0}
    if shape["composer_labels"] and "labels" not in vocab:  # a label adds one embedding per token, next to nothing
        print(f"no composer labels in a vocab.json at {tokens} or {model_dir}: the default model is timed without")
        shape["composer_labels"] = False
    default = build_model(vocab, shape)
    if any((model_dir / name).is_file() for name in ("model.safetensors", "model.pt")):
        trained, name = load_model(model_dir, side_size=PIANO_STATE_SIZE), f"trained ({model_dir.name})"
    else:
        print(f"no model at {model_dir}: a freshly initialised CPU-sized model is timed in its place")
        cpu_shape = {"n_layer": 4, "d_model": 128, "n_head": 4, "d_head": 32, "d_inner": 512, "tgt_len": 128}
        trained, name = build_model(vocab, {**shape, **cpu_shape, "mem_len": 128}), "CPU-sized"
    size = {model: f"{model.num_params() / 1e6:.1f} M" for model in (default, trained)}
    return {f"default size, {size[default]}": default, f"{name}, {size[trained]}": trained}


def music_rate(tokens: Path) -> tuple[float, np.ndarray | None]:
    """Tokens per second of music in the validation split, and its longest piece (for the prompt)."""
    index = tokens / "validation" / "index.json"
    if not index.is_file():
        return TOKENS_PER_SECOND_OF_MUSIC, None
    from pipeline.token_folder import PieceStore

    store = PieceStore(tokens, "validation")
    longest = max(range(len(store)), key=lambda i: store.index["length"][i])
    return store.total_tokens / sum(store.index["seconds"]), store.piece(longest).astype(np.int64)


def time_steps(
    model: TransformerXL, prompt: torch.Tensor, decoding: str, steps: int, window: int, dtype: torch.dtype | None
) -> float:
    """Tokens per second over `steps` decoding steps after two untimed ones (the prompt's forward is not timed), with
    the piano state and a composer label where the model reads them, as the generate stage samples."""
    rng = torch.Generator().manual_seed(0)
    device = prompt.device
    with torch.no_grad(), autocast(device, dtype):
        track = np.full((prompt.size(0), 1, TRACK_COLUMNS), 0.5, np.float32) if reads_texture(model.cfg) else None
        side = piano_state_input(prompt.size(0), device, track) if model.cfg.side_size else None
        labels = torch.ones(prompt.size(0), dtype=torch.long, device=device) if model.cfg.n_labels else None
        logits, step = start_decoding(model, prompt, decoding, window, side, AttnSpan(window), labels)
        tokens = torch.randint(0, logits.size(-1), (prompt.size(0), steps + 2), generator=rng).to(device)
        for i in range(2):
            step(tokens[:, i])
        synchronize(device)
        start = time.perf_counter()
        for i in range(2, steps + 2):
            step(tokens[:, i])
        synchronize(device)
        return steps * prompt.size(0) / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Time every contender for each model and batch, and print a row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "model")
    parser.add_argument("--tokens", type=Path, default=ROOT / "data" / "tokens")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="its model: is the default size")
    parser.add_argument("--context", type=int, default=1024, help="memory length, and the recompute's window")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=64, help="timed cached steps (the peers take fewer)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rate, piece = music_rate(args.tokens)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = native_bf16(device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"native bf16 on the CPU: {cpu_has_bf16()}"
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{rate:.1f} tokens per second of music; {where}"
    )
    if piece is None or len(piece) < args.context:
        print("no validation piece long enough: the prompt is random ids")
        piece = np.random.default_rng(0).integers(0, 388, args.context)
    # (name, decoding, dtype of the weights' matmuls, timed steps at batch 1): the slow peers take fewer steps, and
    # fewer per row.
    contenders = [
        ("recompute the window", "recompute", None, 3),
        ("plain incremental forward", "incremental", None, 8),
        ("cached, float32", "cached", None, args.steps),
        ("cached, bf16 weights", "cached", torch.bfloat16, args.steps),
    ]
    rows = []
    for model_name, model in models(args.model, args.tokens, args.params).items():
        model.eval().to(device)
        for batch in args.batches:
            prompt = torch.from_numpy(piece[-args.context :]).repeat(batch, 1).to(device)
            peer = None
            for name, decoding, dtype, steps in contenders:
                if dtype is not None and not bf16:
                    continue
                timed = steps if decoding == "cached" else max(1, steps // batch)
                speed = time_steps(model, prompt, decoding, timed, args.context, dtype)
                peer = peer or speed
                row = {"model": model_name, "batch": batch, "contender": name, "tokens_per_s": round(speed, 2)}
                rows.append({**row, "music_s_per_s": round(speed / rate, 3), "vs_recompute": round(speed / peer, 1)})
                print(
                    f"{model_name:24} batch {batch:2}  {name:26} {speed:9.1f} tokens/s  {speed / rate:7.2f} s of "
                    f"music/s  {speed / peer:6.1f}x recompute",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
