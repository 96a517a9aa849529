"""Composer conditioning end to end on a tiny synthetic corpus: two "composers" who play in different registers. A
tiny model trained with their labels names them, and asked for one, plays in its register."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, write_tokens
from test_train import TINY_MODEL, params

from pipeline.errors import PipelineError
from pipeline.evaluate import attn_span, evaluate, score_pieces
from pipeline.generate import generate
from pipeline.model_folder import load_model
from pipeline.music.performance_encoding import NOTE_OFF, TIME_SHIFT, decode
from pipeline.params import EvaluateParams, GenerateParams
from pipeline.token_folder import PieceStore
from pipeline.train import train

REGISTERS = {"Anna Low": (40, 43, 47), "Ben High": (76, 79, 83)}  # the pitches each plays


def register_piece(rng: np.random.Generator, pitches: tuple[int, ...], notes: int = 24) -> np.ndarray:
    """Notes one after another, drawn from `pitches`: note-on, a quarter-second shift, note-off."""
    pitches = rng.choice(pitches, notes)
    return np.stack([pitches, np.full(notes, TIME_SHIFT + 24), NOTE_OFF + pitches], axis=1).ravel()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Token splits whose pieces alternate between the two composers, and a tiny model trained on their labels."""
    folder = tmp_path_factory.mktemp("composers")
    rng = np.random.default_rng(0)
    ranges = list(REGISTERS.values())
    split = {
        name: [register_piece(rng, ranges[i % 2]) for i in range(n)] for name, n in (("train", 40), ("validation", 8))
    }
    tokens = write_tokens(folder / "tokens", split, composers=tuple(REGISTERS))
    model = {**TINY_MODEL, "composer_labels": True, "tgt_len": 32, "mem_len": 32}
    train(tokens, folder / "ckpt", folder / "model", None, model, params(steps=600, transpose=0, label_dropout=0.2))
    return tokens, folder / "model"


def mean_pitch(tokens: np.ndarray) -> float:
    return float(decode(tokens)["pitch"].mean())


def test_the_model_names_each_pieces_composer_and_gains_from_the_label(trained, tmp_path):
    tokens, model = trained
    p = EvaluateParams(
        tgt_len=32, mem_len=32, batch_size=4, ngram_order=2, device="cpu", identify_tokens=12, precision="float32"
    )
    result = evaluate(tokens, model, tmp_path / "eval.json", p)["validation"]
    named = result["identification"]
    assert named["labels"] == list(REGISTERS) and named["pieces"] == 8 and named["majority"] == 0.5
    assert named["top1"] == 1.0 > named["majority"] and named["confusion"] == [[4, 0], [0, 4]]
    # Knowing the composer tells the first note's register (ln 6 → ln 3 nats); the later notes show it anyway.
    assert result["nll"] > result["nll_labelled"] and result["label_gain"] > 0.005
    assert abs(result["label_gain"] - (result["nll"] - result["nll_labelled"])) <= 2e-5
    assert set(result["by_composer_labelled"]) == set(REGISTERS) == set(result["by_composer"])
    # `nll` is the unconditional NLL, as for a model without labels: every piece scored with no composer given.
    store = PieceStore(tokens, "validation")
    pieces = [store.piece(i) for i in range(len(store))]
    free = score_pieces(load_model(model), pieces, p.tgt_len, p.batch_size, attn_span(p), [0] * len(pieces))
    assert abs(result["nll"] - float(np.concatenate(free.nll).mean())) <= 1e-5


def test_asked_for_a_composer_the_model_plays_in_its_register(trained, tmp_path):
    tokens, model = trained
    base = GenerateParams(samples=4, seconds=3.0, device="cpu", precision="float32", max_note_s=0.0, wav_samples=0)
    pitches = {}
    for composer in ("low", "Ben High"):  # a surname or a full name, in any case
        summary = generate(model, tmp_path / composer, GenerateParams(**{**vars(base), "composers": [composer]}), None,
                           tokens)  # fmt: skip
        assert {s["composer"] for s in summary["samples"]} == {"Anna Low" if composer == "low" else composer}
        midi = [(tmp_path / composer / s["midi"]) for s in summary["samples"]]
        pitches[composer] = np.mean([note.note for path in midi for note in _notes(path)])
    assert 40 <= pitches["low"] <= 47 and 76 <= pitches["Ben High"] <= 83
    guided_params = GenerateParams(**{**vars(base), "composers": ["low"], "guidance": 3.0})
    guided = generate(model, tmp_path / "guided", guided_params, None, tokens)
    assert np.mean([n.note for s in guided["samples"] for n in _notes(tmp_path / "guided" / s["midi"])]) <= 47
    # The stage passes the guidance on: the same seeds guided play other music than plain conditioning, and a
    # guidance of 0 ignores the label, as no composer does.
    music = {}
    for name, composers, guidance in (("plain", ["low"], 1.0), ("guided", ["low"], 3.0), ("zero", ["low"], 0.0),
                                      ("none", ["none"], 1.0)):  # fmt: skip
        p = GenerateParams(**{**vars(base), "composers": composers, "guidance": guidance})
        made = generate(model, tmp_path / name, p, None, tokens)["samples"]
        music[name] = [(tmp_path / name / s["midi"]).read_bytes() for s in made]
    assert music["guided"] != music["plain"] and music["zero"] == music["none"]


def _notes(path):  # noqa: ANN001, ANN202
    import mido

    return [m for m in mido.MidiFile(path) if m.type == "note_on" and m.velocity > 0]


def test_an_unknown_composer_is_a_one_line_error_that_lists_the_known_ones(trained, tmp_path):
    tokens, model = trained
    with pytest.raises(PipelineError, match="unknown composer 'Mozart': the model knows Anna Low, Ben High"):
        generate(model, tmp_path / "x", GenerateParams(composers=["Mozart"], device="cpu"), None, tokens)
    args = [sys.executable, "-m", "pipeline", "generate", "--model", str(model), "--tokens", str(tokens),
            "--composer", "Mozart", "--out", str(tmp_path / "y"), "--params", str(tmp_path / "none.yaml")]  # fmt: skip
    (tmp_path / "none.yaml").write_text("generate:\n  device: cpu\n")
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "unknown composer 'Mozart'" in result.stderr
    assert not (tmp_path / "y").exists()
