"""The train stage on tiny token folders: learning, exact resume after SIGTERM, DDP under torchrun, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, repeating_corpus

from pipeline.errors import PipelineError
from pipeline.model_folder import build_model, load_model, read_weights
from pipeline.music.performance_encoding import vocab
from pipeline.params import TrainParams
from pipeline.train import train
from pipeline.training.cpu_profile import for_training

TINY_MODEL = dict(n_layer=2, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=16, mem_len=16)


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
        precision="float32",  # the same numbers on every CPU; bf16 has its own test
        cpu_lr=None,
    )
    return TrainParams(**{**base, **overrides})


def test_a_tiny_model_learns_a_repeating_corpus(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    result = train(tokens, tmp_path / "ckpt", tmp_path / "model", None, TINY_MODEL, params(steps=250, transpose=0))
    assert result["train/loss"] < 0.1 and result["val/nll"] < 0.1  # from ln(390) = 5.97 at the start
    state = read_weights(tmp_path / "model")
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
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert state["step"] == 7
    # One memory per layer for each process and accumulation chunk: the last layer's output is never read back.
    assert [len(chunk) for chunk in state["mems"][0]] == [TINY_MODEL["n_layer"]] * 2
    assert not (tmp_path / "model_b").exists()
    train(tokens, tmp_path / "b", tmp_path / "model_b", None, model, p)
    a = read_weights(tmp_path / "model_a")
    b = read_weights(tmp_path / "model_b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _command(tmp_path: Path, tokens: Path, name: str, processes: int, steps: int = 8) -> list[str]:
    """`python -m pipeline train` (under torchrun for several processes) on a tiny model, in its own folders."""
    settings = {
        "model": TINY_MODEL,
        "train": {**params(steps=steps, batch_size=4, log_interval=1, eval_interval=100, transpose=0).__dict__},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(settings))
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = [*launch, "-m", "pipeline", "train", "--params", str(tmp_path / f"{name}.yaml"), "--tokens", str(tokens)]
    for option, folder in (("--checkpoints", "ckpt"), ("--shared", "shared"), ("--out", "model"), ("--live", "live")):
        args += [option, str(tmp_path / name / folder)]
    return args


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_cli(tmp_path: Path, tokens: Path, name: str, processes: int) -> list[float]:
    args = _command(tmp_path, tokens, name, processes)
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / name / "live" / "plots" / "metrics" / "train" / "loss.tsv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]


def _terminate_after(run: subprocess.Popen, prefix: str) -> str:
    """Send SIGTERM once the run prints a line starting with `prefix`; return everything it printed."""
    seen = []
    for line in run.stdout:
        seen.append(line)
        if line.startswith(prefix):
            run.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
            break
    return "".join(seen) + run.communicate(timeout=120)[0]


def test_sigterm_to_torchrun_stops_both_processes_at_one_step_and_resumes(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    args = _command(tmp_path, tokens, "ddp", 2, steps=100_000)
    popen = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    output = _terminate_after(subprocess.Popen(args, **popen), "step 5/")
    assert "holds everything to resume" in output, output
    state = torch.load(tmp_path / "ddp" / "ckpt" / "last.pt", weights_only=True)
    assert 5 <= state["step"] < 100_000 and len(state["mems"]) == len(state["rng"]) == 2
    assert not (tmp_path / "ddp" / "model").exists()

    stopped = state["step"]
    output = _terminate_after(subprocess.Popen(args, **popen), f"step {stopped + 2}/")
    assert f"resuming from {tmp_path / 'ddp' / 'ckpt' / 'last.pt'} at step {stopped}" in output, output
    assert torch.load(tmp_path / "ddp" / "ckpt" / "last.pt", weights_only=True)["step"] >= stopped + 2


def test_two_process_ddp_follows_the_single_process_loss_curve(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    single = _run_cli(tmp_path, tokens, "single", 1)
    ddp = _run_cli(tmp_path, tokens, "ddp", 2)
    assert len(single) == len(ddp) == 8
    np.testing.assert_allclose(ddp, single, rtol=1e-4)


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    with pytest.raises(PipelineError, match="n_head × d_head must equal d_model"):
        train(tokens, tmp_path / "c", tmp_path / "m", None, {**TINY_MODEL, "d_head": 4}, params(steps=1))

    train(tokens, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))
    other = repeating_corpus(tmp_path / "other", shift=2)
    vocab_json = json.loads((other / "vocab.json").read_text())
    (other / "vocab.json").write_text(json.dumps({**vocab_json, "vocab_size": 400}))
    train(other, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))
    assert "the token data, vocab_size 390 → 400" in capsys.readouterr().out  # a new run; the old one kept
    assert torch.load(tmp_path / "c" / "last.prev.pt", weights_only=True)["config"]["vocab_size"] == 390

    (tokens / "train" / "shard-00000.npy").unlink()
    with pytest.raises(PipelineError, match="shard-00000.npy: shard listed in .* is missing"):
        train(tokens, tmp_path / "d", tmp_path / "m", None, TINY_MODEL, params(steps=1))


def test_a_crashed_run_resumes_with_its_metric_history_intact(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    p = params(steps=10, checkpoint_interval=4, log_interval=1, eval_interval=5)
    train(tokens, tmp_path / "a", tmp_path / "model_a", tmp_path / "live_a", TINY_MODEL, p)

    def crash_at_6(step: int) -> None:
        if step == 6:
            raise RuntimeError("power cut")  # no SIGTERM: the checkpoint on disk is step 4's

    with pytest.raises(RuntimeError, match="power cut"):
        train(tokens, tmp_path / "b", tmp_path / "model_b", tmp_path / "live_b", TINY_MODEL, p, on_step=crash_at_6)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 4
    with (tmp_path / "live_b" / "plots" / "metrics" / "train" / "loss.tsv").open("a") as f:
        f.write("7\t2.5")  # a row torn by the crash
    train(tokens, tmp_path / "b", tmp_path / "model_b", tmp_path / "live_b", TINY_MODEL, p)
    for name in ("train/loss.tsv", "val/nll.tsv"):
        a = (tmp_path / "live_a" / "plots" / "metrics" / name).read_text()
        assert (tmp_path / "live_b" / "plots" / "metrics" / name).read_text() == a  # steps 5 and 6 not doubled
    assert json.loads((tmp_path / "live_b" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "live_a" / "metrics.json").read_text()
    )


def test_a_stop_at_the_last_step_still_exports_the_model(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")

    def stop_at_end(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tokens, tmp_path / "c", tmp_path / "model", None, TINY_MODEL, params(steps=3), on_step=stop_at_end)
    assert "interrupted" not in result and result["step"] == 3
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_cpu_limits_cap_the_configured_size():
    model = {**TINY_MODEL, "n_layer": 6, "d_model": 64, "n_head": 8, "d_head": 8}
    p = params(steps=100, batch_size=4, cpu_limits={"n_layer": 3, "d_model": 32, "steps": 50, "batch_size": 16})
    capped, q, lowered = for_training(model, p)
    assert (capped["n_layer"], capped["d_model"], capped["n_head"], capped["d_head"]) == (3, 32, 8, 4)
    assert (q.steps, q.batch_size) == (50, 4)  # a value already below its limit stays
    assert lowered == ["n_layer 6 → 3", "d_model 64 → 32", "steps 100 → 50"]
    assert for_training(model, params())[0] == model
    _, q, changed = for_training(model, params(lr=3e-4, cpu_lr=1e-3))  # the one value a CPU run may raise
    assert q.lr == 1e-3 and changed == ["lr 0.0003 → 0.001 (train.cpu_lr)"]
    with pytest.raises(PipelineError, match="unknown keys n_layers"):
        for_training(model, params(cpu_limits={"n_layers": 2}))


def test_the_cpu_run_trains_and_exports_the_capped_model(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    big = {**TINY_MODEL, "n_layer": 8, "d_model": 64, "n_head": 4, "d_head": 16}
    p = params(steps=50, lr=3e-3, cpu_lr=1e-3, cpu_limits={"n_layer": 1, "d_model": 32, "steps": 3})
    assert train(tokens, tmp_path / "c", tmp_path / "model", tmp_path / "live", big, p)["step"] == 3
    model = load_model(tmp_path / "model")
    assert (model.cfg.n_layer, model.cfg.d_model, model.cfg.d_head) == (1, 32, 8)
    # reports/train/params.yaml records what was trained, not what was asked for: the config of the exported model,
    # the train params the checkpoint was written with (the caps and cpu_lr applied), the device and the processes.
    written = yaml.safe_load((tmp_path / "live" / "params.yaml").read_text())
    assert written["model"] == asdict(model.cfg)
    state = torch.load(tmp_path / "c" / "last.pt", weights_only=True)
    assert {k: v for k, v in written["train"].items() if k not in ("cpu_limits", "cpu_lr")} == state["params"]
    assert (written["train"]["steps"], written["train"]["lr"]) == (3, 1e-3)
    assert (written["device"], written["processes"], written["profile"], written["compile"]) == ("cpu", 1, "cpu", False)
    # The exported weights are the trained ones: same logits as the model held in the last checkpoint.
    reference = build_model(vocab(), {k: v for k, v in state["config"].items() if k not in ("vocab_size", "data")})
    reference.load_state_dict(state["model"])
    x = torch.randint(0, 390, (2, 16))
    torch.testing.assert_close(model.eval()(x)[0], reference.eval()(x)[0], rtol=0, atol=0)


def test_a_checkpoint_of_other_data_or_a_broken_one(tmp_path, capsys):
    tokens = repeating_corpus(tmp_path / "tokens")
    train(tokens, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))
    other = repeating_corpus(tmp_path / "other", shift=2)
    train(other, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))
    assert "was trained with other settings (the token data); kept as last.prev.pt, training afresh" in (
        capsys.readouterr().out
    )

    (tmp_path / "c" / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(PipelineError, match=r"last.pt: unreadable checkpoint .*delete it to train afresh"):
        train(tokens, tmp_path / "c", tmp_path / "m", None, TINY_MODEL, params(steps=2))
    with pytest.raises(PipelineError, match="no trained model there"):
        load_model(tmp_path / "nowhere")


def test_the_state_input_model_trains_and_is_exported_with_its_side_layers(tmp_path):
    from pipeline.music.piano_state import PIANO_STATE_SIZE

    tokens = repeating_corpus(tmp_path / "tokens")
    model = {**TINY_MODEL, "state_input": True}
    result = train(tokens, tmp_path / "ckpt", tmp_path / "model", None, model, params(steps=200, transpose=0))
    assert result["val/nll"] < 0.3  # from ln(390) = 5.97
    trained = load_model(tmp_path / "model", side_size=PIANO_STATE_SIZE)
    assert trained.cfg.side_size == PIANO_STATE_SIZE and trained.side_logits.weight.abs().sum() > 0
    with pytest.raises(PipelineError, match=f"reads {PIANO_STATE_SIZE} side features per token, but 0 are made here"):
        load_model(tmp_path / "model")


def test_bf16_training_on_the_cpu_learns_and_is_recorded(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    p = params(steps=120, transpose=0, precision="bfloat16")
    result = train(tokens, tmp_path / "ckpt", tmp_path / "model", tmp_path / "live", TINY_MODEL, p)
    assert result["val/nll"] < 1.0  # from ln(390) = 5.97
    assert yaml.safe_load((tmp_path / "live" / "params.yaml").read_text())["precision"] == "bfloat16"
    with pytest.raises(PipelineError, match="train.precision must be one of auto, bfloat16, float32, not 'half'"):
        train(tokens, tmp_path / "c2", tmp_path / "m2", None, TINY_MODEL, params(steps=1, precision="half"))
    with pytest.raises(PipelineError, match="model.state_input must be true or false, not 'yes'"):
        from pipeline.model_folder import model_section

        model_section({**TINY_MODEL, "state_input": "yes"})
    with pytest.raises(PipelineError, match="state_logits must be one of all, all_relative_release, .*, not 'some'"):
        from pipeline.model_folder import model_section

        model_section({**TINY_MODEL, "state_logits": "some"})


def test_a_train_step_scores_each_piece_of_a_row_as_if_it_were_alone(tmp_path):
    """The loss train_step reports on a segment that holds several pieces equals the mean of the losses of those
    pieces (the last one cut where the segment ends) scored alone from an empty memory, PIECE_START after PIECE_END
    included: no piece attends to another, and the piano state restarts with each."""
    import torch.nn.functional as F
    from conftest import write_tokens

    from pipeline.music.performance_encoding import PIECE_START
    from pipeline.music.piano_state import piano_state
    from pipeline.token_folder import PieceStore
    from pipeline.train import train_step
    from pipeline.training.batches import device_batches
    from pipeline.training.segments import SegmentStream

    rng = np.random.default_rng(0)
    bodies = [rng.choice([60, 64, 67, 188, 192, 195, 300, 320], n) for n in (15, 9, 13, 21, 6, 18, 11)]
    store = PieceStore(write_tokens(tmp_path / "tokens", {"train": bodies}), "train")
    stream = SegmentStream(store, batch_size=2, tgt_len=40, state_input=True)
    _, segment = next(stream.batches(0))
    _, on_device = next(device_batches(stream, torch.device("cpu")))
    torch.manual_seed(0)
    model = build_model(vocab(), {**TINY_MODEL, "tgt_len": 40, "state_input": True}).double()
    with torch.no_grad():  # large weights, so that what each token attends to shows in the loss
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.3)
    expected, starts_seen = [], 0
    for row, targets in zip(segment.tokens, segment.targets, strict=True):
        whole = np.append(row, targets[-1]).astype(np.int64)  # inputs 0..T-1 predict 1..T
        starts = [*np.flatnonzero(row == PIECE_START), len(row)]
        starts_seen += len(starts) - 1
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            piece = torch.from_numpy(whole[a:b])[None]
            side = torch.from_numpy(piano_state(whole[a:b])[None]).double()
            logits = model(piece, side=side)[0][0]
            expected.append(F.cross_entropy(logits, torch.from_numpy(whole[a + 1 : b + 1]), reduction="none"))
    assert starts_seen >= 4  # pieces do begin inside the segment
    batch = {k: v.double() if v.is_floating_point() else v for k, v in on_device.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_step(model, model, optimizer, batch, [None], clip=1.0, device=torch.device("cpu"))
    alone = torch.cat(expected).mean().detach()
    torch.testing.assert_close(loss.double(), alone, rtol=0, atol=1e-6)  # the stage's loss is float32
    unmasked = train_step(model, model, optimizer, {k: v for k, v in batch.items() if k != "seq_pos"}, [None], 1.0,
                          torch.device("cpu"))  # fmt: skip
    assert abs(float(unmasked) - float(alone)) > 1e-3  # pieces that saw each other would score otherwise


def test_auto_precision_is_bf16_where_the_device_has_it_natively(monkeypatch):
    from model.device import compute_dtype

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr("model.device.native_bf16", lambda device, native=native: native)
        assert compute_dtype("auto", cpu) is (torch.bfloat16 if native else None)
        assert compute_dtype("float32", cpu) is None and compute_dtype("bfloat16", cpu) is torch.bfloat16


def test_a_compiled_model_compiles_once_the_first_segment_included(tmp_path):
    """The first segment's memory has the full length (zeros, hidden by seq_pos), so no later segment recompiles."""
    import torch._dynamo

    from pipeline.token_folder import PieceStore
    from pipeline.train import train_step
    from pipeline.training.batches import segment_tensors
    from pipeline.training.segments import SegmentStream

    tokens, cpu = repeating_corpus(tmp_path / "tokens"), torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(vocab(), TINY_MODEL)
    graphs = []

    def count_graphs(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    forward = torch.compile(model, backend=count_graphs)
    optimizer, mems, compiled_after = torch.optim.SGD(model.parameters(), lr=0.01), [None], []
    for _, (_, segment) in zip(range(4), SegmentStream(PieceStore(tokens, "train"), 4, 16).batches(0), strict=False):
        train_step(forward, model, optimizer, segment_tensors(segment, cpu), mems, 1.0, cpu)
        compiled_after.append(len(graphs))
    assert compiled_after[0] > 0 and compiled_after == [compiled_after[0]] * 4


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    from pipeline.training.checkpoints import read_checkpoint

    class Tripwire:  # unpickling it calls open(ran, "w"): a file that appears only if the pickle ran code
        def __reduce__(self):  # noqa: ANN204
            return (open, (str(tmp_path / "ran"), "w"))

    torch.save({"step": 1, "payload": Tripwire()}, tmp_path / "last.pt")
    # torch 2.5 (pyproject allows it) loads full pickles by default; this variable restores that default on newer torch
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(PipelineError, match="last.pt: unreadable checkpoint"):
        read_checkpoint(tmp_path / "last.pt")
    assert not (tmp_path / "ran").exists()
