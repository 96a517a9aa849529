"""A checkpoint resumes with the other AdamW: one that plain AdamW wrote (`fused` unset, as CPU runs wrote them)
resumes with fused AdamW (as CUDA runs take it), and the reverse, the optimiser state loaded as this run's optimiser
would have made it. Fused AdamW runs on a CPU too, and stands in for CUDA's here; tests/test_gpu.py resumes on the GPU
itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import repeating_corpus
from test_resume import _stop_at, _weights
from test_train import TINY_MODEL, params

from pipeline.train import _restore, _setup, train
from pipeline.training.checkpoints import read_checkpoint

CODE = {"pipeline/train.py": "0" * 64}  # a fixed code identity: the checkpoint resumes whatever is edited meanwhile
P, STOP = params(steps=6, transpose=0), 3


def _adamw(monkeypatch: pytest.MonkeyPatch, fused: bool) -> None:
    """Have the train stage build fused AdamW (FUSED) or the plain one, whatever it picks for this device."""

    class AdamW(torch.optim.AdamW):
        def __init__(self, groups: list, **settings: object) -> None:
            super().__init__(groups, **{**settings, "fused": fused or None})

    monkeypatch.setattr(torch.optim, "AdamW", AdamW)


def _stopped_run(tokens: Path, folder: Path, fused: bool, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The checkpoint of a run stopped at step STOP with fused AdamW or the plain one."""
    with monkeypatch.context() as patch:
        _adamw(patch, fused)
        result = train(tokens, folder, folder / "model", None, TINY_MODEL, P, on_step=_stop_at(STOP), code=CODE)
    assert result["step"] == STOP and result.get("interrupted")
    return folder / "last.pt"


@pytest.mark.parametrize(
    ("written", "resumed", "step_dtype"),
    [(False, True, torch.float32), (False, True, torch.float64), (True, False, torch.float32)],
    ids=["plain-to-fused", "plain-float64-steps-to-fused", "fused-to-plain"],
)
def test_the_optimiser_state_loads_as_this_runs_adamw_makes_it(tmp_path, monkeypatch, written, resumed, step_dtype):
    """A plain AdamW under a float64 default dtype keeps float64 steps: fused AdamW needs them float32."""
    tokens = repeating_corpus(tmp_path / "tokens")
    path = _stopped_run(tokens, tmp_path / "c", written, monkeypatch)
    state = read_checkpoint(path)
    saved = state["optimizer"]
    assert [group["fused"] for group in saved["param_groups"]] == [written or None] * 2  # as that optimiser wrote it
    for entry in saved["state"].values():
        entry["step"] = entry["step"].to(step_dtype)
    expected = {k: {name: t.clone() for name, t in entry.items()} for k, entry in saved["state"].items()}
    with monkeypatch.context() as patch:
        _adamw(patch, resumed)
        run = _setup(tokens, TINY_MODEL, P)
    placed_by = []  # load_state_dict puts each `step` where the groups it is given say
    run.optimizer.register_load_state_dict_pre_hook(
        lambda optimizer, loaded: placed_by.append([group["fused"] for group in loaded["param_groups"]])
    )
    _restore(run, state, path, lambda text: None)
    flag = True if resumed else None
    assert placed_by == [[flag, flag]] and [group["fused"] for group in run.optimizer.param_groups] == [flag, flag]
    ordered = [param for group in run.optimizer.param_groups for param in group["params"]]  # state_dict's ids
    assert sorted(expected) == list(range(len(ordered)))
    for k, param in enumerate(ordered):
        now = run.optimizer.state[param]
        assert now["step"].dtype == torch.float32 and now["step"].item() == STOP
        assert now["step"].device == (param.device if resumed else torch.device("cpu"))
        for name in ("exp_avg", "exp_avg_sq"):  # the moments exactly as saved, on the parameter's device
            assert now[name].device == param.device and torch.equal(now[name], expected[k][name])
    assert run.step == STOP and all(group["lr"] > 0 for group in run.optimizer.param_groups)


@pytest.mark.parametrize(
    ("written", "resumed"), [(False, True), (True, False)], ids=["plain-to-fused", "fused-to-plain"]
)
def test_a_run_resumed_with_the_other_adamw_trains_on_as_if_never_stopped(
    tmp_path, monkeypatch, capsys, written, resumed
):
    """Fused and plain AdamW round differently, so the weights agree to float tolerance, not bit for bit."""
    tokens = repeating_corpus(tmp_path / "tokens")
    path = _stopped_run(tokens, tmp_path / "c", written, monkeypatch)
    at_stop = read_checkpoint(path)["model"]
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _adamw(patch, resumed)
        assert train(tokens, tmp_path / "c", tmp_path / "resumed", None, TINY_MODEL, P, code=CODE)["step"] == P.steps
        assert f"at step {STOP}" in capsys.readouterr().out
        train(tokens, tmp_path / "u", tmp_path / "unbroken", None, TINY_MODEL, P, code=CODE)  # never checkpointed
    resumed_weights, unbroken = _weights(tmp_path / "resumed"), _weights(tmp_path / "unbroken")
    assert resumed_weights.keys() == unbroken.keys()
    for name, weight in unbroken.items():
        torch.testing.assert_close(resumed_weights[name], weight, rtol=1e-4, atol=1e-5)
    moved = max((unbroken[name] - at_stop[name]).abs().max().item() for name in unbroken)
    assert moved > 1e-3  # the steps after the checkpoint moved the weights far beyond the tolerance
