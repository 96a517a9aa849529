"""Whether a model's next-token probabilities add up to what real music does, teacher-forced on held-out pieces: per
kind of token, and for releases by how long the key has sounded. The peer of every figure is the count of the same
events in the same tokens, so a ratio of 1 is a calibrated model; a ratio below 1 in a held-time range means the model
releases keys held that long too late, and its own samples hold notes too long.

Usage: python benchmarks/calibration.py MODEL_FOLDER [--tokens data/tokens] [--split validation] [--pieces 30]
       [--length 2048]
Each piece is scored from its start with an empty memory, in segments of the model's tgt_len with its memory, with
its composer label for a model that has labels; the first --length tokens of each of the first --pieces pieces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.music.performance_encoding import NOTE_OFF, NOTE_ON, PIECE_START, TIME_SHIFT, VELOCITY  # noqa: E402

KINDS = {"NOTE_ON": (NOTE_ON, NOTE_OFF), "NOTE_OFF": (NOTE_OFF, TIME_SHIFT), "TIME_SHIFT": (TIME_SHIFT, VELOCITY),
         "VELOCITY": (VELOCITY, PIECE_START)}  # fmt: skip
HELD_EDGES_S = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, np.inf)


def piece_probabilities(model: object, tokens: np.ndarray, state: np.ndarray, label: int) -> np.ndarray:
    """The model's next-token probabilities after each token but the last [len - 1, vocab], from an empty memory,
    given the piano state after each of those tokens."""
    import torch

    inputs, side = torch.from_numpy(tokens[:-1])[None], torch.from_numpy(state)[None]
    labels = torch.full_like(inputs, label) if model.cfg.n_labels else None
    mems, out, step = None, [], model.cfg.tgt_len
    with torch.no_grad():
        for start in range(0, inputs.size(1), step):
            part = slice(start, start + step)
            logits, _, mems = model(inputs[:, part], mems=mems, side=side[:, part],
                                    labels=None if labels is None else labels[:, part])  # fmt: skip
            out.append(torch.softmax(logits[0].float(), dim=-1).numpy())
    return np.concatenate(out)


def tally(probs: np.ndarray, tokens: np.ndarray, state: np.ndarray, totals: dict) -> None:
    """Add one piece's predicted and actual counts to `totals`: per kind, and releases per held-time bucket."""
    from pipeline.music.performance_encoding import STEP_S
    from pipeline.music.piano_state import HELD_TABLE, PIECE_FEATURES, PITCHES

    following = tokens[1:]
    for kind, (low, high) in KINDS.items():
        totals["kinds"][kind] += [probs[:, low:high].sum(), np.sum((following >= low) & (following < high))]
    sounding = state[:, :PITCHES] > 0
    held_s = np.searchsorted(HELD_TABLE, state[:, PITCHES:PIECE_FEATURES]) * STEP_S  # an increasing table: exact steps
    bucket = np.digitize(held_s, HELD_EDGES_S[1:-1])
    released = np.zeros_like(sounding)
    rows = np.flatnonzero((following >= NOTE_OFF) & (following < NOTE_OFF + PITCHES))
    released[rows, following[rows] - NOTE_OFF] = True
    for b in range(len(HELD_EDGES_S) - 1):
        keys = sounding & (bucket == b)
        totals["held"][b] += [keys.sum(), probs[:, NOTE_OFF : NOTE_OFF + PITCHES][keys].sum(), released[keys].sum()]


def measure(model_folder: Path, tokens: Path, split: str, pieces: int, length: int) -> dict:
    """Predicted and actual counts over the split's first `pieces` pieces, `length` tokens each."""
    import torch

    from pipeline.model_folder import load_model, reads_texture
    from pipeline.music.piano_state import PIANO_STATE_SIZE, piano_state
    from pipeline.music.piano_state_torch import PianoState
    from pipeline.music.texture import texture_track
    from pipeline.token_folder import PieceStore

    model = load_model(model_folder, "cpu", PIANO_STATE_SIZE).eval()
    store = PieceStore(tokens, split)
    totals = {"kinds": {k: np.zeros(2) for k in KINDS}, "held": np.zeros((len(HELD_EDGES_S) - 1, 3))}
    for i in range(min(pieces, len(store))):
        piece = store.piece(i)[: length + 1].astype(np.int64)
        state = piano_state(piece[:-1])  # after each scored token: the model's input, and what sounds
        side = state  # a model that reads a texture reads the whole piece's track, as the evaluate stage gives it
        if reads_texture(model.cfg):
            track = torch.from_numpy(texture_track(store.piece(i))[None])
            side = PianoState(1, "cpu", track)(torch.from_numpy(piece[None, :-1]))[0].numpy()
        tally(piece_probabilities(model, piece, side, int(store.index["label"][i])), piece, state, totals)
    return totals


def table(totals: dict) -> list[str]:
    """Two Markdown tables: token kinds, and releases by held time."""
    lines = ["| kind | predicted | actual | ratio |", "| --- | ---: | ---: | ---: |"]
    for kind, (predicted, actual) in totals["kinds"].items():
        lines.append(f"| {kind} | {predicted:.1f} | {actual:.0f} | {predicted / max(actual, 1):.3f} |")
    lines += [
        "",
        "| held (s) | sounding keys | predicted releases | actual | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for b, (keys, predicted, actual) in enumerate(totals["held"]):
        span = f"{HELD_EDGES_S[b]:g}-{HELD_EDGES_S[b + 1]:g}"
        lines.append(f"| {span} | {keys:.0f} | {predicted:.1f} | {actual:.0f} | {predicted / max(actual, 1):.3f} |")
    return lines


def main() -> None:
    """Score the pieces and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model folder (config.json and weights)")
    parser.add_argument("--tokens", type=Path, default=ROOT / "data" / "tokens")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--pieces", type=int, default=30)
    parser.add_argument("--length", type=int, default=2048, help="tokens scored per piece, from its start")
    args = parser.parse_args()
    print("\n".join(table(measure(args.model, args.tokens, args.split, args.pieces, args.length))))


if __name__ == "__main__":
    main()
