"""The long samples: their full length always, seeds after every composer group's, and the rule's releases counted."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from model import TransformerXL, TransformerXLConfig
from pipeline.generate import GenerateParams, generate
from pipeline.model_folder import export_model
from pipeline.music.performance_encoding import PIECE_END, TIME_SHIFT, VOCAB_SIZE, vocab


def params(**overrides) -> GenerateParams:  # noqa: ANN003
    base = GenerateParams(samples=2, seconds=3.0, device="cpu", precision="float32", composers=[], wav_samples=0)
    return replace(base, **overrides)


def tiny(**extra) -> TransformerXL:  # noqa: ANN003
    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=1, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=8,
                              mem_len=8, **extra)  # fmt: skip
    return TransformerXL(cfg)


def test_long_samples_run_their_full_length_even_where_the_others_may_end(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.out_bias[PIECE_END] = 4.0  # about one token in seven would end the piece
    export_model(model, tmp_path / "model")
    p = params(samples=1, stop_at_piece_end=True, long_samples=1, long_seconds=4.0, max_note_s=0.0)
    summary = generate(tmp_path / "model", tmp_path / "out", p)
    assert summary["samples"][0]["ended_by"] == "piece_end"
    assert summary["long"][0]["ended_by"] == "seconds" and summary["long"][0]["seconds"] == pytest.approx(4.0, abs=0.01)


def test_long_seeds_follow_every_composer_groups_seeds(tmp_path):
    model = tiny(n_labels=2)
    labels = [{"label": 1, "composer": "Anna Low"}, {"label": 2, "composer": "Ben High"}]
    export_model(model, tmp_path / "model", {**vocab(), "labels": labels})
    p = params(samples=2, seconds=1.0, composers=["Anna Low", "Ben High"], long_samples=1, long_seconds=1.0,
               max_note_s=0.0)  # fmt: skip
    summary = generate(tmp_path / "model", tmp_path / "out", p)
    assert [s["seed"] for s in summary["samples"]] == [1234, 1235, 1236, 1237]
    assert [s["seed"] for s in summary["long"]] == [1238]


def test_long_samples_count_the_rules_releases(tmp_path):
    from pipeline.music.piano_state import PIANO_STATE_SIZE

    model = tiny(side_size=PIANO_STATE_SIZE)  # strikes key 60 or waits, never releases it: the rule must
    with torch.no_grad():
        model.out_bias[:] = -30.0
        model.out_bias[60] = model.out_bias[TIME_SHIFT + 99] = 0.0
        model.side_logits.weight[60, 60] = -60.0
    export_model(model, tmp_path / "model")
    p = params(samples=1, seconds=1.0, long_samples=1, long_seconds=12.0, max_note_s=3.0)
    summary = generate(tmp_path / "model", tmp_path / "out", p)
    assert summary["long"][0]["rule_releases"] >= 2
    assert json.loads((tmp_path / "out" / "samples.json").read_text())["long"] == summary["long"]
