"""Shared fixtures: tiny MIDI files written with mido, MAESTRO-shaped folders, and the real data's location."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from pipeline.metadata import COLUMNS
from pipeline.music.performance_encoding import PIECE_END, PIECE_START, vocab

if TYPE_CHECKING:  # mido is imported where it is used, so GPU-only test runs need only torch and numpy
    import mido

    from model import TransformerXL

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MAESTRO_ASAP = SHARED / "maestro-asap"
EDGE_CASES = SHARED / "midi-edge-cases"
METADATA_COLUMNS = list(COLUMNS)


def require(path: Path) -> Path:
    """Skip the calling test, saying what is missing, when the shared real data is not beside the project."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared data folder sits beside the project in development)")
    return path


def write_midi(path: Path, tracks: list[list[tuple[int, mido.Message | mido.MetaMessage]]], tpq: int = 480) -> Path:
    """Write a type-1 MIDI file; each track is a list of (absolute tick, message)."""
    import mido

    midi = mido.MidiFile(type=1, ticks_per_beat=tpq)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(path)
    return path


def note(tick_on: int, tick_off: int, pitch: int, velocity: int = 64, channel: int = 0) -> list[tuple]:
    """A note as a note_on and a note_off message."""
    import mido

    return [
        (tick_on, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)),
        (tick_off, mido.Message("note_off", note=pitch, velocity=0, channel=channel)),
    ]


def pedal(tick: int, value: int, control: int = 64, channel: int = 0) -> tuple:
    """A pedal (control change) message."""
    import mido

    return (tick, mido.Message("control_change", control=control, value=value, channel=channel))


def tempo(tick: int, mspq: int) -> tuple:
    """A set_tempo meta message."""
    import mido

    return (tick, mido.MetaMessage("set_tempo", tempo=mspq))


def write_metadata(folder: Path, rows: list[dict], columns: list[str] = METADATA_COLUMNS) -> Path:
    """Write a MAESTRO-style CSV with the given rows (missing keys get MAESTRO-like defaults)."""
    defaults = {
        "canonical_composer": "Test",
        "canonical_title": "Piece",
        "split": "train",
        "year": 2018,
        "audio_filename": "",
        "duration": 1.0,
    }
    path = folder / "maestro-v3.0.0.csv"
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**defaults, **row})
    return path


@pytest.fixture
def tiny_maestro(tmp_path: Path) -> Path:
    """A MAESTRO-shaped folder with three short synthetic pieces, one of them a `.midi` file."""
    folder = tmp_path / "maestro"
    write_midi(folder / "2018" / "a.midi", [[tempo(0, 500_000)], note(0, 480, 60) + note(480, 960, 64)])
    write_midi(folder / "2018" / "b.mid", [[tempo(0, 500_000)], note(0, 960, 67, 90)])
    write_midi(folder / "2019" / "c.midi", [[tempo(0, 600_000)], note(240, 480, 72) + [pedal(0, 127), pedal(960, 0)]])
    write_metadata(
        folder,
        [
            {"midi_filename": "2018/a.midi", "split": "train", "duration": 1.0},
            {"midi_filename": "2018/b.mid", "split": "validation", "duration": 1.0, "year": ""},
            {"midi_filename": "2019/c.midi", "split": "test", "duration": 1.2},
        ],
    )
    return folder


@pytest.fixture(scope="session")
def real_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parse stage's tables for all of maestro-asap, parsed where the files lie."""
    from pipeline.parse import parse

    out = tmp_path_factory.mktemp("real") / "events"
    report = parse(require(MAESTRO_ASAP), out, out.parent / "metrics.json", workers=0, progress=False)
    assert report["failed"] == 0, report["failures"][:5]
    return out


def write_tokens(folder: Path, pieces: dict[str, list[np.ndarray]], composers: tuple[str, ...] = ("A", "B")) -> Path:
    """A token folder as the tokenize stage writes it: vocab.json, and per split one shard and index.json (composers
    taken in turn from `composers`, each its own label, a second of music per ten tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(composers))
    counts = {name: {split: sum(composers[i % len(composers)] == name for i in range(len(arrays)))
                     for split, arrays in pieces.items()} for name in names}  # fmt: skip
    labels = [{"label": i, "composer": name, "pieces": counts[name]} for i, name in enumerate(names, 1)]
    (folder / "vocab.json").write_text(json.dumps({**vocab(), "labels": labels}))
    for split, arrays in pieces.items():
        (folder / split).mkdir()
        tokens = [np.concatenate([[PIECE_START], a, [PIECE_END]]).astype(np.uint16) for a in arrays]
        np.save(folder / split / "shard-00000.npy", np.concatenate(tokens))
        lengths = [len(t) for t in tokens]
        starts = np.cumsum([0] + lengths[:-1]).tolist()
        index = {
            "piece_id": list(range(len(tokens))),
            "stretch": [1.0] * len(tokens),
            "shard": [0] * len(tokens),
            "start": starts,
            "length": lengths,
            "composer": [composers[i % len(composers)] for i in range(len(tokens))],
            "label": [names.index(composers[i % len(composers)]) + 1 for i in range(len(tokens))],
            "seconds": [n / 10 for n in lengths],
        }
        (folder / split / "index.json").write_text(json.dumps(index))
    return folder


def repeating_corpus(folder: Path, shift: int = 0) -> Path:
    """Pieces that repeat one short phrase (note-on, shift, note-off): easy to learn, so loss must fall fast."""
    phrase = np.array([60, 300, 188, 64, 300, 192, 67, 300, 195]) + shift * np.array([1, 0, 1] * 3)
    pieces = [np.tile(phrase, 12) for _ in range(24)]
    return write_tokens(folder, {"train": pieces[:20], "validation": pieces[20:]})


def tiny(**overrides) -> TransformerXL:  # noqa: ANN003
    """A small seeded float64 Transformer-XL in eval mode with non-zero global biases; `overrides` change its config."""
    import torch

    from model import TransformerXL, TransformerXLConfig

    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_layer=3, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=8, mem_len=8)
    model = TransformerXL(TransformerXLConfig(**{**cfg, **overrides})).double().eval()
    with torch.no_grad():  # non-zero global biases (and side weights), so that they take part in what is compared
        model.r_w_bias.normal_(0, 0.5)
        model.r_r_bias.normal_(0, 0.5)
        if model.side_net is not None:
            model.side_net.weight.normal_(0, 0.5)
            model.side_logits.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose tiny pipeline ran on synthetic pieces and was committed, made once for every test that starts
    from such a run (each works on a copy: `ran`)."""
    from test_dvc_pipeline import commit, copy_project, sh, synthetic_pieces, tiny_run

    folder = tmp_path_factory.mktemp("synthetic-run")
    project = copy_project(folder / "project")
    tiny_run(project, folder, synthetic_pieces(folder))
    sh(["dvc", "repro"], project)
    commit(project, "pipeline run")
    return project


@pytest.fixture
def ran(synthetic_run: Path, tmp_path: Path) -> Path:
    """A copy of `synthetic_run`, git history, DVC cache, outputs and working checkpoint included."""
    import shutil

    return Path(shutil.copytree(synthetic_run, tmp_path / "project", symlinks=True))
