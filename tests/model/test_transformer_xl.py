"""Transformer-XL against independent computations: memory against one long pass, incremental against full."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from model import TransformerXLConfig
from model.decode_cache import decode_cache
from model.layers import _rel_shift


@pytest.mark.parametrize("pre_lnorm", [False, True])
def test_memory_over_two_segments_equals_one_pass_over_both(pre_lnorm):
    model = tiny(pre_lnorm=pre_lnorm)
    tokens = torch.randint(0, 50, (2, 16))
    first, _, mems = model(tokens[:, :8])
    second, _, _ = model(tokens[:, 8:], mems=mems)
    # One pass over both segments: every query sees the same keys as with the memory of one segment.
    whole, _, _ = model(tokens)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=0, atol=1e-10)


def test_memory_is_a_window_of_mem_len_states():
    model = tiny(mem_len=4)
    tokens = torch.randint(0, 50, (1, 12))
    _, _, mems = model(tokens[:, :8])
    # One memory per layer, of that layer's input: the last layer's output is never attended to, so it is not kept.
    assert all(m.shape == (1, 4, 32) for m in mems) and len(mems) == model.cfg.n_layer == 3
    _, _, mems = model(tokens[:, 8:], mems=mems)
    assert all(not m.requires_grad for m in mems)


def test_incremental_forward_matches_full_forward():
    model = tiny(mem_len=32)
    tokens = torch.randint(0, 50, (2, 20))
    full, _, _ = model(tokens)
    mems, steps = None, []
    for t in range(tokens.size(1)):
        logits, _, mems = model(tokens[:, t : t + 1], mems=mems)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)


def test_changing_a_future_token_changes_no_earlier_logit():
    model = tiny()
    tokens = torch.randint(0, 50, (1, 16))
    before, _, _ = model(tokens)
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 50
    after, _, _ = model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10], rtol=0, atol=0)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_no_gradient_flows_into_the_memory():
    """The memory is a constant to the next segment: no graph behind it, so segment 1 gets nothing from loss 2."""
    model = tiny().train()
    tokens = torch.randint(0, 50, (2, 16))
    embedded = []  # the embedding output of segment 1, a tensor that needs a gradient
    hook = model.word_emb.register_forward_hook(lambda _module, _inputs, out: embedded.append(out))
    _, _, mems = model(tokens[:, :8])
    hook.remove()
    assert all(not m.requires_grad and m.grad_fn is None for m in mems)
    _, loss, _ = model(tokens[:, 8:], targets=tokens[:, 8:], mems=mems)
    assert embedded[0].requires_grad
    (into_segment_one,) = torch.autograd.grad(loss, embedded[0], retain_graph=True, allow_unused=True)
    assert into_segment_one is None  # loss 2 does not depend on segment 1's embeddings at all
    names, params = zip(*model.named_parameters(), strict=True)
    grads = dict(zip(names, torch.autograd.grad(loss, params), strict=True))
    # The same loss on memories cut from any graph by hand: every parameter gets the same gradient.
    _, detached_loss, _ = model(tokens[:, 8:], targets=tokens[:, 8:], mems=[m.detach().clone() for m in mems])
    for name, expected in zip(names, torch.autograd.grad(detached_loss, params), strict=True):
        torch.testing.assert_close(grads[name], expected, rtol=0, atol=0, msg=f"{name} differs")
    assert grads["r_r_bias"].abs().sum() > 0 and grads["r_w_bias"].abs().sum() > 0


def test_same_length_gives_every_query_mem_len_keys():
    model = tiny(same_length=True, mem_len=6)
    mask = model._attn_mask(qlen=4, mlen=6, device=torch.device("cpu"), span=model.cfg.span())
    assert (~mask).sum(dim=1).tolist() == [6, 6, 6, 6]
    assert (~tiny()._attn_mask(4, 6, torch.device("cpu"), tiny().cfg.span())).sum(dim=1).tolist() == [7, 8, 9, 10]


def sinusoid(distances: torch.Tensor, d_model: int) -> torch.Tensor:
    """The paper's R for each distance: sin then cos of distance / 10000^(2k / d_model), k < d_model / 2."""
    angles = distances[..., None] / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def reference_logits(model, tokens: torch.Tensor, clamp_len: int) -> torch.Tensor:
    """The model's logits for tokens [b, n] with no memory, by the paper's score written out per (query, key):
    (q_i + u)·k_j + (q_i + v)·W_R R(min(i - j, clamp_len)) for keys j ≤ i; no _rel_shift, no reversed positions."""
    c = model.cfg
    n, h, d = tokens.size(1), c.n_head, c.d_head
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # query i, key j: i - j
    if clamp_len > 0:
        distance = distance.clamp(max=clamp_len)
    r = sinusoid(distance.double(), c.d_model)  # [query, key, d_model]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    x = model.word_emb.weight[tokens] * c.d_model**0.5
    for layer in model.layers:
        attn = layer.dec_attn
        normed = attn.layer_norm(x) if c.pre_lnorm else x
        q, k, v = (normed @ w.T for w in attn.qkv_net.weight.split(h * d))
        q, k, v = (t.view(*t.shape[:2], h, d) for t in (q, k, v))
        r_k = (r @ attn.r_net.weight.T).view(n, n, h, d)
        content = torch.einsum("bihd,bjhd->bhij", q + model.r_w_bias, k)
        position = torch.einsum("bihd,ijhd->bhij", q + model.r_r_bias, r_k)
        scores = ((content + position) / d**0.5).masked_fill(future, float("-inf"))
        out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).flatten(2) @ attn.o_net.weight.T
        x = x + out if c.pre_lnorm else attn.layer_norm(x + out)
        ff = layer.pos_ff
        x = x + ff.core_net(ff.layer_norm(x)) if c.pre_lnorm else ff.layer_norm(x + ff.core_net(x))
    return model.final_norm(x) @ model.word_emb.weight.T + model.out_bias


