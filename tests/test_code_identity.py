"""A run's code is part of what it is: a finished run is exported again only by the same code, a stopped one resumes
under new code and says so, and every copy or move over a checkpoint sets the one in the way aside first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, repeating_corpus
from test_resume import _same_weights, _stop_at, _weights
from test_train import TINY_MODEL, params

from pipeline.errors import PipelineError
from pipeline.train import train
from pipeline.training.checkpoints import code_deps, code_identity, set_aside

OLD, NEW = (
    {"model/transformer_xl.py": "a" * 64, "pipeline/train.py": "b" * 64},
    {
        "model/transformer_xl.py": "c" * 64,
        "pipeline/train.py": "b" * 64,
    },
)


def _state(path) -> dict:  # noqa: ANN001
    return torch.load(path, weights_only=True)


def test_the_code_identity_is_the_train_stage_deps_of_dvc_yaml_by_content(tmp_path):
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    code = [d for d in deps if not d.startswith("data/")]
    assert sorted(code_identity()) == sorted(code) and "model/transformer_xl.py" in code
    assert all(len(sha) == 64 for sha in code_identity().values())
    copy = tmp_path / "project"  # a project copy whose model file gains one comment: only that file's digest moves
    for name in ["dvc.yaml", *code]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    before = code_identity(copy)
    with (copy / "model" / "transformer_xl.py").open("a") as f:
        f.write("# a comment\n")
    after = code_identity(copy)
    assert [k for k in before if before[k] != after[k]] == ["model/transformer_xl.py"]
    stages = yaml.safe_load((copy / "dvc.yaml").read_text())  # a data dep, even a Python file, is data, not code
    (copy / "data").mkdir()
    (copy / "data" / "made.py").write_text("# an output of an earlier stage\n")
    stages["stages"]["train"]["deps"].append("data/made.py")
    (copy / "dvc.yaml").write_text(yaml.safe_dump(stages))
    assert code_identity(copy) == after
    (copy / "dvc.yaml").unlink()  # the package without its project: every module of pipeline/ and model/
    assert {p.relative_to(copy).as_posix() for p in code_deps(copy)} >= set(code)


def test_a_finished_run_of_other_code_is_set_aside_and_the_stage_trains_afresh(tmp_path, capsys):
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "c"
    train(tokens, folder, tmp_path / "old", None, TINY_MODEL, params(steps=8), code=OLD)
    finished = (folder / "last.pt").read_bytes()
    capsys.readouterr()
    train(tokens, folder, tmp_path / "new", None, TINY_MODEL, params(steps=8), code=NEW)
    out = capsys.readouterr().out
    assert "finished under other code (model/transformer_xl.py); kept as last.prev.pt, training afresh" in out
    assert "resuming" not in out and (folder / "last.prev.pt").read_bytes() == finished
    assert _state(folder / "last.pt")["code"] == NEW and _state(folder / "last.pt")["history"][0]["from_step"] == 0
    # The old code again: its finished run is the one exported, and the new code's run is kept in its turn.
    train(tokens, folder, tmp_path / "again", None, TINY_MODEL, params(steps=8), code=OLD)
    assert "last.pt ← last.prev.pt, which matches: that run resumes, at step 8" in capsys.readouterr().out
    assert _same_weights(_weights(tmp_path / "old"), _weights(tmp_path / "again"))
    assert _state(folder / "last.prev.pt")["code"] == NEW


def test_a_stopped_run_resumes_under_new_code_and_its_record_says_which_steps_ran_under_which(tmp_path, capsys):
    tokens, folder, live = repeating_corpus(tmp_path / "tokens"), tmp_path / "c", tmp_path / "live"
    train(tokens, folder, tmp_path / "m", live, TINY_MODEL, params(steps=10), on_step=_stop_at(4), code=OLD)
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", live, TINY_MODEL, params(steps=10), code=NEW)
    out = capsys.readouterr().out
    assert "resuming from" in out and "at step 4" in out and "training afresh" not in out
    assert "the code changed since step 4 began (model/transformer_xl.py)" in out
    code = json.loads((live / "run.json").read_text())["code"]
    assert [(c["from_step"], c["to_step"], c["changed"]) for c in code] == [
        (0, 4, []),
        (4, 10, ["model/transformer_xl.py"]),
    ]
    assert code[0]["code"] != code[1]["code"] and not (folder / "last.prev.pt").exists()
    # The same steps trained under one code end where the run under two did: the code took no part in the maths.
    train(tokens, tmp_path / "whole", tmp_path / "whole_m", None, TINY_MODEL, params(steps=10), code=NEW)
    assert _same_weights(_weights(tmp_path / "m"), _weights(tmp_path / "whole_m"))


def test_a_shared_checkpoint_of_other_code_is_never_exported_and_is_kept_when_the_new_run_shares(tmp_path, capsys):
    """What .ci/review relies on: a pulled checkpoint that the pull request's code did not train is not its model."""
    tokens, shared = repeating_corpus(tmp_path / "tokens"), tmp_path / "resume"
    train(tokens, tmp_path / "base", tmp_path / "base_m", None, TINY_MODEL, params(steps=8), shared=shared, code=OLD)
    pulled = (shared / "last.pt").read_bytes()
    capsys.readouterr()
    clone = tmp_path / "clone"  # no working checkpoint: a fresh clone that pulled data/shared
    train(tokens, clone, tmp_path / "pr_m", None, TINY_MODEL, params(steps=8), shared=shared, code=NEW)
    out = capsys.readouterr().out
    assert "resuming" not in out and "the checkpoint of the finished run" not in out
    assert f"{shared / 'last.pt'} holds another run's checkpoint; kept as {clone / 'last.prev.pt'}" in out
    assert (clone / "last.prev.pt").read_bytes() == pulled and _state(shared / "last.pt")["code"] == NEW
    train(tokens, tmp_path / "fresh", tmp_path / "fresh_m", None, TINY_MODEL, params(steps=8), code=NEW)
    assert _same_weights(_weights(tmp_path / "pr_m"), _weights(tmp_path / "fresh_m"))  # trained, from scratch


