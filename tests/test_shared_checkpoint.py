"""The finished run's checkpoint, shared through DVC (data/shared/last.pt), beside the working one
(data/checkpoints/last.pt): a clone trains on from the shared one, and a stopped run's working one is never lost."""

from __future__ import annotations

import shutil

import torch
from conftest import repeating_corpus
from test_resume import _same_weights, _stop_at, _weights
from test_train import TINY_MODEL, params

from pipeline.train import train


def _step(path) -> int:  # noqa: ANN001
    return torch.load(path, weights_only=True)["step"]


def test_a_finished_run_shares_its_checkpoint_and_a_clone_trains_on_from_it(tmp_path, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, TINY_MODEL, params(steps=10), shared=tmp_path / "s")
    assert (tmp_path / "s" / "last.pt").read_bytes() == (tmp_path / "a" / "last.pt").read_bytes()
    train(tokens, tmp_path / "b", tmp_path / "model_b", None, TINY_MODEL, params(steps=10), on_step=_stop_at(4),
          shared=tmp_path / "s2")  # fmt: skip
    assert not (tmp_path / "s2").exists()  # a stopped run shares nothing: only finished runs are pushed
    # A clone: the shared checkpoint pulled, no working one. A longer run trains on from step 10.
    shutil.copytree(tmp_path / "s", tmp_path / "pulled")
    capsys.readouterr()
    train(tokens, tmp_path / "c", tmp_path / "model_c", None, TINY_MODEL, params(steps=16), shared=tmp_path / "pulled")
    out = capsys.readouterr().out
    assert "the checkpoint of the finished run, at step 10" in out and "at step 10" in out.split("resuming from")[1]
    assert _step(tmp_path / "pulled" / "last.pt") == 16 and _step(tmp_path / "c" / "last.pt") == 16
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, TINY_MODEL, params(steps=16))  # where it was trained
    assert _same_weights(_weights(tmp_path / "model_a"), _weights(tmp_path / "model_c"))


def test_a_stopped_run_further_along_than_the_shared_checkpoint_resumes_where_it_stopped(tmp_path, capsys):
    tokens, shared = repeating_corpus(tmp_path / "tokens"), tmp_path / "s"
    train(tokens, tmp_path / "w", tmp_path / "model", None, TINY_MODEL, params(steps=10), shared=shared)
    finished = (shared / "last.pt").read_bytes()
    train(tokens, tmp_path / "w", tmp_path / "model", None, TINY_MODEL, params(steps=16), on_step=_stop_at(13),
          shared=shared)  # fmt: skip
    assert (shared / "last.pt").read_bytes() == finished and _step(tmp_path / "w" / "last.pt") == 13
    capsys.readouterr()
    train(tokens, tmp_path / "w", tmp_path / "model", None, TINY_MODEL, params(steps=16), shared=shared)
    out = capsys.readouterr().out
    assert "at step 13" in out and "the checkpoint of the finished run" not in out
    for steps in (10, 16):  # the same two runs, the second never stopped
        train(tokens, tmp_path / "whole", tmp_path / "model_whole", None, TINY_MODEL, params(steps=steps))
    assert _same_weights(_weights(tmp_path / "model"), _weights(tmp_path / "model_whole"))


def test_a_working_checkpoint_of_another_trajectory_is_set_aside_for_the_shared_one(tmp_path, capsys):
    tokens, shared, working = repeating_corpus(tmp_path / "tokens"), tmp_path / "s", tmp_path / "w"
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, TINY_MODEL, params(steps=10), shared=shared)
    train(tokens, working, tmp_path / "model", None, TINY_MODEL, params(steps=10, lr=1e-3), on_step=_stop_at(4))
    other = (working / "last.pt").read_bytes()
    capsys.readouterr()
    train(tokens, working, tmp_path / "model", None, TINY_MODEL, params(steps=10), shared=shared)
    out = capsys.readouterr().out
    assert "the checkpoint of the finished run, at step 10" in out
    assert "a finished run of this code: its model is exported" in out
    assert (working / "last.prev.pt").read_bytes() == other  # the other run, whole
    assert _same_weights(_weights(tmp_path / "model_a"), _weights(tmp_path / "model"))
    # A shared checkpoint of another trajectory is not adopted: that run trains afresh, then shares its own.
    capsys.readouterr()
    fresh = tmp_path / "fresh"
    train(tokens, fresh, tmp_path / "model_lr", None, TINY_MODEL, params(steps=10, lr=1e-3), shared=shared)
    out = capsys.readouterr().out
    assert "the checkpoint of the finished run" not in out and "resuming" not in out
    assert (shared / "last.pt").read_bytes() == (fresh / "last.pt").read_bytes()


def test_a_stopped_run_set_aside_further_along_than_the_shared_checkpoint_is_still_the_one_resumed(tmp_path, capsys):
    tokens, shared, working = repeating_corpus(tmp_path / "tokens"), tmp_path / "s", tmp_path / "w"
    train(tokens, working, tmp_path / "model", None, TINY_MODEL, params(steps=10), shared=shared)
    train(tokens, working, tmp_path / "model", None, TINY_MODEL, params(steps=16), on_step=_stop_at(13),
          shared=shared)  # fmt: skip
    other = params(steps=16, lr=1e-3)  # another experiment, which sets the stopped run aside as last.prev.pt
    train(tokens, working, tmp_path / "model", None, TINY_MODEL, other, on_step=_stop_at(4), shared=shared)
    assert _step(working / "last.prev.pt") == 13 and _step(shared / "last.pt") == 10
    capsys.readouterr()
    train(tokens, working, tmp_path / "model", None, TINY_MODEL, params(steps=16), shared=shared)
    out = capsys.readouterr().out
    assert "← last.prev.pt, which matches" in out and "at step 13" in out
    assert "the checkpoint of the finished run" not in out