def strong_positions(model):
    """The model with large position projections W_R, so that which encoding a distance gets shows in the logits."""
    with torch.no_grad():
        for layer in model.layers:
            layer.dec_attn.r_net.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


@pytest.mark.parametrize("pre_lnorm", [False, True])
@pytest.mark.parametrize("clamp_len", [-1, 3])
def test_clamp_len_reuses_the_farthest_encoding(clamp_len, pre_lnorm):
    """One pass and two segments with memory give the hand-written forward with distances clamped by hand."""
    model = strong_positions(tiny(clamp_len=clamp_len, pre_lnorm=pre_lnorm, mem_len=16))
    tokens = torch.randint(0, 50, (2, 14))
    with torch.no_grad():  # atol 1e-8: the model's sinusoid frequencies are float32, the reference's float64
        expected = reference_logits(model, tokens, clamp_len)
        if clamp_len > 0:  # the clamp changes the logits far beyond the tolerance
            assert (expected - reference_logits(model, tokens, -1)).abs().amax() > 1e-3
        torch.testing.assert_close(model(tokens)[0], expected, rtol=0, atol=1e-8)
        first, _, mems = model(tokens[:, :6])
        second, _, _ = model(tokens[:, 6:], mems=mems)
    torch.testing.assert_close(torch.cat([first, second], dim=1), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("pre_lnorm", [False, True])
@pytest.mark.parametrize("clamp_len", [-1, 3])
def test_cached_decoding_with_clamp_len_gives_the_hand_written_forward(clamp_len, pre_lnorm):
    """decode_cache and step, over distances up to 13 (past clamp_len), give the hand-written forward's logits."""
    model = strong_positions(tiny(clamp_len=clamp_len, pre_lnorm=pre_lnorm, mem_len=16))
    tokens = torch.randint(0, 50, (2, 14))
    expected = reference_logits(model, tokens, clamp_len).detach()
    _, _, mems = model(tokens[:, :2])
    cache = decode_cache(model, mems)
    steps = torch.stack([model.step(tokens[:, t], cache) for t in range(2, 14)], dim=1)
    torch.testing.assert_close(steps, expected[:, 2:], rtol=0, atol=1e-8)


def test_output_layer_is_the_input_embedding_and_inconsistent_shapes_are_refused():
    model = tiny()
    tokens = torch.randint(0, 10, (1, 8))  # ids 10 and up never enter the model as input
    logits, _, _ = model(tokens)
    (grad,) = torch.autograd.grad(logits[..., 40].sum(), model.word_emb.weight)
    assert grad[40].abs().sum() > 0  # so row 40 of the embedding is the output layer's row for token 40
    assert sum(p.numel() for p in model.parameters() if p.shape == model.word_emb.weight.shape) == 50 * 32
    with pytest.raises(ValueError, match="n_head × d_head must equal d_model"):
        TransformerXLConfig(vocab_size=10, d_model=512, n_head=8, d_head=32)


def test_rel_shift_puts_each_distance_at_its_key():
    # Scores against distances klen-1 … 0 must land so that query i and key j see distance i + mlen - j.
    qlen, mlen = 5, 3
    klen = qlen + mlen
    raw = torch.randn(2, 3, qlen, klen)
    shifted = _rel_shift(raw)
    for i in range(qlen):
        for j in range(i + mlen + 1):  # the keys query i may attend to
            distance = i + mlen - j
            assert shifted[:, :, i, j].equal(raw[:, :, i, klen - 1 - distance])


@pytest.mark.parametrize("mem_len,batch,side_size", [(16, 3, 0), (8, 1, 0), (8, 2, 6)])
def test_flops_per_token_matches_pytorchs_flop_counter(mem_len, batch, side_size):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny(tgt_len=16, mem_len=mem_len, side_size=side_size).float().train()
    tokens = torch.randint(0, 50, (batch, 32))
    side = torch.rand(batch, 32, side_size) if side_size else None
    _, _, mems = model(tokens[:, :16], tokens[:, 1:17], side=None if side is None else side[:, :16])
    counter = FlopCounterMode(display=False)
    with counter:  # one training step's forward and backward, attending to a full memory
        _, loss, _ = model(tokens[:, 16:], tokens[:, 16:], mems, side=None if side is None else side[:, 16:])
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(model.flops_per_token(batch_size=batch) * batch * 16, rel=1e-9)
