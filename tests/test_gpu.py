"""The GPU paths against the float32 eager model: bf16 autocast, torch.compile, the fused attention kernels, and the
train stage on CUDA."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import repeating_corpus, tiny
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import TransformerXL, TransformerXLConfig
from pipeline.train import TrainParams, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def test_bf16_memory_over_two_segments_matches_one_pass():
    model = tiny(tgt_len=32, mem_len=32).float().cuda()
    tokens = torch.randint(0, 50, (2, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first, _, mems = model(tokens[:, :32])
        second, _, _ = model(tokens[:, 32:], mems=mems)
        whole, _, _ = model(tokens)
    torch.testing.assert_close(torch.cat([first, second], 1).float(), whole.float(), rtol=0.05, atol=0.05)


def test_bf16_loss_is_close_to_float32():
    model = tiny(tgt_len=64, mem_len=64).float().cuda()
    tokens = torch.randint(0, 50, (4, 65), device="cuda")
    _, exact, _ = model(tokens[:, :-1], tokens[:, 1:])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, approx, _ = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(float(approx) - float(exact)) < 0.01 * float(exact)


def test_compiled_model_matches_eager_with_memory(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # train() elsewhere may have turned it on
    model = tiny(tgt_len=16, mem_len=16).float().cuda()
    compiled = torch.compile(model)
    tokens = torch.randint(0, 50, (2, 32), device="cuda")
    eager_mems = compiled_mems = None
    for segment in tokens.split(16, dim=1):
        eager, _, eager_mems = model(segment, mems=eager_mems)
        fast, _, compiled_mems = compiled(segment, mems=compiled_mems)
        torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-4)


def test_the_train_stage_learns_on_cuda_with_bf16_and_compile(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    model = dict(n_layer=2, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=16, mem_len=16)
    p = TrainParams(
        steps=250, batch_size=4, lr=3e-3, warmup_steps=5, eval_interval=250, eval_segments=4, eval_batch_size=2
    )
    p.transpose, p.device, p.compile = 0, "cuda", True
    result = train(tokens, tmp_path / "ckpt", tmp_path / "model", None, model, p)
    assert result["val/nll"] < 0.2  # from ln(390) = 5.97; the CPU run of this test reaches < 0.1


def test_evaluation_on_cuda_gives_the_cpus_scores(monkeypatch):
    from test_evaluate import random_pieces, tiny_model

    from pipeline.evaluate import score_pieces

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # evaluation is float32 throughout
    pieces = random_pieces(4, 6, low=100, high=300)
    on_cpu = score_pieces(tiny_model(), pieces, tgt_len=64, batch_size=4)
    on_gpu = score_pieces(tiny_model().cuda(), pieces, tgt_len=64, batch_size=4)
    for a, b in zip(on_cpu.nll, on_gpu.nll, strict=True):
        torch.testing.assert_close(torch.from_numpy(b), torch.from_numpy(a), rtol=1e-4, atol=1e-4)


def test_cached_decoding_on_cuda_matches_the_plain_incremental_forward_in_float32_and_bf16(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = tiny(mem_len=16).float().cuda()
    tokens = torch.randint(0, 50, (3, 48), device="cuda")
    _, _, mems = model(tokens[:, :8])
    cache = model.decode_cache(mems)
    for t in range(8, 48):
        expected, _, mems = model(tokens[:, t : t + 1], mems=mems)
        torch.testing.assert_close(model.step(tokens[:, t], cache), expected[:, 0], rtol=1e-4, atol=1e-4)
    _, _, mems = model(tokens[:, :8])
    cache = model.decode_cache(mems)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for t in range(8, 48):
            expected, _, mems = model(tokens[:, t : t + 1], mems=mems)
            got = model.step(tokens[:, t], cache).float()
            torch.testing.assert_close(got, expected[:, 0].float(), rtol=0.05, atol=0.05)


def test_generation_on_cuda_is_seeded_per_row():
    from model.sampling import generate

    model = tiny().float().cuda()
    prompt = torch.randint(0, 50, (1, 4), device="cuda")
    gens = [torch.Generator("cuda").manual_seed(s) for s in (1, 2)]
    batch = generate(model, prompt.repeat(2, 1), 20, generator=gens)
    alone = generate(model, prompt, 20, generator=[torch.Generator("cuda").manual_seed(2)])
    assert torch.equal(batch[1], alone[0]) and not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_efficient_attention_kernel_gives_the_math_kernels_loss_and_gradients(monkeypatch, dtype):
    """At the default head size (64) over 1,024 keys (512 remembered, 512 new), with the position bias taking part in
    the gradient: the memory-efficient kernel, the one a GPU run uses, against the plain math kernel."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    cfg = TransformerXLConfig(390, n_layer=2, d_model=512, n_head=8, d_head=64, d_inner=1024, dropout=0.0,
                              tgt_len=512, mem_len=512, side_size=16)  # fmt: skip
    model = TransformerXL(cfg).cuda()
    with torch.no_grad():
        model.r_w_bias.normal_(0, 0.5)
        model.r_r_bias.normal_(0, 0.5)
    tokens = torch.randint(0, 390, (2, 1025), device="cuda")
    side = torch.rand(2, 1024, 16, device="cuda")
    seq_pos = torch.arange(1024, device="cuda").repeat(2, 1)
    with torch.no_grad():
        _, _, mems = model(tokens[:, :512], side=side[:, :512], seq_pos=seq_pos[:, :512])
    results = {}
    for backend in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION):
        model.zero_grad(set_to_none=True)
        with sdpa_kernel(backend), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss, _ = model(tokens[:, 512:1024], tokens[:, 513:], mems, side[:, 512:], seq_pos[:, 512:])
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_math, grads_math), (loss_fast, grads_fast) = results.values()
    tolerance = 1e-4 if dtype is None else 2e-2
    torch.testing.assert_close(loss_fast, loss_math, rtol=tolerance, atol=tolerance)
    for name, grad in grads_math.items():
        scale = grad.abs().max().item() + 1e-12
        assert (grads_fast[name] - grad).abs().max().item() <= tolerance * 10 * scale, name


def test_the_train_stage_compiles_by_default_on_cuda_and_records_it(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    model = dict(n_layer=2, d_model=32, n_head=4, d_head=8, d_inner=64, dropout=0.0, tgt_len=16, mem_len=16)
    p = TrainParams(steps=20, batch_size=4, lr=3e-3, warmup_steps=5, eval_interval=20, eval_segments=2,
                    eval_batch_size=2, transpose=0, device="cuda")  # fmt: skip
    train(tokens, tmp_path / "ckpt", tmp_path / "model", tmp_path / "live", model, p)
    record = yaml.safe_load((tmp_path / "live" / "params.yaml").read_text())
    assert record["compile"] is True and record["device"] == "cuda" and record["profile"] == "full"
    assert record["precision"] == "bfloat16"
