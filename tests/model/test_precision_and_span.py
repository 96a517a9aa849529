"""Precision traps (positions, biases under bf16), the attention span as an argument, and the full-length zero memory
that keeps a compiled model's shapes fixed."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from conftest import tiny

from model import AttnSpan, TransformerXL
from model.decode_cache import decode_cache
from model.layers import PositionalEmbedding


def test_position_encodings_are_computed_in_float32_whatever_the_weights_dtype():
    model = tiny(d_model=32).bfloat16()
    r = model._positions(600, -1, torch.device("cpu"))  # distances 599 ... 0
    assert r.dtype == torch.bfloat16
    exact = PositionalEmbedding(32)(torch.arange(599, -1, -1, dtype=torch.float64).float())
    assert torch.equal(r, exact.to(torch.bfloat16))
    distance = {d: r[599 - d] for d in (256, 257, 258)}
    assert not torch.equal(distance[257], distance[256]) and not torch.equal(distance[257], distance[258])


def test_under_bf16_autocast_the_biases_keep_the_queries_and_the_position_term_in_bf16(monkeypatch):
    model = tiny().float()
    seen = []
    attend = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append((q.dtype, k.dtype, attn_mask.dtype))
        return attend(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, mems = model(torch.randint(0, 50, (2, 8)))
        model(torch.randint(0, 50, (2, 8)), mems=mems)
    assert len(seen) == 2 * model.cfg.n_layer and set(seen) == {(torch.bfloat16,) * 3}


def test_an_attention_span_argument_equals_a_model_configured_with_it_and_leaves_the_config_alone():
    model = tiny(mem_len=8)
    span = AttnSpan(mem_len=20, same_length=True, clamp_len=6)
    configured = TransformerXL(dataclasses.replace(model.cfg, mem_len=20, same_length=True, clamp_len=6)).double()
    configured.load_state_dict(model.state_dict())
    configured.eval()
    tokens = torch.randint(0, 50, (2, 40))
    mems_a = mems_b = None
    for segment in tokens.split(8, dim=1):
        a, _, mems_a = model(segment, mems=mems_a, span=span)
        b, _, mems_b = configured(segment, mems=mems_b)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert mems_a[0].size(1) == 20 and model.cfg.mem_len == 8 and not model.cfg.same_length
    cache_a, cache_b = decode_cache(model, mems_a, span), decode_cache(configured, mems_b)
    for t in torch.randint(0, 50, (12, 2)):
        torch.testing.assert_close(model.step(t, cache_a), configured.step(t, cache_b), rtol=0, atol=0)
    plain, _, _ = model(tokens[:, :8])
    assert not torch.allclose(plain, model(tokens[:, :8], span=AttnSpan(8, clamp_len=2))[0])  # the span does matter


def test_a_full_length_zero_memory_hidden_by_seq_pos_equals_an_empty_one():
    model = tiny(mem_len=8)
    tokens = torch.randint(0, 50, (3, 8))
    seq_pos = torch.arange(8).repeat(3, 1)  # every row starts a sequence here
    empty, _, empty_mems = model(tokens, seq_pos=seq_pos)
    zeros = model.init_mems(3, 8)
    assert [m.shape for m in zeros] == [(3, 8, 32)] * model.cfg.n_layer and all(not m.any() for m in zeros)
    full, _, full_mems = model(tokens, mems=zeros, seq_pos=seq_pos)
    torch.testing.assert_close(full, empty, rtol=1e-12, atol=1e-12)
    for a, b in zip(full_mems, empty_mems, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    unmasked, _, _ = model(tokens, mems=zeros)
    assert not torch.allclose(unmasked, empty)  # without seq_pos the zeros would be attended to
