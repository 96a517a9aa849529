"""A label per token (label 0: none) and classifier-free guidance, against the unlabelled model and a plain
recompute of both passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny

from model import TransformerXL
from model.sampling import generate, start_decoding


def labelled(n_labels: int = 3, **overrides) -> TransformerXL:  # noqa: ANN003
    """The tiny model with labels whose embeddings are large and random (row 0 stays the zero of 'no label')."""
    model = tiny(n_labels=n_labels, **overrides)
    with torch.no_grad():
        model.label_emb.weight[1:].normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


def test_label_zero_is_the_model_without_its_label_embedding_exactly():
    model = labelled()
    plain = TransformerXL(dataclasses.replace(model.cfg, n_labels=0)).double().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("label_emb")})
    tokens = torch.randint(0, 50, (2, 12))
    expected, _, _ = plain(tokens)
    for labels in (None, torch.zeros_like(tokens)):
        got, _, _ = model(tokens, labels=labels)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    other, _, _ = model(tokens, labels=torch.full_like(tokens, 2))
    assert not torch.allclose(other, expected)


def test_label_zero_never_learns_and_the_others_do():
    model = tiny(n_labels=3).train()
    tokens, labels = torch.randint(0, 50, (2, 9)), torch.tensor([[0] * 9, [2] * 9])
    _, loss, _ = model(tokens[:, :-1], tokens[:, 1:], labels=labels[:, :-1])
    loss.backward()
    grad = model.label_emb.weight.grad
    assert not grad[0].any() and grad[2].abs().sum() > 0 and not grad[1].any()
    assert not model.label_emb.weight.any()  # a new model starts as the unlabelled one


def test_labels_are_refused_where_they_do_not_fit():
    with pytest.raises(ValueError, match="takes no labels"):
        tiny()(torch.randint(0, 50, (1, 4)), labels=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be \[1, 4\]"):
        labelled()(torch.randint(0, 50, (1, 4)), labels=torch.ones(1, 3, dtype=torch.long))


def test_cached_steps_with_labels_give_the_full_forwards_logits():
    model = labelled(mem_len=32)
    tokens, labels = torch.randint(0, 50, (2, 20)), torch.tensor([1, 3])
    first, step = start_decoding(model, tokens[:, :5], labels=labels)
    steps = [first] + [step(tokens[:, t]) for t in range(5, 19)]
    full, _, _ = model(tokens[:, :19], labels=labels[:, None].expand(2, 19))
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decoding", ["cached", "incremental", "recompute"])
def test_guidance_mixes_a_labelled_and_an_unlabelled_pass_each_with_its_own_context(decoding):
    model = labelled(mem_len=64)
    prompt, labels, scale = torch.randint(0, 50, (2, 3)), torch.tensor([2, 3]), 2.5
    got = generate(model, prompt, 20, top_k=1, labels=labels, guidance=scale, decoding=decoding)
    seq = prompt
    for _ in range(20):  # greedy by hand: both passes over everything so far, mixed
        conditioned = model(seq, labels=labels[:, None].expand_as(seq))[0][:, -1]
        free = model(seq)[0][:, -1]
        seq = torch.cat([seq, (free + scale * (conditioned - free)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(torch.stack(got), seq[:, 3:])
    plain = generate(model, prompt, 20, top_k=1, labels=labels)
    assert not torch.equal(torch.stack(plain), torch.stack(got))  # the guidance does change the music


def test_guidance_zero_is_the_unlabelled_model_and_one_the_labelled():
    model = labelled(mem_len=64)
    prompt, labels = torch.randint(0, 50, (2, 3)), torch.tensor([1, 2])

    def run(**kwargs) -> torch.Tensor:  # noqa: ANN003
        return torch.stack(generate(model, prompt, 25, generator=torch.Generator().manual_seed(4), **kwargs))

    assert torch.equal(run(labels=labels, guidance=0.0), run())
    assert torch.equal(run(labels=labels, guidance=1.0), run(labels=labels))
    assert not torch.equal(run(labels=labels), run())


def test_with_guidance_a_side_input_is_computed_once_per_step():
    model = labelled(side_size=4, mem_len=64)
    calls = []

    def side(ids: torch.Tensor) -> torch.Tensor:
        calls.append(ids.shape)
        return torch.ones(*ids.shape, 4, dtype=torch.float64)

    generate(model, torch.randint(0, 50, (2, 3)), 10, top_k=1, labels=torch.tensor([1, 2]), guidance=2.0, side=side)
    assert calls == [(2, 3)] + [(2, 1)] * 9  # the prompt once, then each sampled step once


def test_a_label_adds_exactly_its_embedding_to_the_tokens():
    model = labelled()
    tokens, labels = torch.randint(0, 50, (2, 6)), torch.tensor([[1] * 6, [3] * 6])
    added = model._embed(tokens, None, labels) - model._embed(tokens, None, None)
    torch.testing.assert_close(added, model.label_emb.weight[labels], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 2.5])
def test_guided_logits_are_the_unlabelled_plus_scale_times_the_difference(scale):
    model = labelled(mem_len=64)
    prompt, labels, ids = torch.randint(0, 50, (2, 4)), torch.tensor([1, 3]), torch.randint(0, 50, (6, 2))
    guided, step = start_decoding(model, prompt, labels=labels, guidance=scale)
    conditioned, step_c = start_decoding(model, prompt, labels=labels)
    free, step_f = start_decoding(model, prompt)
    # The mix is float32, as the sampler's logits are.
    torch.testing.assert_close(guided, (free + scale * (conditioned - free)).float(), rtol=1e-5, atol=1e-5)
    for t in ids:
        c, f = step_c(t), step_f(t)
        torch.testing.assert_close(step(t), (f + scale * (c - f)).float(), rtol=1e-5, atol=1e-5)
