"""evaluate stage: the trained model's NLL on every held-out split, with Transformer-XL's protocol, beside baselines.

Each piece is scored from its PIECE_START with an empty memory, in segments of `tgt_len` tokens whose memory of
`mem_len` hidden states carries over, so every token is predicted exactly once, from all of its piece before it (up
to the memory); a model with the state input reads the piano's state after each token. Every figure is unconditional
(no composer given, label 0), so that models with and without labels, and published figures, compare; a model with
labels also gets `nll_labelled` (each piece's true composer given, on its first `label_tokens` tokens) and
`label_gain` (on the same tokens). Scores are in bf16 autocast where the device has it natively (`precision`).
`piece_start_nll` is the NLL of each piece's first PIECE_START_TOKENS predicted tokens: how well the model begins a
piece. The baselines (uniform, unigram, Kneser–Ney) are fit on the unstretched train pieces and score the same
tokens. Imports only torch, numpy, the standard library and the music modules that need no more.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import AttnSpan, TransformerXL
from model.device import allow_tf32, autocast, compute_dtype, pick_device
from pipeline.atomic import atomic_write_text
from pipeline.errors import PipelineError
from pipeline.model_folder import load_model, reads_texture
from pipeline.music.piano_state import PIANO_STATE_SIZE
from pipeline.music.piano_state_torch import PianoState
from pipeline.music.texture import padded_tracks, texture_track
from pipeline.ngram import KneserNey, uniform_nll, unigram_log_probs
from pipeline.params import EvaluateParams
from pipeline.token_folder import PieceStore, load_vocab
from pipeline.training import cpu_profile

HELD_OUT = ("validation", "test")
PIECE_START_TOKENS = 64  # the opening whose NLL is piece_start_nll


@dataclass
class Scores:
    """Per-token negative log-likelihoods (nats) and whether the most likely token was the right one, per piece."""

    nll: list[np.ndarray]
    correct: list[np.ndarray]


@torch.no_grad()
def score_pieces(
    model: TransformerXL,
    pieces: list[np.ndarray],
    tgt_len: int,
    batch_size: int,
    span: AttnSpan | None = None,
    labels: list[int] | None = None,
) -> Scores:
    """Score every token after each piece's first, piece by piece from an empty memory, in segments of tgt_len,
    attending as far as `span` says (default: as the model was trained), with each piece's label at every one of its
    tokens for a model with labels (None: label 0, "none given"), and each piece's own texture track for a model that
    reads one.

    Pieces are batched longest first; a batch row that has ended is dropped, so padding is never scored and never
    precedes a scored token (the result equals scoring each piece alone).
    """
    device = next(model.parameters()).device
    model.eval()
    nll: list[np.ndarray] = [np.zeros(0)] * len(pieces)
    correct: list[np.ndarray] = [np.zeros(0, bool)] * len(pieces)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        lengths = np.array([len(pieces[i]) - 1 for i in batch])  # scored tokens per row
        width = int(lengths.max())
        x, y = np.zeros((len(batch), width), np.int64), np.full((len(batch), width), -1, np.int64)  # -1: past the end
        for row, i in enumerate(batch):
            x[row, : lengths[row]], y[row, : lengths[row]] = pieces[i][:-1], pieces[i][1:]
        x_all, y_all = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        row_labels = None if labels is None else torch.tensor([labels[i] for i in batch], device=device)
        row_nll = torch.zeros(len(batch), width, device=device)
        row_hit = torch.zeros(len(batch), width, dtype=torch.bool, device=device)
        tracks = [texture_track(pieces[i]) for i in batch] if reads_texture(model.cfg) else None
        texture = None if tracks is None else torch.as_tensor(padded_tracks(tracks), device=device)
        mems, state = None, PianoState(len(batch), device, texture) if model.cfg.side_size else None
        for start in range(0, width, tgt_len):
            alive = int(np.count_nonzero(lengths > start))  # rows are longest first: the live ones are a prefix
            mems = None if mems is None else [m[:alive] for m in mems]
            ids, side = x_all[:alive, start : start + tgt_len], None
            if state is not None:
                state.keep(alive)
                side = state(ids)
            segment_labels = None if row_labels is None else row_labels[:alive, None].expand_as(ids)
            logits, _, mems = model(ids, None, mems, side, span=span, labels=segment_labels)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            target = y_all[:alive, start : start + tgt_len]
            row_nll[:alive, start : start + tgt_len] = -log_probs.gather(-1, target.clamp(min=0)[..., None])[..., 0]
            row_hit[:alive, start : start + tgt_len] = log_probs.argmax(-1) == target
        row_nll, row_hit = row_nll.cpu().numpy(), row_hit.cpu().numpy()
        for row, i in enumerate(batch):
            nll[i], correct[i] = row_nll[row, : lengths[row]].astype(np.float64), row_hit[row, : lengths[row]]
    return Scores(nll, correct)


def attn_span(p: EvaluateParams) -> AttnSpan:
    """How far the evaluation attends: further than training, as in the Transformer-XL paper (the same weights)."""
    return AttnSpan(p.mem_len, p.same_length, p.clamp_len)


def split_metrics(
    scores: Scores, store: PieceStore, baselines: dict[str, list[np.ndarray]], vocab_size: int
) -> dict[str, object]:
    """The figures of one split: token-weighted means over its pieces, baselines, and NLL per composer."""
    nll = np.concatenate(scores.nll)
    tokens = len(nll)
    seconds = float(sum(store.index["seconds"]))
    total = float(nll.sum())
    mean = total / max(tokens, 1)
    opening = np.concatenate([piece_nll[:PIECE_START_TOKENS] for piece_nll in scores.nll])
    return {
        "nll": round(mean, 5),
        "piece_start_nll": round(float(opening.mean()), 5) if len(opening) else 0.0,
        "bits_per_token": round(mean / math.log(2), 5),
        "perplexity": round(math.exp(mean), 4),
        "accuracy": round(float(np.concatenate(scores.correct).mean()) if tokens else 0.0, 5),
        "nats_per_second": round(total / seconds, 4) if seconds else 0.0,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "baselines": {
            "uniform": round(uniform_nll(vocab_size), 5),
            **{name: round(-float(np.concatenate(lp).mean()), 5) for name, lp in baselines.items()},
        },
        "by_composer": composer_means(store.index["composer"], scores.nll),
    }


def composer_means(composers: list[str], nll: list[np.ndarray]) -> dict[str, float]:
    """The token-weighted mean NLL of each composer's pieces, by composer name."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for composer, piece_nll in zip(composers, nll, strict=True):
        sums[composer][0] += float(piece_nll.sum())
        sums[composer][1] += len(piece_nll)
    return {c: round(s / n, 5) for c, (s, n) in sorted(sums.items()) if n}


