"""Transformer-XL against independent computations: memory against one long pass, incremental against full."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from model import TransformerXLConfig
from model.transformer_xl import _rel_shift


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
    assert all(m.shape == (1, 4, 32) for m in mems) and len(mems) == 4
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
    model = tiny().train()
    tokens = torch.randint(0, 50, (2, 16))
    _, _, mems = model(tokens[:, :8])
    _, loss, _ = model(tokens[:, 8:], targets=tokens[:, 8:], mems=mems)
    loss.backward()
    assert all(m.grad is None for m in mems)
    assert model.r_r_bias.grad is not None and model.r_w_bias.grad is not None


def test_same_length_gives_every_query_mem_len_keys():
    model = tiny(same_length=True, mem_len=6)
    mask = model._attn_mask(qlen=4, mlen=6, device=torch.device("cpu"))
    assert (~mask).sum(dim=1).tolist() == [6, 6, 6, 6]
    assert (~tiny()._attn_mask(4, 6, torch.device("cpu"))).sum(dim=1).tolist() == [7, 8, 9, 10]


def test_clamp_len_reuses_the_farthest_encoding():
    long_memory = tiny(clamp_len=3, mem_len=64)
    tokens = torch.randint(0, 50, (1, 12))
    logits, _, _ = long_memory(tokens)
    assert torch.isfinite(logits).all()


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


@pytest.mark.parametrize("mem_len,batch", [(16, 3), (8, 1)])
def test_flops_per_token_matches_pytorchs_flop_counter(mem_len, batch):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny(tgt_len=16, mem_len=mem_len).float().train()
    tokens = torch.randint(0, 50, (batch, 32))
    _, _, mems = model(tokens[:, :16], tokens[:, 1:17])
    counter = FlopCounterMode(display=False)
    with counter:  # one training step's forward and backward, attending to a full memory
        _, loss, _ = model(tokens[:, 16:], tokens[:, 16:], mems)
        loss.backward()
    assert counter.get_total_flops() == pytest.approx(model.flops_per_token(batch_size=batch) * batch * 16, rel=1e-9)
