"""The GPU paths of the default model against float32 eager and against the CPU: the piano state as a side input
(model.state_input), composer labels, pieces masked from each other inside a row, bf16 autocast, torch.compile, the
attention kernel production pins on CUDA, the train stage on CUDA, and checkpoints that move between CPU and GPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import repeating_corpus
from torch.nn.attention import SDPBackend

import model.transformer_xl as txl
from model import TransformerXL
from model.decode_cache import decode_cache
from pipeline.model_folder import build_model
from pipeline.music.performance_encoding import PIECE_START, vocab
from pipeline.music.piano_state import PIANO_STATE_SIZE
from pipeline.params import TrainParams
from pipeline.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

LABELS = [{"label": 1, "composer": "A", "pieces": {}}, {"label": 2, "composer": "B", "pieces": {}}]
SMALL = dict(n_layer=2, d_model=64, n_head=4, d_head=16, d_inner=128, dropout=0.0, tgt_len=32, mem_len=32)
# The train stage's default model switches (params.yaml's model.state_input and model.composer_labels).
DEFAULT_SWITCHES = dict(state_input=True, composer_labels=True)
TRAIN_MODEL = dict(n_layer=2, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=16, mem_len=16)
EFFICIENT_FORWARD = "aten._scaled_dot_product_efficient_attention.default"
EFFICIENT_BACKWARD = "aten._scaled_dot_product_efficient_attention_backward.default"


def default_model(device: str = "cuda", **shape) -> TransformerXL:  # noqa: ANN003
    """A small float32 model built as the train stage builds the default one (a side input of PIANO_STATE_SIZE
    features, a label per composer), with the weights that start at zero made non-zero so that they take part."""
    torch.manual_seed(0)
    model = build_model({**vocab(), "labels": LABELS}, {**SMALL, **shape, **DEFAULT_SWITCHES}).eval()
    assert model.cfg.side_size == PIANO_STATE_SIZE == 259 and model.cfg.n_labels == 2
    with torch.no_grad():  # on the CPU's generator, so that every device gets the same weights
        model.r_w_bias.normal_(0, 0.5)
        model.r_r_bias.normal_(0, 0.5)
        model.side_net.weight.normal_(0, 0.05)
        model.side_logits.weight.normal_(0, 0.05)
        model.label_emb.weight[1:].normal_(0, 0.5)
    return model.to(device)


def default_batch(rows: int, length: int, start: int, device: str = "cuda") -> dict[str, torch.Tensor]:
    """The model's inputs as the train stage makes them, for rows in which one piece ends and the next begins (with
    PIECE_START) at position `start`: tokens, targets, the piano state's 256 features, each token's piece's label,
    and seq_pos, each token's position in its piece (the earlier piece began long before the row)."""
    g = torch.Generator().manual_seed(start)
    ids = torch.randint(0, PIECE_START, (rows, length + 1), generator=g)
    ids[:, start] = PIECE_START
    t = torch.arange(length)
    seq_pos = torch.where(t < start, t + 1000, t - start).repeat(rows, 1)
    labels = torch.where(t < start, 1, 2).repeat(rows, 1)
    side = (torch.rand(rows, length, PIANO_STATE_SIZE, generator=g) < 0.1).float()  # a few keys sound
    batch = dict(tokens=ids[:, :-1], targets=ids[:, 1:], side=side, labels=labels, seq_pos=seq_pos)
    return {name: tensor.to(device) for name, tensor in batch.items()}


def segment(batch: dict[str, torch.Tensor], a: int, b: int) -> dict[str, torch.Tensor]:
    """Positions a to b of every input of a batch."""
    return {name: tensor[:, a:b] for name, tensor in batch.items()}


@torch.no_grad()
def test_bf16_memory_over_two_segments_matches_one_pass_with_a_piece_starting_mid_segment():
    model = default_model()
    batch = default_batch(2, 64, start=45)  # the second piece starts inside the second segment
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first, _, mems = model(**segment(inputs, 0, 32))
        second, _, _ = model(mems=mems, **segment(inputs, 32, 64))
        whole, _, _ = model(**inputs)
    torch.testing.assert_close(torch.cat([first, second], 1).float(), whole.float(), rtol=0.05, atol=0.05)
    masked, _, _ = model(**inputs)  # float32: the piece mask hides the first piece from the second, and only that
    unmasked, _, _ = model(**{k: v for k, v in inputs.items() if k != "seq_pos"})
    torch.testing.assert_close(unmasked[:, :45], masked[:, :45], rtol=1e-5, atol=1e-5)
    assert (unmasked[:, 45:] - masked[:, 45:]).abs().max() > 1e-3


