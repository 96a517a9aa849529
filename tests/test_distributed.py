"""DDP under torchrun with gloo on the CPU: identical initial weights, each process its own dropout masks, and a
mismatched checkpoint set aside once, by one process."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, repeating_corpus
from test_train import ENV, TINY_MODEL, params

# Run in each process: record a fingerprint of the freshly built model's weights and of the first dropout mask,
# then train. The test compares them across the two processes.
WORKER = """
import hashlib, json, os, sys
import torch.nn.functional as F
import pipeline.train as stage
from pipeline.params import TrainParams

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
if settings.get("backend"):  # torch.compile with a backend that needs no C++ compiler
    import torch

    compile_with = torch.compile
    torch.compile = lambda module, **kw: compile_with(module, backend=settings["backend"])
stage.train(tokens, out + "/ckpt", out + "/model", None, settings["model"], TrainParams(**settings["train"]))
with open(f"{out}/rank{os.environ['RANK']}.json", "w") as f:
    json.dump(seen, f)
"""


def _torchrun(tmp_path, tokens, model: dict, train: dict, out: str = "run", backend: str = "") -> str:  # noqa: ANN001
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    settings = json.dumps({"model": model, "train": train, "backend": backend})
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
            str(tokens), str(tmp_path / out), settings]  # fmt: skip
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


def test_a_mismatched_checkpoint_is_set_aside_once_for_all_processes(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    train_settings = {**params(steps=2, log_interval=1, eval_interval=100, transpose=0).__dict__}
    _torchrun(tmp_path, tokens, TINY_MODEL, train_settings)
    out = _torchrun(tmp_path, tokens, TINY_MODEL, {**train_settings, "lr": 1e-3})
    assert out.count("kept as last.prev.pt") == 1 and "lr 0.003 → 0.001" in out
    assert (tmp_path / "run" / "ckpt" / "last.prev.pt").is_file() and (tmp_path / "run" / "ckpt" / "last.pt").is_file()


def test_several_processes_compile_around_ddp(tmp_path):
    """compile(DDP(model)), so that the gradients' all-reduce overlaps the backward pass (PyTorch's advice)."""
    import torch
    import torch.distributed as dist

    from pipeline.training.distributed import wrap

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


def test_a_two_process_run_resumes_in_one_process_with_its_memories_dealt_out_again(tmp_path):
    """Stopped under torchrun, resumed by a single process: the global batch is the same, so with no dropout the run
    ends where an unbroken two-process run ends (to float tolerance: the gradients are summed in another order)."""
    from test_train import _command, _terminate_after

    from pipeline.model_folder import read_weights
    from pipeline.training.checkpoints import read_checkpoint

    tokens = repeating_corpus(tmp_path / "tokens")
    settings = {**params(steps=12, log_interval=1, eval_interval=100, transpose=0, grad_accum=2).__dict__}
    _torchrun(tmp_path, tokens, TINY_MODEL, settings)  # the unbroken run, in tmp_path/run

    def command(processes: int) -> list[str]:  # the CLI's, with accumulation and frequent checkpoints
        args = _command(tmp_path, tokens, "broken", processes, steps=12)
        text = (tmp_path / "broken.yaml").read_text().replace("grad_accum: 1", "grad_accum: 2")
        (tmp_path / "broken.yaml").write_text(text.replace("checkpoint_interval: 1000", "checkpoint_interval: 2"))
        return args

    popen = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    _terminate_after(subprocess.Popen(command(2), **popen), "step 5/")
    stopped = read_checkpoint(tmp_path / "broken" / "ckpt" / "last.pt")
    assert 5 <= stopped["step"] < 12 and len(stopped["mems"]) == 2
    resumed = subprocess.run(command(1), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {stopped['step']}" in resumed.stdout and "its memories go to 1" in resumed.stdout
    import torch

    unbroken = read_weights(tmp_path / "run" / "model")
    joined = read_weights(tmp_path / "broken" / "model")
    for name, weight in unbroken.items():
        torch.testing.assert_close(joined[name], weight, rtol=1e-4, atol=1e-5)


def test_resharding_deals_the_global_rows_out_again():
    import torch

    from pipeline.training.distributed import reshard

    rows, layers = torch.arange(8 * 3 * 2, dtype=torch.float64).view(8, 3, 2), 2  # 8 global rows
    layer_rows = [rows + 100 * layer for layer in range(layers)]

    def dealt(world: int, chunks: int) -> list:  # as the train stage holds them: rank k gets rows k, k + W, ...
        return [[[part for part in (lr[k::world].chunk(chunks)[c] for lr in layer_rows)] for c in range(chunks)]
                for k in range(world)]  # fmt: skip

    for old, new in (((2, 2), (1, 1)), ((2, 1), (4, 2)), ((4, 1), (2, 2)), ((1, 4), (2, 1))):
        got = reshard(dealt(*old), *new)
        want = dealt(*new)
        assert len(got) == new[0] and all(len(rank) == new[1] for rank in got)
        for g_rank, w_rank in zip(got, want, strict=True):
            for g_chunk, w_chunk in zip(g_rank, w_rank, strict=True):
                assert all(torch.equal(g, w) for g, w in zip(g_chunk, w_chunk, strict=True))
    assert reshard([[None], [None]], 3, 2) == [[None, None]] * 3


def test_compiled_around_ddp_two_processes_train_as_the_eager_ones_do(tmp_path):
    """compile(DDP(model)) with accumulation (DDP's no_sync reached through the compiled module): the weights of
    eager DDP, to float tolerance (aot_eager traces the same operations)."""
    import torch

    from pipeline.model_folder import read_weights

    tokens = repeating_corpus(tmp_path / "tokens")
    settings = {**params(steps=6, log_interval=1, eval_interval=100, transpose=0, grad_accum=2).__dict__}
    _torchrun(tmp_path, tokens, TINY_MODEL, settings, out="eager")
    _torchrun(tmp_path, tokens, TINY_MODEL, {**settings, "compile": True}, out="compiled", backend="aot_eager")
    eager = read_weights(tmp_path / "eager" / "model")
    compiled = read_weights(tmp_path / "compiled" / "model")
    for name, weight in eager.items():
        torch.testing.assert_close(compiled[name], weight, rtol=1e-5, atol=1e-6)
