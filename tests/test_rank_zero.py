"""Several processes without a shared file system: rank 0 alone reads the checkpoints and chooses, and every process
restores the state it hands them, even where the others' checkpoint folders (node-local disks) are empty."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT, repeating_corpus
from test_resume import _weights
from test_train import ENV, TINY_MODEL, params

from pipeline.train import train

CODE = {"pipeline/train.py": "0" * 64}  # a fixed code identity: the checkpoint resumes whatever is edited meanwhile

# Run in each process, each with its own checkpoint folder (RUN/ckpt0, RUN/ckpt1): train, and record the steps taken,
# the rows of each batch the process trained on, and the result, or the one line of a PipelineError.
WORKER = """
import json, os, sys
import pipeline.train as stage
from pipeline.errors import PipelineError
from pipeline.params import TrainParams
from pipeline.train import train

tokens, out, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rank, steps, rows, batches = os.environ["RANK"], [], [], stage.device_batches

def recorded(*args, **kwargs):
    for k, batch in batches(*args, **kwargs):
        rows.append(len(batch["tokens"]))
        yield k, batch

stage.device_batches = recorded
if settings.get("fail") and rank == "0":  # a failure that is no PipelineError, on rank 0 alone
    def choose_checkpoint(*args, **kwargs):
        raise OSError("the disk went away")
    stage.choose_checkpoint = choose_checkpoint
try:
    result = train(tokens, f"{out}/ckpt{rank}", f"{out}/model", None, settings["model"],
                   TrainParams(**settings["train"]), on_step=steps.append, code=settings["code"])
except PipelineError as exc:
    result = {"error": exc.args[0]}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"steps": steps, "rows": rows, "result": result}, f)
"""


def _two_processes(tmp_path: Path, tokens: Path, run: Path, steps: int, fail: bool = False) -> tuple[str, list]:
    """Train in two processes under torchrun, rank k in RUN/ckptK; their output and what each recorded (None for a
    process that stopped on an error other than a PipelineError, as `fail` makes rank 0 do)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    train_params = {**params(steps=steps, transpose=0).__dict__}
    settings = {"model": TINY_MODEL, "train": train_params, "code": CODE, "fail": fail}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
            str(tokens), str(run), json.dumps(settings)]  # fmt: skip
    # Ranks that took different branches would hang in their first mismatched collective: the timeout fails them.
    env = {**ENV, "PYTHONPATH": str(ROOT)}  # this checkout's code, wherever the package is installed from
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode != 0) == fail, result.stdout + result.stderr
    records = [run / f"rank{rank}.json" for rank in (0, 1)]
    return result.stdout + result.stderr, [json.loads(r.read_text()) if r.is_file() else None for r in records]


def test_only_rank_zero_holds_the_checkpoint_and_both_ranks_resume_from_it(tmp_path):
    tokens, run = repeating_corpus(tmp_path / "tokens"), tmp_path / "run"
    train(tokens, run / "ckpt0", tmp_path / "first", None, TINY_MODEL, params(steps=4, transpose=0), code=CODE)
    shutil.copytree(run / "ckpt0", tmp_path / "alone")  # the same checkpoint, for one process to continue
    (run / "ckpt1").mkdir()  # rank 1's node-local disk: no checkpoint at all
    out, ranks = _two_processes(tmp_path, tokens, run, steps=8)
    assert [r["steps"] for r in ranks] == [[5, 6, 7, 8]] * 2  # both resumed at step 4, none afresh
    assert [r["rows"] for r in ranks] == [[params().batch_size // 2] * 4] * 2  # each its own half of the batch
    assert out.count("resuming from") == 1 and "at step 4" in out and "its memories go to 2" in out  # rank 0 says
    assert not any((run / "ckpt1").iterdir())  # rank 0 alone writes checkpoints
    assert torch.load(run / "ckpt0" / "last.pt", weights_only=True)["step"] == 8
    train(tokens, tmp_path / "alone", tmp_path / "reference", None, TINY_MODEL, params(steps=8, transpose=0), code=CODE)
    two, one = _weights(run / "model"), _weights(tmp_path / "reference")
    assert two.keys() == one.keys()
    for name, weight in one.items():  # the same global batch: the same weights, to the order of the gradients' sums
        torch.testing.assert_close(two[name], weight, rtol=1e-4, atol=1e-5)
    first = _weights(tmp_path / "first")
    assert max((one[name] - first[name]).abs().max().item() for name in one) > 1e-3  # the steps after 4 moved them


def test_rank_zeros_unreadable_checkpoint_stops_every_process_with_its_line(tmp_path):
    tokens, run = repeating_corpus(tmp_path / "tokens"), tmp_path / "run"
    (run / "ckpt0").mkdir(parents=True)
    (run / "ckpt0" / "last.pt").write_bytes(b"not a checkpoint")
    (run / "ckpt1").mkdir()
    _, ranks = _two_processes(tmp_path, tokens, run, steps=2)
    errors = [r["result"].get("error") for r in ranks]
    assert errors[0] == errors[1] and "ckpt0/last.pt: unreadable checkpoint" in errors[0]
    assert [r["steps"] for r in ranks] == [[], []]


def test_any_failure_of_rank_zero_stops_the_others_with_its_line_instead_of_a_hang(tmp_path):
    tokens, run = repeating_corpus(tmp_path / "tokens"), tmp_path / "run"
    (run / "ckpt0").mkdir(parents=True)
    (run / "ckpt1").mkdir()
    out, ranks = _two_processes(tmp_path, tokens, run, steps=2, fail=True)
    assert ranks[0] is None and "OSError: the disk went away" in out  # rank 0 raises what it met
    assert ranks[1] == {"steps": [], "rows": [], "result": {"error": "OSError: the disk went away"}}