def test_deleting_the_checkpoints_and_the_shared_one_trains_afresh(tmp_path, capsys):
    tokens, folder, shared = repeating_corpus(tmp_path / "tokens"), tmp_path / "c", tmp_path / "resume"
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=6), shared=shared, code=OLD)
    first = _state(folder / "last.pt")["lineage"]
    shutil.rmtree(folder)
    shutil.rmtree(shared)
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=6), shared=shared, code=OLD)
    assert "resuming" not in capsys.readouterr().out and _state(folder / "last.pt")["lineage"][0] != first[0]


def test_a_matching_working_checkpoint_of_another_run_is_set_aside_before_the_shared_one_is_copied_over_it(
    tmp_path, capsys
):
    tokens, shared, working = repeating_corpus(tmp_path / "tokens"), tmp_path / "s", tmp_path / "w"
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, TINY_MODEL, params(steps=10), shared=shared)
    train(tokens, working, tmp_path / "m", None, TINY_MODEL, params(steps=10), on_step=_stop_at(4))  # another run
    stopped = (working / "last.pt").read_bytes()
    capsys.readouterr()
    train(tokens, working, tmp_path / "m", None, TINY_MODEL, params(steps=10), shared=shared)
    out = capsys.readouterr().out
    assert f"is at step 4, behind {shared / 'last.pt'}; kept as last.prev.pt" in out
    assert "the checkpoint of the finished run, at step 10" in out
    assert (working / "last.prev.pt").read_bytes() == stopped  # the local run, whole
    # An earlier checkpoint of the shared run itself is replaced, not kept: the copy continues that very run.
    shutil.copy(tmp_path / "a" / "last.pt", working / "last.pt")
    train(tokens, tmp_path / "a", tmp_path / "model_a", None, TINY_MODEL, params(steps=14), shared=shared)
    capsys.readouterr()
    train(tokens, working, tmp_path / "m", None, TINY_MODEL, params(steps=14), shared=shared)
    out = capsys.readouterr().out
    assert "the checkpoint of the finished run, at step 14" in out and "kept as" not in out
    assert not (working / "last.prev-1.pt").exists()


def test_last_prev_resumes_when_last_is_missing(tmp_path, capsys):
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "c"
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=10), on_step=_stop_at(6))
    (folder / "last.pt").rename(folder / "last.prev.pt")
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=10))
    out = capsys.readouterr().out
    assert "last.pt ← last.prev.pt, which matches: that run resumes, at step 6" in out
    assert not (folder / "last.prev.pt").exists() and _state(folder / "last.pt")["step"] == 10
    train(tokens, tmp_path / "whole", tmp_path / "whole_m", None, TINY_MODEL, params(steps=10))
    assert _same_weights(_weights(tmp_path / "m"), _weights(tmp_path / "whole_m"))


