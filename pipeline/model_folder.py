"""The model from its params, and the model folder: model.safetensors, config.json and vocab.json, which the train
stage writes to `data/trained/` and the package stage to `data/model/`; evaluate, generate and the demo read it.

The folder is replaced as a whole (written beside it, then renamed), and its weights are read as data only.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from model import TransformerXL, TransformerXLConfig
from model.weights import WeightsError, load_safetensors, save_safetensors
from pipeline.atomic import atomic_dir
from pipeline.errors import PipelineError
from pipeline.music.performance_encoding import NOTE_OFF, NOTE_ON
from pipeline.music.piano_state import PIANO_STATE_SIZE, relative_logit_bands, release_logit_pairs
from pipeline.music.texture import PIECE_TEXTURE, PIECE_TEXTURE_SIZE, TEXTURE_WINDOW_S, TRACK_BY_END, texture_track
from pipeline.params import typed
from pipeline.token_folder import PieceStore, load_vocab

# model.state_logits, what the piano state adds to the logits directly (the layers read it in any case):
#   all: every feature to every token, one weight per pair;
#   all_relative_release: all, plus each key's features to every key's NOTE_OFF, one weight per interval between them;
#   relative: each key's features to every key's NOTE_ON and NOTE_OFF, one weight per interval, and nothing else;
#   release: each key's features to its own NOTE_OFF only; none: nothing.
STATE_LOGITS = ("all", "all_relative_release", "relative", "release", "none")


def model_section(values: dict) -> dict:
    """The `model:` section of params.yaml typed: TransformerXLConfig's keys, `state_input`, `texture_input` and
    `composer_labels` (bools), and `state_logits` (one of STATE_LOGITS)."""
    values = dict(values)
    switches = {key: values.pop(key, False) for key in ("state_input", "texture_input", "composer_labels")}
    for key, value in switches.items():
        if not isinstance(value, bool):
            raise PipelineError(f"model.{key} must be true or false, not {value!r}")
    reach = values.pop("state_logits", "all")
    if reach not in STATE_LOGITS:
        raise PipelineError(f"model.state_logits must be one of {', '.join(STATE_LOGITS)}, not {reach!r}")
    return {**typed(TransformerXLConfig, values, "model"), **switches, "state_logits": reach}


def build_model(vocab: dict, model_params: dict) -> TransformerXL:
    """The model for a token vocabulary (vocab.json): vocab_size from it, the rest from the `model:` params, where
    `state_input: true` gives it the piano state as a side input (`state_logits` says what reaches the logits
    directly), `texture_input: true` its piece's texture after the state, and `composer_labels: true` a label per
    composer (vocab.json's `labels`)."""
    params = dict(model_params)
    state_input, composer_labels = params.pop("state_input", False), params.pop("composer_labels", False)
    texture = PIECE_TEXTURE_SIZE if params.pop("texture_input", False) else 0  # read after the state, with it only
    params.setdefault("side_size", PIANO_STATE_SIZE + texture if state_input else 0)  # a checkpoint's has side_size
    reach = params.pop("state_logits", "all")
    if state_input:  # a checkpoint's config already has the pairs and bands
        pairs = {"all": None, "all_relative_release": None, "release": release_logit_pairs()}.get(reach, [])
        banded = {"all_relative_release": (NOTE_OFF,), "relative": (NOTE_ON, NOTE_OFF)}.get(reach, ())
        params.setdefault("side_logit_pairs", pairs)
        params.setdefault("side_logit_bands", relative_logit_bands(banded))
    if composer_labels and "labels" not in vocab:
        raise PipelineError("model.composer_labels is on, but vocab.json lists no labels (rerun the tokenize stage)")
    params.setdefault("n_labels", len(vocab["labels"]) if composer_labels else 0)
    try:
        return TransformerXL(TransformerXLConfig(vocab_size=int(vocab["vocab_size"]), **params))
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"model params: {exc}") from exc


TABLE_WINDOWS = 36  # six minutes of each piece's texture track: a longer sample carries on with its last window
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
    """The model that `export_model` wrote, its weights read as data only; its side input must be none, or the
    `side_size` features the caller makes, with or without a piece's texture after them."""
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
    if model.cfg.side_size not in (0, side_size, side_size + PIECE_TEXTURE_SIZE if side_size else 0):
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


def reads_texture(cfg: TransformerXLConfig) -> bool:
    """Whether a model of this config reads its piece's texture track after the piano state (model.texture_input)."""
    return cfg.side_size == PIANO_STATE_SIZE + PIECE_TEXTURE_SIZE


def folder_vocab(cfg: TransformerXLConfig, tokens: Path) -> dict:
    """The vocab.json of a model folder: the token folder's, with the texture tracks for a model that reads them."""
    vocab = load_vocab(tokens)
    return {**vocab, "textures": texture_table(tokens)} if reads_texture(cfg) else vocab


def texture_table(tokens: Path) -> dict:
    """The texture tracks that sampling draws from (vocab.json's `textures`): each train piece's first TABLE_WINDOWS
    windows (as `texture_track` gives them), its stretched copies left out, with its composer label."""
    store, kept = table_pieces(tokens)
    labels = store.index.get("label", [0] * len(store))
    tracks = [texture_track(store.piece(i))[:TABLE_WINDOWS] for i in kept]
    return {
        "columns": [*TRACK_BY_END, *PIECE_TEXTURE],
        "window_s": TEXTURE_WINDOW_S,
        "label": [int(labels[i]) for i in kept],
        "track": [np.round(track, 5).tolist() for track in tracks],
    }


def table_pieces(tokens: Path) -> tuple[PieceStore, list[int]]:
    """The train split's store and the pieces `texture_table` lists, in its order: those not stretched."""
    store = PieceStore(tokens, "train")
    stretch = store.index.get("stretch", [1.0] * len(store))
    return store, [i for i in range(len(store)) if stretch[i] == 1.0]
