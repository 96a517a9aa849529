"""The train stage on tiny token folders: learning, exact resume after SIGTERM, DDP under torchrun, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from pipeline.errors import PipelineError
from pipeline.tokenizer import PIECE_END, PIECE_START, vocab
from pipeline.train import TrainParams, train

TINY_MODEL = dict(n_layer=2, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=16, mem_len=16)


def write_tokens(folder: Path, pieces: dict[str, list[np.ndarray]]) -> Path:
    """A token folder as the tokenize stage writes it: vocab.json, and per split one shard and index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab()))
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
        }
        (folder / split / "index.json").write_text(json.dumps(index))
    return folder


def repeating_corpus(folder: Path, shift: int = 0) -> Path:
    """Pieces that repeat one short phrase (note-on, shift, note-off): easy to learn, so loss must fall fast."""
    phrase = np.array([60, 300, 188, 64, 300, 192, 67, 300, 195]) + shift * np.array([1, 0, 1] * 3)
    pieces = [np.tile(phrase, 12) for _ in range(24)]
    return write_tokens(folder, {"train": pieces[:20], "validation": pieces[20:]})


def params(**overrides) -> TrainParams:  # noqa: ANN003
    base = dict(
        steps=60,
        batch_size=4,
        lr=3e-3,
        warmup_steps=5,
        eval_interval=30,
        eval_segments=4,
        eval_batch_size=2,
        checkpoint_interval=1000,
        log_interval=1000,
        transpose=2,
        device="cpu",
    )
    return TrainParams(**{**base, **overrides})


def test_a_tiny_model_learns_a_repeating_corpus(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    result = train(tokens, tmp_path / "ckpt", tmp_path / "model", None, TINY_MODEL, params(steps=250, transpose=0))
    assert result["train/loss"] < 0.1 and result["val/nll"] < 0.1  # from ln(390) = 5.97 at the start
    state = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert state["word_emb.weight"].shape == (390, 32)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["vocab_size"] == 390


def test_a_run_stopped_by_sigterm_resumes_to_the_same_parameters(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    model = {**TINY_MODEL, "dropout": 0.1}  # dropout makes the RNG state part of what must be restored
    p = params(steps=12, grad_accum=2, checkpoint_interval=5)
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, model, p)

    def stop_at_7(step: int) -> None:
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, p, on_step=stop_at_7)
    assert first == {"interrupted": True, "step": 7}
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 7
    assert not (tmp_path / "model_b").exists()
    train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, p)
    a = torch.load(tmp_path / "model_a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "model_b" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run_cli(tmp_path: Path, tokens: Path, name: str, processes: int) -> list[float]:
    settings = {
        "model": TINY_MODEL,
        "train": {**params(steps=8, batch_size=4, log_interval=1, eval_interval=100, transpose=0).__dict__},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(settings))
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    args = [
        *launch,
        "-m",
        "pipeline",
        "train",
        "--params",
        str(tmp_path / f"{name}.yaml"),
        "--tokens",
        str(tokens),
        "--checkpoints",
        str(tmp_path / name / "ckpt"),
        "--out",
        str(tmp_path / name / "model"),
        "--live",
        str(tmp_path / name / "live"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / name / "live" / "plots" / "metrics" / "train" / "loss.tsv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]


def test_two_process_ddp_follows_the_single_process_loss_curve(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    single = _run_cli(tmp_path, tokens, "single", 1)
    ddp = _run_cli(tmp_path, tokens, "ddp", 2)
    assert len(single) == len(ddp) == 8
    np.testing.assert_allclose(ddp, single, rtol=1e-4)


def test_bad_inputs_are_clear_errors(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    with pytest.raises(PipelineError, match="n_head × d_head must equal d_model"):
        train(tokens, tmp_path / "c", tmp_path / "m", None, {**TINY_MODEL, "d_head": 4}, params(steps=1))

    train(tokens, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))
    other = repeating_corpus(tmp_path / "other", shift=2)
    vocab_json = json.loads((other / "vocab.json").read_text())
    (other / "vocab.json").write_text(json.dumps({**vocab_json, "vocab_size": 400}))
    with pytest.raises(PipelineError, match="checkpoint vocabulary has 390 tokens, the tokens' vocab.json 400"):
        train(other, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))

    (tokens / "train" / "shard-00000.npy").unlink()
    with pytest.raises(PipelineError, match="shard-00000.npy: shard listed in .* is missing"):
        train(tokens, tmp_path / "d", tmp_path / "m", None, TINY_MODEL, params(steps=1))