def test_set_aside_never_overwrites_a_run_already_set_aside(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for name, text in (("last.pt", "newest"), ("last.prev.pt", "older"), ("last.prev-1.pt", "oldest")):
        (folder / name).write_text(text)
    assert set_aside(folder / "last.pt") == folder / "last.prev.pt"
    kept = {p.name: p.read_text() for p in folder.iterdir()}
    assert kept == {"last.prev.pt": "newest", "last.prev-1.pt": "oldest", "last.prev-2.pt": "older"}
    elsewhere = tmp_path / "resume" / "last.pt"  # the shared checkpoint, set aside into the working folder
    elsewhere.parent.mkdir()
    elsewhere.write_text("shared")
    assert set_aside(elsewhere, folder) == folder / "last.prev.pt" and not elsewhere.exists()
    assert sorted(p.read_text() for p in folder.iterdir()) == ["newest", "older", "oldest", "shared"]


def test_the_shared_checkpoint_is_set_aside_only_when_its_run_is_not_kept_in_the_working_folder(tmp_path, capsys):
    tokens, folder, shared = repeating_corpus(tmp_path / "tokens"), tmp_path / "c", tmp_path / "resume"
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=6), shared=shared)
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=6, lr=1e-3), shared=shared)
    out = capsys.readouterr().out
    assert "kept as last.prev.pt, training afresh" in out and "holds another run's checkpoint" not in out
    assert sorted(p.name for p in folder.iterdir()) == ["last.prev.pt", "last.pt"]  # the first run once, not twice
    assert _state(shared / "last.pt")["params"]["lr"] == 1e-3 and _state(folder / "last.prev.pt")["step"] == 6


def test_a_stopped_run_whose_steps_are_lowered_to_where_it_stopped_is_finished_and_new_code_trains_afresh(
    tmp_path, capsys
):
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "c"
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=10), on_step=_stop_at(4), code=OLD)
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=4), code=NEW)  # no step left for new code
    assert "finished under other code (model/transformer_xl.py); kept as last.prev.pt, training afresh" in (
        capsys.readouterr().out
    )
    assert _state(folder / "last.pt")["code"] == NEW and _state(folder / "last.prev.pt")["step"] == 4
    # The same code: the stopped run is exported at the lowered steps, and its checkpoint is written again to say so
    # (the shared copy is then a finished run, which a later code change does not export).
    same = tmp_path / "same"
    train(tokens, same, tmp_path / "m", None, TINY_MODEL, params(steps=10), on_step=_stop_at(4), code=OLD)
    stopped = _state(same / "last.pt")
    capsys.readouterr()
    train(tokens, same, tmp_path / "m", None, TINY_MODEL, params(steps=4), shared=tmp_path / "s", code=OLD)
    assert "resuming from" in capsys.readouterr().out and stopped["params"]["steps"] == 10
    for path in (same / "last.pt", tmp_path / "s" / "last.pt"):
        assert _state(path)["params"]["steps"] == 4 == _state(path)["step"]


def test_a_checkpoint_from_before_code_lineage_and_one_memory_per_layer_resumes_exactly(tmp_path, capsys):
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "c"
    model = {**TINY_MODEL, "dropout": 0.1}
    train(tokens, tmp_path / "whole", tmp_path / "whole_m", None, model, params(steps=10), code=OLD)
    train(tokens, folder, tmp_path / "m", None, model, params(steps=10), on_step=_stop_at(4), code=OLD)
    state = _state(folder / "last.pt")
    for key in ("code", "lineage", "history"):
        del state[key]
    # The older layout kept the last layer's output too, one memory more than there are layers.
    state["mems"] = [[[*chunk, chunk[-1] + 1] for chunk in rank] for rank in state["mems"]]
    torch.save(state, folder / "last.pt")
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", tmp_path / "live", model, params(steps=10), code=OLD)
    out = capsys.readouterr().out
    assert "at step 4" in out and "(a checkpoint from before code was recorded)" in out
    assert _same_weights(_weights(tmp_path / "whole_m"), _weights(tmp_path / "m"))  # as if never stopped
    code = json.loads((tmp_path / "live" / "run.json").read_text())["code"]
    assert [(c["from_step"], c["to_step"], c["code"]) for c in code][0] == (0, 4, "unrecorded")
    # Finished in the older layout, it is not exported again: nothing says which code trained it.
    old = _state(folder / "last.pt")
    del old["code"]
    torch.save(old, folder / "last.pt")
    train(tokens, folder, tmp_path / "m", None, model, params(steps=10), code=OLD)
    assert "finished under other code ((a checkpoint from before code was recorded))" in capsys.readouterr().out


