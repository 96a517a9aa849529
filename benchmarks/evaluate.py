"""Evaluate throughput: the Kneser–Ney baseline against NLTK's, and the model's scoring with Transformer-XL's memory
against recomputing a sliding window for every token, each pair on the same tokens in the same run.

Usage: python benchmarks/evaluate.py [--tokens data/tokens] [--model data/model] [--order 4]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pieces_of(tokens: Path, split: str, limit: int, stretch_one: bool = False) -> list[np.ndarray]:
    """The first pieces of a split, up to `limit` tokens in all."""
    from pipeline.token_folder import PieceStore

    store, out, total = PieceStore(tokens, split), [], 0
    for i in range(len(store)):
        if stretch_one and store.index["stretch"][i] != 1.0:
            continue
        piece = store.piece(i).astype(np.int64)
        out.append(piece[: max(limit - total, 2)])
        total += len(out[-1])
        if total >= limit:
            break
    return out


def ngram_rows(tokens: Path, order: int, train_tokens: int, scored_tokens: int) -> list[tuple[str, float, float]]:
    """(name, fit tokens/s, scored tokens/s) for ours and for NLTK's KneserNeyInterpolated."""
    from pipeline.ngram import KneserNey

    train = pieces_of(tokens, "train", train_tokens, stretch_one=True)
    held_out = pieces_of(tokens, "validation", scored_tokens)
    corpus, lengths = np.concatenate(train), np.array([len(p) for p in train])
    held, held_lengths = np.concatenate(held_out), np.array([len(p) for p in held_out])
    n_train, n_scored = len(corpus), int(sum(held_lengths - 1))

    start = time.perf_counter()
    model = KneserNey(order, 390, 388).fit(corpus, lengths)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    ours = -model.log_probs(held, held_lengths).mean()
    rows = [(f"ours: numpy modified KN, NLL {ours:.3f}", n_train / fit, n_scored / (time.perf_counter() - start))]
    try:
        from nltk.lm import KneserNeyInterpolated
        from nltk.lm.preprocessing import padded_everygram_pipeline
    except ImportError:
        print("NLTK is not installed (pip install -e '.[bench]'): its row is left out")
        return rows
    start = time.perf_counter()
    grams, vocab = padded_everygram_pipeline(order, [[str(t) for t in p[1:]] for p in train])
    nltk_model = KneserNeyInterpolated(order)
    nltk_model.fit(grams, vocab)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    total = 0.0
    for piece in held_out:
        words = ["<s>"] * (order - 1) + [str(t) for t in piece[1:]]
        for i in range(order - 1, len(words)):
            total += nltk_model.logscore(words[i], words[i - order + 1 : i])
    nltk_nll = -total / n_scored * math.log(2)  # logscore is in bits
    rows.append(
        (f"NLTK KneserNeyInterpolated, NLL {nltk_nll:.3f}", n_train / fit, n_scored / (time.perf_counter() - start))
    )
    return rows


def model_rows(model_dir: Path, tokens: Path, tgt_len: int, mem_len: int, scored: int) -> list[tuple[str, float]]:
    """(name, tokens/s) for scoring with the memory (ours) and for recomputing the window per token (the peer), both
    with the evaluate stage's span and, for a state-input model, the piano state as the stages make it."""
    from model import TransformerXL, TransformerXLConfig
    from model.sampling import start_decoding
    from pipeline.evaluate import attn_span, score_pieces
    from pipeline.generation.decoding import piano_state_input
    from pipeline.model_folder import load_model, reads_texture
    from pipeline.music.piano_state import PIANO_STATE_SIZE
    from pipeline.music.texture import texture_track
    from pipeline.params import EvaluateParams

    if any((model_dir / name).is_file() for name in ("model.safetensors", "model.pt")):
        model = load_model(model_dir, side_size=PIANO_STATE_SIZE)
    else:
        print(f"no model at {model_dir}: a freshly initialised CPU-sized model is timed instead")
        cfg = TransformerXLConfig(390, n_layer=4, d_model=128, n_head=4, d_head=32, d_inner=512, dropout=0.0)
        model = TransformerXL(cfg)
    model.eval()
    span, window = attn_span(EvaluateParams(tgt_len=tgt_len, mem_len=mem_len)), tgt_len + mem_len
    piece = max(pieces_of(tokens, "validation", 10**9), key=len)[: scored + 1]  # one long piece, batch 1 for both
    if len(piece) <= window:
        sys.exit(f"the longest validation piece has {len(piece)} tokens, too few for a window of {window}")
    score_pieces(model, [piece[: window + 1]], tgt_len, batch_size=1, span=span)  # untimed: the first calls' set-up
    start = time.perf_counter()
    score_pieces(model, [piece], tgt_len, batch_size=1, span=span)
    ours = (len(piece) - 1) / (time.perf_counter() - start)

    count = min(200, len(piece) - window)  # full forwards over the `window` tokens before each scored token
    ids = torch.from_numpy(piece[: window + count])[None]
    start = time.perf_counter()
    with torch.no_grad():
        track = texture_track(piece)[None] if reads_texture(model.cfg) else None  # as the evaluate stage reads it
        side = piano_state_input(1, ids.device, track) if model.cfg.side_size else None
        _, step = start_decoding(model, ids[:, :window], "recompute", window, side, span)
        for i in range(window, window + count - 1):
            step(ids[:, i])
    recompute = count / (time.perf_counter() - start)
    return [
        (f"ours: segments of {tgt_len} with a memory of {mem_len}", ours),
        (f"recompute a window of {window} per token", recompute),
    ]


def main() -> None:
    """Time both pairs of contenders and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=Path, default=ROOT / "data" / "tokens")
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "model")
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--train-tokens", type=int, default=300_000, help="train tokens both n-grams are fit on")
    parser.add_argument("--scored-tokens", type=int, default=20_000)
    parser.add_argument("--tgt-len", type=int, default=128)
    parser.add_argument("--mem-len", type=int, default=256)
    args = parser.parse_args()
    if not (args.tokens / "validation" / "index.json").is_file():
        sys.exit(f"skipped: no token shards at {args.tokens} (run `dvc repro` up to tokenize, or pass --tokens)")
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows = ngram_rows(args.tokens, args.order, args.train_tokens, args.scored_tokens)
    print(f"\n{args.order}-gram Kneser–Ney, fit on {args.train_tokens:,} train tokens, {args.scored_tokens:,} scored")
    print(f"{'':46} {'fit tokens/s':>14} {'scored tokens/s':>16}")
    for name, fit, score in rows:
        print(f"{name:46} {fit:14,.0f} {score:16,.0f}")
    if len(rows) == 2:
        print(f"ours / NLTK: fit {rows[0][1] / rows[1][1]:.0f}x, scoring {rows[0][2] / rows[1][2]:.0f}x faster")

    rows = model_rows(args.model, args.tokens, args.tgt_len, args.mem_len, args.scored_tokens)
    print("\nmodel scoring on the CPU, batch 1, the longest validation piece (the peer: 200 of its tokens)")
    for name, rate in rows:
        print(f"{name:46} {rate:14,.0f} tokens/s")
    print(f"memory / recompute: {rows[0][1] / rows[1][1]:.0f}x faster")


if __name__ == "__main__":
    main()