def labelled_metrics(
    model: TransformerXL, pieces: list[np.ndarray], store: PieceStore, vocab: dict, scores: Scores, p: EvaluateParams
) -> dict:
    """For a model with composer labels: the NLL with each piece's true label on its first p.label_tokens tokens,
    beside the unconditional one (`scores`, label 0) on the same tokens, overall and per composer, and how well the
    labels name each piece's composer (`identify`)."""
    if "label" not in store.index or "labels" not in vocab:
        raise PipelineError(f"{store.folder / 'index.json'}: no composer labels (rerun the tokenize stage)")
    # A piece's first tokens score alike whether the rest follows or not (each from an empty memory, causally), so
    # the labelled pass scores only the opening share, and the gain compares the same tokens of the unlabelled pass.
    heads = [piece[: p.label_tokens + 1] for piece in pieces] if p.label_tokens else pieces
    labelled = score_pieces(model, heads, p.tgt_len, p.batch_size, attn_span(p), store.index["label"])
    free_heads = [piece_nll[: len(given)] for piece_nll, given in zip(scores.nll, labelled.nll, strict=True)]
    nll, free = np.concatenate(labelled.nll), np.concatenate(free_heads)
    return {
        "nll_labelled": round(float(nll.mean()), 5),
        "label_gain": round(float(free.mean() - nll.mean()), 5),  # nats per token that knowing the composer saves
        "labelled_tokens": len(nll),  # the tokens both NLLs of the gain are over: each piece's first label_tokens
        "labelled_share": round(len(nll) / max(sum(len(piece_nll) for piece_nll in scores.nll), 1), 4),
        "by_composer_labelled": composer_means(store.index["composer"], labelled.nll),
        "by_composer_gain": composer_means(
            store.index["composer"], [head - given for head, given in zip(free_heads, labelled.nll, strict=True)]
        ),
        "identification": identify(model, pieces, store.index["label"], vocab["labels"], p),
    }


def identify(model: TransformerXL, pieces: list[np.ndarray], truth: list[int], labels: list[dict], p: EvaluateParams):  # noqa: ANN201
    """Name each piece's composer: score its first p.identify_tokens tokens under every label and take the likeliest.
    Top-1 and top-3 accuracy, beside always naming the composer with the most train pieces (`majority`), and the
    confusion matrix (rows: the true label, columns: the named one, in label order)."""
    heads = [piece[: p.identify_tokens + 1] for piece in pieces]
    ids = [entry["label"] for entry in labels]
    scores = score_pieces(model, heads * len(ids), p.tgt_len, p.batch_size, attn_span(p),
                          [label for label in ids for _ in heads])  # fmt: skip
    totals = np.array([nll.sum() for nll in scores.nll]).reshape(len(ids), len(heads)).T  # [piece, label]
    ranked = np.asarray(ids)[np.argsort(totals, axis=1, kind="stable")]
    truth = np.asarray(truth)
    most = max(labels, key=lambda entry: entry["pieces"].get("train", 0))["label"]
    confusion = np.zeros((len(ids), len(ids)), np.int64)
    np.add.at(confusion, (np.searchsorted(ids, truth), np.searchsorted(ids, ranked[:, 0])), 1)
    return {
        "tokens": p.identify_tokens,
        "pieces": len(pieces),
        "top1": round(float(np.mean(ranked[:, 0] == truth)), 4),
        "top3": round(float(np.mean((ranked[:, :3] == truth[:, None]).any(axis=1))), 4),
        "majority": round(float(np.mean(truth == most)), 4),
        "labels": [entry["composer"] for entry in labels],
        "confusion": confusion.tolist(),
    }


