"""Training state is never thrown away: which changes resume a checkpoint, which set it aside, and a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import torch
import yaml
from conftest import ROOT, repeating_corpus
from test_train import ENV, TINY_MODEL, _command, params

from pipeline.model_folder import read_weights
from pipeline.train import _lr_factor, train


def _weights(folder) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return read_weights(folder)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stop_at(step_to_stop: int):  # noqa: ANN202
    def on_step(step: int) -> None:
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def test_toggling_compile_logging_and_intervals_on_a_stopped_run_resumes_it(tmp_path, monkeypatch, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    model = {**TINY_MODEL, "dropout": 0.1}  # the RNG state is part of what must carry over
    p = params(steps=12, checkpoint_interval=5)
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, model, p)

    assert train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, p, on_step=_stop_at(7))["step"] == 7
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or module)
    changed = params(steps=12, compile=True, log_interval=3, eval_interval=4, checkpoint_interval=2, eval_segments=2)
    capsys.readouterr()
    train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, changed)
    out = capsys.readouterr().out
    assert "resuming from" in out and "at step 7" in out and "last.prev.pt" not in out
    assert "compile auto → True" in out and "log_interval 1000 → 3" in out  # what changed is said
    assert len(compiled) == 1 and not (tmp_path / "b" / "last.prev.pt").exists()
    assert _same_weights(_weights(tmp_path / "model_a"), _weights(tmp_path / "model_b"))  # as if never stopped


def test_a_changed_trajectory_keeps_the_old_checkpoint_as_last_prev(tmp_path, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, params(steps=10), on_step=_stop_at(6))
    stopped = (tmp_path / "c" / "last.pt").read_bytes()
    capsys.readouterr()
    other = params(steps=10, lr=1e-3, seed=7)
    train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, other)
    out = capsys.readouterr().out
    assert out.count("kept as last.prev.pt, training afresh") == 1
    assert "lr 0.003 → 0.001" in out and "seed 1234 → 7" in out and "resuming" not in out
    assert (tmp_path / "c" / "last.prev.pt").read_bytes() == stopped  # the stopped run, whole
    train(tokens, tmp_path / "fresh", tmp_path / "model_fresh", None, TINY_MODEL, other)
    assert _same_weights(_weights(tmp_path / "model"), _weights(tmp_path / "model_fresh"))  # trained from scratch


def test_raising_steps_resumes_with_the_cosine_stretched_to_the_new_end(tmp_path, capsys, monkeypatch):
    tokens = repeating_corpus(tmp_path / "tokens")
    train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, params(steps=10))
    capsys.readouterr()
    longer = params(steps=16)
    used = []  # the learning rate of every optimiser step, as it is taken
    step = torch.optim.AdamW.step

    def record(self, *args):  # noqa: ANN001, ANN002, ANN202
        used.append(self.param_groups[0]["lr"])
        return step(self, *args)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    stopped = train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, longer, on_step=_stop_at(12))
    assert stopped["step"] == 12
    assert used == [longer.lr * _lr_factor(s, longer) for s in (10, 11)]  # the new schedule from the first step on
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "at step 10" in out and "train.steps 10 → 16: the cosine decay now ends at step 16" in out
    state = torch.load(tmp_path / "c" / "last.pt", weights_only=True)
    lr = state["optimizer"]["param_groups"][0]["lr"]
    assert lr == longer.lr * _lr_factor(12, longer) and lr != longer.lr * _lr_factor(12, params(steps=10))
    # The same settings again: the finished run is exported as it is, not trained again.
    train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, longer)
    finished = _weights(tmp_path / "model")
    capsys.readouterr()
    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    used.clear()
    assert train(tokens, tmp_path / "c", tmp_path / "model_again", None, TINY_MODEL, longer)["step"] == 16
    monkeypatch.undo()
    assert used == [] and _same_weights(finished, _weights(tmp_path / "model_again"))
    assert "at step 16 (a finished run of this code: its model is exported as it is" in capsys.readouterr().out
    # Fewer steps than were trained: that run is set aside.
    train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, params(steps=14))
    assert "was trained past train.steps (16 > 14); kept as last.prev.pt" in capsys.readouterr().out
    assert torch.load(tmp_path / "c" / "last.prev.pt", weights_only=True)["step"] == 16


def test_no_run_set_aside_is_ever_overwritten_and_the_last_one_resumes_when_it_matches_again(tmp_path, capsys):
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "c"
    good, typo, other = params(steps=12), params(steps=12, lr=3e-2), params(steps=12, seed=9)
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, good, on_step=_stop_at(6))
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, typo, on_step=_stop_at(3))  # sets the good run aside
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, good, on_step=_stop_at(8))  # the typo corrected
    out = capsys.readouterr().out
    assert "last.pt ← last.prev.pt, which matches: that run resumes, at step 6" in out and "at step 6" in out
    assert torch.load(folder / "last.prev.pt", weights_only=True)["params"]["lr"] == 3e-2  # the typo's run, kept
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, other, on_step=_stop_at(2))  # a third trajectory
    steps = {name: torch.load(folder / name, weights_only=True)["step"] for name in ("last.pt", "last.prev.pt",
                                                                                     "last.prev-1.pt")}  # fmt: skip
    assert steps == {"last.pt": 2, "last.prev.pt": 8, "last.prev-1.pt": 3}  # every run's state is still there


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint_to_the_same_weights(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    args = _command(tmp_path, tokens, "whole", 1, steps=12)
    subprocess.run(args, cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)
    killed = _command(tmp_path, tokens, "killed", 1, steps=12)
    settings = (tmp_path / "killed.yaml").read_text().replace("checkpoint_interval: 1000", "checkpoint_interval: 4")
    (tmp_path / "killed.yaml").write_text(settings)
    run = subprocess.Popen(killed, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in run.stdout:
        if line.startswith("step 6/"):  # past the checkpoint at step 4, before the one at 8
            run.kill()  # SIGKILL: no handler runs, nothing is saved
            break
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "killed" / "ckpt" / "last.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "killed" / "model").exists()
    resumed = subprocess.run(killed, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "at step 4" in resumed.stdout, resumed.stdout + resumed.stderr
    assert _same_weights(_weights(tmp_path / "whole" / "model"), _weights(tmp_path / "killed" / "model"))


def test_the_cpu_profile_applies_as_train_profile_says(tmp_path):
    from model.device import compiles
    from pipeline.errors import PipelineError
    from pipeline.training.cpu_profile import applies

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert applies("auto", cpu) and not applies("auto", cuda) and applies("cpu", cuda) and not applies("full", cpu)
    assert compiles("auto", cuda) and not compiles("auto", cpu) and compiles(True, cpu) and not compiles(False, cuda)
    with pytest.raises(PipelineError, match="must be .*not 'laptop'"):
        applies("laptop", cpu)
    with pytest.raises(ValueError, match="must be true, false or auto, not 'maybe'"):
        compiles("maybe", cpu)
    with pytest.raises(PipelineError, match="train.compile must be true, false or auto, not 'maybe'"):
        train(repeating_corpus(tmp_path / "t0"), tmp_path / "c0", tmp_path / "m0", None, TINY_MODEL,
              params(steps=1, compile="maybe"))  # fmt: skip
    tokens = repeating_corpus(tmp_path / "tokens")
    capped = params(steps=2, cpu_limits={"n_layer": 1})
    full = params(steps=2, cpu_limits={"n_layer": 1}, profile="full")
    train(tokens, tmp_path / "a", tmp_path / "capped", tmp_path / "live_a", TINY_MODEL, capped)
    train(tokens, tmp_path / "b", tmp_path / "full", tmp_path / "live_b", TINY_MODEL, full)
    layers = [json.loads((tmp_path / m / "config.json").read_text())["n_layer"] for m in ("capped", "full")]
    assert layers == [1, TINY_MODEL["n_layer"]]
    recorded = [yaml.safe_load((tmp_path / live / "params.yaml").read_text()) for live in ("live_a", "live_b")]
    assert [r["profile"] for r in recorded] == ["cpu", "full"] and [r["model"]["n_layer"] for r in recorded] == layers


def test_a_run_with_composer_labels_and_label_dropout_resumes_exactly(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    model = {**TINY_MODEL, "composer_labels": True}
    p = params(steps=12, checkpoint_interval=5, label_dropout=0.5)
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, model, p)
    train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, p, on_step=_stop_at(7))
    train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, p)
    a, b = _weights(tmp_path / "model_a"), _weights(tmp_path / "model_b")
    assert _same_weights(a, b) and a["label_emb.weight"].shape == (3, 32)  # two composers and label 0
    assert a["label_emb.weight"][1:].abs().sum() > 0 and not a["label_emb.weight"][0].any()
    train(tokens, tmp_path / "c", tmp_path / "model_c", None, model, params(steps=12, label_dropout=0.0))
    assert not _same_weights(a, _weights(tmp_path / "model_c"))  # the dropout did take part


def test_another_label_dropout_is_another_trajectory(tmp_path, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    model = {**TINY_MODEL, "composer_labels": True}
    train(tokens, tmp_path / "c", tmp_path / "m", None, model, params(steps=8, label_dropout=0.1), on_step=_stop_at(4))
    capsys.readouterr()
    train(tokens, tmp_path / "c", tmp_path / "m", None, model, params(steps=8, label_dropout=0.3))
    out = capsys.readouterr().out
    assert "label_dropout 0.1 → 0.3" in out and "training afresh" in out and "resuming" not in out


def test_a_metrics_summary_cut_short_by_a_kill_does_not_stop_the_resume(tmp_path, capsys):
    pytest.importorskip("dvclive")
    from pipeline.training.live import open_live

    live_dir = tmp_path / "live"
    live_dir.mkdir()
    (live_dir / "metrics.json").write_text("")  # SIGKILL while DVCLive rewrote it in place
    live = open_live(live_dir, resume_step=4)
    assert live is not None and "was cut short" in capsys.readouterr().out
    live.log_metric("train/loss", 1.5)
    live.next_step()
    assert json.loads((live_dir / "metrics.json").read_text())["train"]["loss"] == 1.5
    live.end()
