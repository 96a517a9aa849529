"""DDP under torchrun with gloo on the CPU: identical initial weights, each process its own dropout masks, and a
mismatched checkpoint set aside once, by one process."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, repeating_corpus
from test_train import ENV, TINY_MODEL, params

from pipeline.train import TrainParams, train

# Run in each process: record a fingerprint of the freshly built model's weights and of the first dropout mask,
# then train. The test compares them across the two processes.
WORKER = """
import hashlib, json, os, sys
import torch.nn.functional as F
import pipeline.train as stage
from pipeline.train import TrainParams

tokens, out, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seen = {}
build = stage.build_model

def build_and_record(vocab, model_params):
    model = build(vocab, model_params)
    seen["weights"] = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    return model

dropout = F.dropout

def dropout_and_record(x, p=0.5, training=True, inplace=False):
    y = dropout(x, p, training, inplace)
    if training and p > 0 and "mask" not in seen:
        seen["mask"] = hashlib.sha256(((y == 0) & (x != 0)).numpy().tobytes()).hexdigest()
    return y

stage.build_model, F.dropout = build_and_record, dropout_and_record
stage.train(tokens, out + "/ckpt", out + "/model", None, settings["model"], TrainParams(**settings["train"]))
with open(f"{out}/rank{os.environ['RANK']}.json", "w") as f:
    json.dump(seen, f)
"""


def _torchrun(tmp_path, tokens, model: dict, train: dict) -> str:  # noqa: ANN001
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    settings = json.dumps({"model": model, "train": train})
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
            str(tokens), str(tmp_path / "run"), settings]  # fmt: skip
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_each_process_starts_from_the_same_weights_and_draws_its_own_dropout_masks(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    train = {**params(steps=2, log_interval=1, eval_interval=100, transpose=0).__dict__}
    _torchrun(tmp_path, tokens, {**TINY_MODEL, "dropout": 0.5}, train)
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["mask"] != ranks[1]["mask"]


def test_a_mismatched_checkpoint_is_set_aside_once_for_all_processes(tmp_path, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    train_settings = {**params(steps=2, log_interval=1, eval_interval=100, transpose=0).__dict__}
    _torchrun(tmp_path, tokens, TINY_MODEL, train_settings)
    out = _torchrun(tmp_path, tokens, TINY_MODEL, {**train_settings, "lr": 1e-3})
    assert out.count("kept as last.prev.pt") == 1 and "lr 0.003 → 0.001" in out
    assert (tmp_path / "run" / "ckpt" / "last.prev.pt").is_file() and (tmp_path / "run" / "ckpt" / "last.pt").is_file()
    # One process where two wrote the checkpoint: its memories cannot be shared out, so it is set aside too.
    one = TrainParams(**{**train_settings, "lr": 1e-3, "steps": 4})
    train(tokens, tmp_path / "run" / "ckpt", tmp_path / "run" / "model", None, TINY_MODEL, one)
    assert "was written by 2 process(es), not 1; kept as last.prev.pt" in capsys.readouterr().out


def test_several_processes_compile_around_ddp(tmp_path):
    """compile(DDP(model)), so that the gradients' all-reduce overlaps the backward pass (PyTorch's advice)."""
    import torch
    import torch.distributed as dist

    from pipeline.distributed import wrap

    model = torch.nn.Linear(4, 4)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        forward = wrap(model, torch.device("cpu"), world=2, compile_model=True)
        assert isinstance(forward, torch._dynamo.eval_frame.OptimizedModule)
        assert isinstance(forward._orig_mod, torch.nn.parallel.DistributedDataParallel)
        assert forward._orig_mod.module is model
        assert wrap(model, torch.device("cpu"), world=1, compile_model=False) is model
    finally:
        dist.destroy_process_group()