def test_a_run_caught_mid_move_resumes_and_an_unreadable_run_set_aside_is_passed_over(tmp_path, capsys):
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "c"
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=10), on_step=_stop_at(6))
    (folder / "last.pt").rename(folder / "last.resuming-0a1b2c3d.pt")  # a crash between the renames
    (folder / "last.prev.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=10))
    out = capsys.readouterr().out
    assert "last.pt ← last.resuming-0a1b2c3d.pt, which matches: that run resumes, at step 6" in out
    assert f"warning: {folder / 'last.prev.pt'}: unreadable checkpoint" in out and "passed over" in out
    assert (folder / "last.prev.pt").read_bytes() == b"not a checkpoint"  # left where it was, for its owner
    (folder / "last.pt").write_bytes(b"truncated")
    with pytest.raises(PipelineError, match="last.pt: unreadable checkpoint"):  # the run that trains on: stop
        train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=10))


def test_a_run_continued_on_two_machines_branches_and_neither_branch_replaces_the_other(tmp_path, capsys):
    tokens, shared = repeating_corpus(tmp_path / "tokens"), tmp_path / "s"
    train(tokens, tmp_path / "a", tmp_path / "m", None, TINY_MODEL, params(steps=6), shared=shared)
    pulled = tmp_path / "pulled"
    shutil.copytree(shared, pulled)  # the same finished run, pulled onto a second machine
    train(tokens, tmp_path / "a", tmp_path / "m", None, TINY_MODEL, params(steps=10), shared=shared)  # here on to 10
    train(tokens, tmp_path / "b", tmp_path / "m", None, TINY_MODEL, params(steps=14), on_step=_stop_at(8),
          shared=pulled)  # there on, stopped at 8  # fmt: skip
    branch = (tmp_path / "b" / "last.pt").read_bytes()
    capsys.readouterr()
    train(tokens, tmp_path / "b", tmp_path / "m", None, TINY_MODEL, params(steps=14), shared=shared)  # 10 > 8
    out = capsys.readouterr().out
    assert "is at step 8, behind" in out and (tmp_path / "b" / "last.prev.pt").read_bytes() == branch
    aside, adopted = _state(tmp_path / "b" / "last.prev.pt")["lineage"], _state(shared / "last.pt")["lineage"]
    assert aside[0] == adopted[0] and aside[1] != adopted[1]  # one run, two branches from step 6


def test_a_set_aside_across_file_systems_copies_whole_then_removes(tmp_path, monkeypatch):
    import os

    import pipeline.training.checkpoints as checkpoints

    folder, shared = tmp_path / "c", tmp_path / "resume" / "last.pt"
    folder.mkdir()
    shared.parent.mkdir()
    shared.write_bytes(b"a finished run")

    def cross_device(src, dst):  # noqa: ANN001, ANN202
        if Path(src).parent != Path(dst).parent:
            raise OSError(18, "Invalid cross-device link")
        return os.rename(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", cross_device)
    assert set_aside(shared, folder) == folder / "last.prev.pt"
    assert (folder / "last.prev.pt").read_bytes() == b"a finished run" and not shared.exists()
    assert [p.name for p in folder.iterdir()] == ["last.prev.pt"]  # no temporary file left


def test_an_unreadable_run_set_aside_does_not_stop_a_finished_run_from_sharing(tmp_path, capsys):
    tokens, folder, shared = repeating_corpus(tmp_path / "tokens"), tmp_path / "c", tmp_path / "resume"
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=6), shared=shared)
    (folder / "last.prev.pt").write_bytes(b"not a checkpoint")
    train(tokens, folder, tmp_path / "m", None, TINY_MODEL, params(steps=6, lr=1e-3), shared=shared)
    assert _state(shared / "last.pt")["params"]["lr"] == 1e-3  # shared: the first run is kept beside, as last.prev.pt
    assert (folder / "last.prev-1.pt").read_bytes() == b"not a checkpoint"
    assert "holds another run's checkpoint" not in capsys.readouterr().out