@torch.no_grad()
def test_bf16_loss_is_close_to_float32_and_every_default_input_takes_part():
    model = default_model(tgt_len=64, mem_len=64)
    batch = default_batch(4, 64, start=20)
    logits, exact, _ = model(**batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, approx, _ = model(**batch)
    assert abs(float(approx) - float(exact)) < 0.01 * float(exact)
    for name, changed in [("side", 1 - batch["side"]), ("labels", 3 - batch["labels"])]:  # labels 1 and 2 swapped
        other, _, _ = model(**{**batch, name: changed})
        assert (other - logits).abs().max() > 0.1, name


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_compiled_model_matches_eager_with_memory_in_one_graph(monkeypatch, dtype):
    """fullgraph: the pinned attention kernel (a context manager in every layer) must not break the graph."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # train() elsewhere may have turned it on
    model = default_model(tgt_len=16, mem_len=16)
    compiled = torch.compile(model, fullgraph=True)
    batch = default_batch(2, 48, start=21)
    eager_mems = compiled_mems = None
    tolerance = 1e-4 if dtype is None else 0.05
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        for a in range(0, 48, 16):
            eager, _, eager_mems = model(mems=eager_mems, **segment(batch, a, a + 16))
            fast, _, compiled_mems = compiled(mems=compiled_mems, **segment(batch, a, a + 16))
            torch.testing.assert_close(fast.float(), eager.float(), rtol=tolerance, atol=tolerance)


def test_production_attention_runs_the_pinned_efficient_kernel_eager_and_compiled_and_a_fallback_errors(monkeypatch):
    from torch._inductor.utils import run_and_get_code

    model = default_model().train()
    batch = default_batch(2, 32, start=9)

    def train_step(forward: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss, _ = forward(**batch)
        loss.backward()

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(model)
    ops = {event.name for event in prof.events()}
    efficient = "aten::_scaled_dot_product_efficient_attention"
    assert {efficient, efficient + "_backward"} <= ops and "aten::_scaled_dot_product_attention_math" not in ops
    _, code = run_and_get_code(train_step, torch.compile(model))
    assert EFFICIENT_FORWARD in "\n".join(code) and EFFICIENT_BACKWARD in "\n".join(code)
    # float64 has no efficient kernel: pinned, the call fails rather than running the math kernel.
    double = default_model().double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    with pytest.raises(RuntimeError, match="No available kernel"):
        double(**inputs)
    monkeypatch.setattr(txl, "CUDA_KERNELS", [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    assert torch.isfinite(double(**inputs)[1])  # unpinned, the same call falls back


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_efficient_attention_kernel_gives_the_math_kernels_loss_and_gradients(monkeypatch, dtype):
    """At the default head size (64) over 1,024 keys (512 remembered, 512 new), with the position bias taking part in
    the gradient, the side input, labels and a piece starting mid-segment: the memory-efficient kernel, the one
    production pins, against the plain math kernel."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = default_model(d_model=512, n_head=8, d_head=64, d_inner=1024, tgt_len=512, mem_len=512).train()
    batch = default_batch(2, 1024, start=700)
    with torch.no_grad():
        _, _, mems = model(**segment(batch, 0, 512))
    results = {}
    for kernel in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION):
        monkeypatch.setattr(txl, "CUDA_KERNELS", [kernel])
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss, _ = model(mems=mems, **segment(batch, 512, 1024))
        loss.backward()
        results[kernel] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_math, grads_math), (loss_fast, grads_fast) = results.values()
    tolerance = 1e-4 if dtype is None else 2e-2
    torch.testing.assert_close(loss_fast, loss_math, rtol=tolerance, atol=tolerance)
    for name, grad in grads_math.items():
        scale = grad.abs().max().item() + 1e-12
        assert (grads_fast[name] - grad).abs().max().item() <= tolerance * 10 * scale, name