def fit_baselines(tokens: Path, order: int, vocab: dict) -> tuple[np.ndarray, KneserNey]:
    """Unigram log-probabilities and a Kneser–Ney model, fit on the train split's unstretched pieces."""
    store = PieceStore(tokens, "train")
    pieces = [store.piece(i) for i, s in enumerate(store.index["stretch"]) if s == 1.0]
    if not pieces:
        raise PipelineError(f"{Path(tokens) / 'train'}: no unstretched pieces to fit the baselines on")
    corpus, lengths = np.concatenate(pieces), np.array([len(p) for p in pieces])
    size, start = int(vocab["vocab_size"]), int(vocab["specials"]["piece_start"])
    return unigram_log_probs(corpus, lengths, size), KneserNey(order, size, start).fit(corpus, lengths)


def evaluate(tokens: Path, model_dir: Path, metrics: Path, p: EvaluateParams) -> dict:
    """Run the stage: score every held-out split that is present, write `metrics` (eval.json) and return it."""
    tokens = Path(tokens)
    try:
        device = pick_device(p.device)
    except ValueError as exc:
        raise PipelineError(f"evaluate.{exc}") from exc
    allow_tf32(device)  # float32 matmuls in TF32 on a GPU
    if device.type == "cpu":
        p, lowered = cpu_profile.for_evaluation(p)
        if lowered:
            print(f"evaluate: on a CPU, so evaluate.cpu_limits lowers {', '.join(lowered)}", flush=True)
    if min(p.tgt_len, p.batch_size) < 1 or min(p.mem_len, p.label_tokens) < 0 or p.ngram_order < 1:
        raise PipelineError(f"evaluate params out of range: {p}")
    try:
        dtype = compute_dtype(p.precision, device)
    except ValueError as exc:
        raise PipelineError(f"evaluate.{exc}") from exc
    vocab = load_vocab(tokens)
    model = load_model(model_dir, device, PIANO_STATE_SIZE)
    if model.cfg.vocab_size != int(vocab["vocab_size"]):
        raise PipelineError(
            f"{model_dir}: the model has {model.cfg.vocab_size} tokens, {tokens / 'vocab.json'} {vocab['vocab_size']}"
        )
    splits = [s for s in HELD_OUT if (tokens / s / "index.json").is_file()]
    if "validation" not in splits:
        raise PipelineError(f"{tokens / 'validation'}: no validation split to evaluate on")
    for split in HELD_OUT:
        if split not in splits:
            print(f"evaluate: the data has no {split} split; it is left out of {metrics}", flush=True)
    unigram, kneser_ney = fit_baselines(tokens, p.ngram_order, vocab)
    result = {}
    with autocast(device, dtype):  # bf16 where native: under 0.001 nats from float32, and faster (benchmarks/)
        for split in splits:
            result[split] = split_result(model, tokens, split, unigram, kneser_ney, vocab, p)
            result[split]["precision"] = "bfloat16" if dtype else "float32"
            if reads_texture(model.cfg):  # its NLL is conditioned on it, as the labelled NLL is on the composer
                result[split]["texture_track"] = "each piece's own"
    atomic_write_text(Path(metrics), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def split_result(  # noqa: PLR0913
    model: TransformerXL,
    tokens: Path,
    split: str,
    unigram: np.ndarray,
    kneser_ney: KneserNey,
    vocab: dict,
    p: EvaluateParams,
) -> dict:
    """One held-out split's figures: the model's scores beside the baselines, and with labels the labelled ones."""
    store = PieceStore(tokens, split)
    pieces = [store.piece(i) for i in range(len(store))]
    for key in ("composer", "seconds"):
        if key not in store.index:
            raise PipelineError(f"{tokens / split / 'index.json'}: no '{key}' column (rerun the tokenize stage)")
    scores = score_pieces(model, pieces, p.tgt_len, p.batch_size, attn_span(p))  # unconditional: no label given
    lengths = np.array([len(piece) for piece in pieces])
    corpus = np.concatenate(pieces)
    baselines = {
        "unigram": [unigram[piece[1:]] for piece in pieces],
        "kneser_ney": np.split(kneser_ney.log_probs(corpus, lengths), np.cumsum(lengths - 1)[:-1]),
    }
    result = split_metrics(scores, store, baselines, int(vocab["vocab_size"]))
    if model.cfg.n_labels:
        result.update(labelled_metrics(model, pieces, store, vocab, scores, p))
    return result