def test_cached_decoding_on_cuda_matches_the_plain_incremental_forward_in_float32_and_bf16(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = default_model(mem_len=16)
    inputs = {k: v for k, v in default_batch(3, 48, start=30).items() if k in ("tokens", "side", "labels")}
    for dtype, tolerance in ((None, 1e-4), (torch.bfloat16, 0.05)):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, _, mems = model(**segment(inputs, 0, 8))
            cache = decode_cache(model, mems)
            for t in range(8, 48):
                one = segment(inputs, t, t + 1)
                expected, _, mems = model(mems=mems, **one)
                got = model.step(one["tokens"][:, 0], cache, side=one["side"], labels=one["labels"][:, 0])
                torch.testing.assert_close(got.float(), expected[:, 0].float(), rtol=tolerance, atol=tolerance)


def test_generation_on_cuda_is_seeded_per_row_with_the_side_input_and_labels():
    from model.sampling import generate

    model = default_model()
    prompt = torch.randint(0, PIECE_START, (1, 4), device="cuda")

    def side(ids: torch.Tensor) -> torch.Tensor:  # a side input that follows the ids
        return F.one_hot(ids % PIANO_STATE_SIZE, PIANO_STATE_SIZE).float()

    gens = [torch.Generator("cuda").manual_seed(s) for s in (1, 2)]
    labels = torch.tensor([1, 2], device="cuda")
    batch = generate(model, prompt.repeat(2, 1), 20, generator=gens, side=side, labels=labels)
    alone = generate(model, prompt, 20, generator=[torch.Generator("cuda").manual_seed(2)], side=side,
                     labels=labels[1:])  # fmt: skip
    assert torch.equal(batch[1], alone[0]) and not torch.equal(batch[0], batch[1])


def test_evaluation_on_cuda_gives_the_cpus_scores(monkeypatch):
    from test_evaluate import random_pieces

    from pipeline.evaluate import score_pieces

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # evaluation is float32 throughout
    pieces = random_pieces(4, 6, low=100, high=300)
    labels = [1, 2, 0, 1, 2, 2]
    on_cpu = score_pieces(default_model("cpu"), pieces, tgt_len=64, batch_size=4, labels=labels)
    on_gpu = score_pieces(default_model("cuda"), pieces, tgt_len=64, batch_size=4, labels=labels)
    for a, b in zip(on_cpu.nll, on_gpu.nll, strict=True):
        torch.testing.assert_close(torch.from_numpy(b), torch.from_numpy(a), rtol=1e-4, atol=1e-4)


def train_params(**overrides) -> TrainParams:  # noqa: ANN003
    """Train params for the tiny runs below: a few steps of the repeating corpus, evaluated at the end."""
    base = dict(steps=250, batch_size=4, lr=3e-3, warmup_steps=5, eval_interval=250, eval_segments=4,
                eval_batch_size=2, transpose=0, device="cuda")  # fmt: skip
    return TrainParams(**{**base, **overrides})


def test_the_train_stage_learns_the_default_model_on_cuda_with_bf16_and_compile(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")  # pieces of 110 tokens: they start inside 16-token segments
    model = {**TRAIN_MODEL, **DEFAULT_SWITCHES}
    result = train(tokens, tmp_path / "ckpt", tmp_path / "model", None, model, train_params(compile=True))
    assert result["val/nll"] < 0.2  # from ln(390) = 5.97; the same run on a CPU (bf16, not compiled) reaches 0.01


def test_the_train_stage_compiles_by_default_on_cuda_and_records_it(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    p = train_params(steps=20, eval_interval=20, eval_segments=2)
    model = {**TRAIN_MODEL, **DEFAULT_SWITCHES}
    train(tokens, tmp_path / "ckpt", tmp_path / "model", tmp_path / "live", model, p)
    record = yaml.safe_load((tmp_path / "live" / "params.yaml").read_text())
    assert record["compile"] is True and record["device"] == "cuda" and record["profile"] == "full"
    assert record["precision"] == "bfloat16" and record["model"]["side_size"] == 259 and record["model"]["n_labels"]


@pytest.mark.parametrize("first,then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_resumes_on_the_other_device_with_its_optimiser_state(tmp_path, monkeypatch, capsys, first, then):
    """A run stopped on one device goes on with raised steps on the other: weights, AdamW's moments and step count
    and the memories move to the new device, where CUDA's AdamW is the fused one."""
    tokens, folder = repeating_corpus(tmp_path / "tokens"), tmp_path / "ckpt"
    model = {**TRAIN_MODEL, **DEFAULT_SWITCHES}
    settings = dict(eval_interval=1000, eval_segments=2, compile=False, profile="full")  # one trajectory on both
    train(tokens, folder, tmp_path / "model", None, model, train_params(steps=8, device=first, **settings))
    capsys.readouterr()
    seen = []  # per optimiser step: whether fused, and the devices of the parameters, their moments and step counts
    adamw_step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        fused = {bool(group["fused"]) for group in self.param_groups}
        states = [(p, self.state[p]) for group in self.param_groups for p in group["params"] if p in self.state]
        devices = {(p.device.type, s["exp_avg"].device.type, s["step"].device.type) for p, s in states}
        seen.append((fused, devices if states else None))
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    result = train(tokens, folder, tmp_path / "model", None, model, train_params(steps=16, device=then, **settings))
    out = capsys.readouterr().out
    assert "resuming from" in out and "at step 8" in out and "training afresh" not in out, out
    assert result["step"] == 16 and math.isfinite(result["train/loss"]) and len(seen) == 8  # steps 9 to 16
    assert all(devices == {(then, then, then)} for _, devices in seen)  # every tensor moved, step counts included
    if then == "cuda":
        assert all(fused == {True} for fused, _ in seen)  # CUDA's fused AdamW
    state = torch.load(folder / "last.pt", weights_only=True)
    assert state["step"] == 16 and all(s["step"].item() == 16 for s in state["optimizer"]["state"].values())


def test_the_piano_state_on_cuda_is_the_numpy_reference_bit_for_bit():
    """CUDA divides by a host number as a product with its reciprocal, a bit off for most held times: the state
    divides by a tensor on the device, and equals the reference in every bit, in segments and one token at a time."""
    import numpy as np

    from pipeline.music.piano_state import PianoState as Reference
    from pipeline.music.piano_state_torch import PianoState

    rng = np.random.default_rng(0)
    kind, pitch = rng.choice(4, (4, 3000), p=[0.25, 0.2, 0.5, 0.05]), rng.integers(60, 66, (4, 3000))
    shift = 256 + rng.integers(0, 100, (4, 3000))
    tokens = np.select([kind == 0, kind == 1, kind == 2], [pitch, 128 + pitch, shift], PIECE_START)
    reference = Reference(4)(tokens)
    state, cuts = PianoState(4, "cuda"), [(0, 1), (1, 512), (512, 2000), (2000, 3000)]
    parts = [state(torch.from_numpy(tokens[:, a:b]).cuda()) for a, b in cuts]
    assert np.array_equal(torch.cat(parts, dim=1).cpu().numpy(), reference)
    stepper = PianoState(4, "cuda")
    one_by_one = torch.cat([stepper(torch.from_numpy(tokens[:, t : t + 1]).cuda()) for t in range(1200)], dim=1)
    assert np.array_equal(one_by_one.cpu().numpy(), reference[:, :1200])
    assert (reference[..., 128:] == 1).any() and ((reference[..., 128:] > 0) & (reference[..., 128:] < 1)).sum() > 1000


def test_training_and_decoding_steps_never_wait_for_the_gpu(tmp_path):
    """CUDA's sync debug mode raises at any call that makes the host wait: none in the train step of the default
    model (data path and piano state included), nor in a decoding step with the piano state and the note-length rule."""
    from model.sampling import Draws, draw, filter_logits, start_decoding
    from pipeline.generation.decoding import NoteLimit
    from pipeline.music.piano_state_torch import PianoState
    from pipeline.token_folder import PieceStore
    from pipeline.train import train_step
    from pipeline.training.batches import device_batches
    from pipeline.training.segments import SegmentStream

    cuda, model = torch.device("cuda"), default_model("cuda").train()
    stream = SegmentStream(PieceStore(repeating_corpus(tmp_path / "tokens"), "train"), 4, 32, state_input=True)
    batches = (batch for epoch in range(100) for _, batch in device_batches(stream, cuda, epoch))
    optimizer, mems = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True), [None]
    for _ in range(2):  # the first steps allocate and warm up
        train_step(model, model, optimizer, next(batches), mems, 1.0, cuda, dtype=torch.bfloat16)
    model.eval()
    prompt = torch.randint(0, 300, (2, 40), device=cuda)
    rule, draws = NoteLimit(prompt, 0.5), Draws(None, 2, cuda)
    with torch.no_grad():
        logits, step = start_decoding(model, prompt, side=PianoState(2, cuda), labels=torch.tensor([1, 2], device=cuda))
        logits = step(prompt[:, -1])
        draws()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(8):
                sampled = draw(filter_logits(logits, 1.0, 0, 0.98), draws())
                release = rule(sampled)
                logits = step(torch.where(release >= 0, release, sampled))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    model.train()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(model, model, optimizer, next(batches), mems, 1.0, cuda, dtype=torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode(0)
