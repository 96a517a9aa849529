"""Sampling and cached decoding against independent computations: the plain forward, hand-written greedy decoding,
a brute-force nucleus, and the frequencies of many draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny

from model.decode_cache import decode_cache
from model.sampling import DONE_EVERY, Draws, check_sampling, draw, filter_logits, generate, sample

VOCAB = 50


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sharp(model: torch.nn.Module) -> torch.nn.Module:
    """The model with large random matrices: its next-token choice then depends on the whole context (a freshly
    initialised one nearly repeats its last input, through the tied embedding), so equal tokens mean something."""
    rng = seeded(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.5, generator=rng)
    return model


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"pre_lnorm": True},
        {"same_length": True},
        {"clamp_len": 3},
        {"mem_len": 0},
        {"mem_len": 1},
        {"mem_len": 5, "tgt_len": 3},
    ],
)
def test_cached_steps_give_the_plain_incremental_forwards_logits(shape):
    """Past mem_len too, so the cache slides and its buffer wraps several times."""
    model = tiny(**shape)
    tokens = torch.randint(0, VOCAB, (3, 60))
    _, _, mems = model(tokens[:, :7])
    cache = decode_cache(model, mems)
    for t in range(7, 60):
        expected, _, mems = model(tokens[:, t : t + 1], mems=mems)
        torch.testing.assert_close(model.step(tokens[:, t], cache), expected[:, 0], rtol=0, atol=1e-10)


def test_cached_generation_gives_the_tokens_of_full_recompute_within_mem_len():
    model = sharp(tiny(mem_len=40, tgt_len=4))
    prompt = torch.randint(0, VOCAB, (3, 6))
    runs = {
        decoding: generate(model, prompt, 35, generator=[seeded(s) for s in (1, 2, 3)], decoding=decoding)
        for decoding in ("cached", "incremental", "recompute")
    }
    assert len(torch.cat(runs["cached"]).unique()) > 15  # not a repeat: the draws follow the context
    for row in range(3):
        assert len(runs["cached"][row]) == 35
        assert torch.equal(runs["cached"][row], runs["recompute"][row])
        assert torch.equal(runs["cached"][row], runs["incremental"][row])


def test_cached_logits_are_the_full_forwards_up_to_mem_len_and_then_follow_the_memory():
    model = tiny(mem_len=6)
    tokens = torch.randint(0, VOCAB, (2, 20))
    full = model(tokens)[0]
    _, _, mems = model(tokens[:, :1])
    cache = decode_cache(model, mems)
    steps = torch.stack([model.step(tokens[:, t], cache) for t in range(1, 20)], dim=1)
    # Position t sees t earlier tokens; the memory holds 6, so from t = 7 on the two differ.
    torch.testing.assert_close(steps[:, :6], full[:, 1:7], rtol=0, atol=1e-10)
    assert ((steps[:, 6:] - full[:, 7:]).abs().amax(dim=-1) > 1e-6).all()


def test_a_seed_reproduces_a_sample_and_another_seed_does_not():
    model = tiny()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    first, again, other = (generate(model, prompt, 40, generator=seeded(s))[0] for s in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_each_row_with_its_own_generator_is_the_sample_it_would_be_alone():
    model = tiny()
    prompt = torch.randint(0, VOCAB, (1, 4))
    batch = generate(model, prompt.repeat(3, 1), 30, generator=[seeded(s) for s in (11, 12, 13)])
    for row, s in enumerate((11, 12, 13)):
        assert torch.equal(batch[row], generate(model, prompt, 30, generator=[seeded(s)])[0])
    assert not torch.equal(batch[0], batch[1])


def test_top_k_of_one_is_greedy_decoding():
    model = sharp(tiny(mem_len=32))
    seq = torch.randint(0, VOCAB, (2, 3))
    sampled = generate(model, seq, 25, top_k=1, temperature=1.7, generator=seeded(0))
    last_only = seq.clone()
    for _ in range(25):  # greedy by hand: the argmax of a full forward over everything so far
        seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        last_only = torch.cat([last_only, model(last_only[:, -1:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(torch.stack(sampled), seq[:, 3:])
    assert not torch.equal(seq, last_only) and len(seq[:, 3:].unique()) > 4  # the context decides


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_of_likeliest_tokens_that_reaches_p(top_p):
    logits = torch.randn(6, 40, generator=seeded(3), dtype=torch.float64) * 2
    kept = torch.isfinite(filter_logits(logits, top_p=top_p)).numpy()
    probs = torch.softmax(logits, -1).numpy()
    for row, p in enumerate(probs):
        order = np.argsort(-p)
        size = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1  # the first prefix whose mass reaches p
        assert set(np.flatnonzero(kept[row])) == set(order[:size].tolist())
        assert p[order[: size - 1]].sum() < top_p <= p[order[:size]].sum() + 1e-12


def test_top_k_keeps_the_k_likeliest_and_off_keeps_all():
    logits = torch.randn(4, 30, generator=seeded(4))
    kept = torch.isfinite(filter_logits(logits, top_k=5))
    assert torch.equal(kept.sum(-1), torch.full((4,), 5))
    assert torch.equal(kept, logits >= logits.topk(5, dim=-1).values[:, -1:])
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=1.0)).all()


def test_sampled_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    draws = 40_000
    tokens = sample(filter_logits(logits.repeat(draws, 1), temperature=0.7), seeded(9))
    frequencies = torch.bincount(tokens, minlength=5).double() / draws
    expected = torch.softmax(logits[0].double() / 0.7, -1)
    assert (frequencies - expected).abs().max() < 0.01


def test_rows_end_at_the_stop_token_or_when_the_predicate_says_so():
    model = tiny()
    with torch.no_grad():
        model.out_bias[7] = -1e9  # never sampled, so no row ends by accident
    prompt = torch.randint(0, VOCAB, (4, 2))
    calls = []

    def stop_row_one_at_step_five(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tokens.clone())
        return torch.tensor([False, len(calls) == 5, False, False])

    rows = generate(model, prompt, 30, generator=seeded(1), stop=stop_row_one_at_step_five)
    assert [len(r) for r in rows] == [30, 5, 30, 30] and len(calls) == 30
    assert torch.equal(rows[1], torch.stack([c[1] for c in calls[:5]]))  # what the predicate saw
    with torch.no_grad():
        model.out_bias[7] = 50.0  # always sampled: every row ends at once, and so does the loop
    ended = generate(model, prompt, 30, generator=seeded(1), stop_token=7)
    assert [r.tolist() for r in ended] == [[7]] * 4


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0, 0, 1.0), (-1, 0, 1.0), (1, -1, 1.0), (1, 0, 0.0), (1, 0, 1.5)]
)
def test_settings_that_select_nothing_are_refused(temperature, top_k, top_p):
    with pytest.raises(ValueError, match="must be"):
        check_sampling(temperature, top_k, top_p)
    with pytest.raises(ValueError, match="must be"):
        generate(tiny(), torch.zeros(1, 1, dtype=torch.long), 3, temperature=temperature, top_k=top_k, top_p=top_p)


def test_bf16_weights_under_autocast_stay_close_to_float32():
    torch.manual_seed(0)
    model = tiny(mem_len=16).float()
    tokens = torch.randint(0, VOCAB, (2, 30))
    _, _, mems = model(tokens[:, :10])
    cache = decode_cache(model, mems)
    for t in range(10, 30):
        expected, _, mems = model(tokens[:, t : t + 1], mems=mems)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.step(tokens[:, t], cache)
        assert got.dtype == torch.bfloat16 and cache.keys[0].dtype == torch.float32
        torch.testing.assert_close(got.float(), expected[:, 0], rtol=0, atol=0.05)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_banned_ids_are_never_sampled_and_the_rest_keep_their_proportions(temperature):
    """Over many rows and several steps, each allowed id is drawn as often as the tempered softmax of the full
    forward's logits, renormalised by hand over the allowed ids, predicts (within 5 standard errors)."""
    model = tiny()
    banned = [3, 4, 17]
    is_banned = torch.zeros(VOCAB, dtype=torch.bool)
    is_banned[banned] = True
    with torch.no_grad():
        model.out_bias.normal_(0, 1, generator=seeded(5))  # unequal proportions
        model.out_bias[banned] = 3.0  # together the likeliest by far, until banned
    rows, steps = 3000, 4
    prompt = torch.randint(0, VOCAB, (rows, 1), generator=seeded(6))
    drawn = torch.stack(generate(model, prompt, steps, temperature=temperature, generator=seeded(2), banned=banned))
    assert drawn.shape == (rows, steps)
    assert not is_banned[drawn].any(), f"banned ids drawn {int(is_banned[drawn].sum())} times"
    allowed = ~is_banned
    with torch.no_grad():
        logits = model(torch.cat([prompt, drawn[:, :-1]], dim=1))[0] / temperature  # [row, step, vocab]
    banned_mass = torch.softmax(logits, -1)[..., ~allowed].sum(-1)
    assert banned_mass.mean() > 0.3  # banning matters: without renormalising, the proportions would be far off
    probs = torch.softmax(logits[..., allowed], -1)  # renormalised over the allowed ids only
    for step in range(steps):
        p = probs[:, step]  # each row draws one id from its own distribution
        counts = torch.bincount(drawn[:, step], minlength=VOCAB)[allowed].double()
        z = (counts - p.sum(0)) / (p * (1 - p)).sum(0).sqrt()
        worst = z.abs().argmax()
        seen, expected = counts[worst], p.sum(0)[worst]
        assert z[worst].abs() < 5, (
            f"step {step}: id {int(allowed.nonzero()[worst])} drawn {seen:.0f} times, expected {expected:.1f} "
            f"({z[worst]:+.1f} standard errors)"
        )


class RunningSum:
    """A stateful side input for tests: per row, the running sum of one-hot ids folded into `size` features, so each
    position's side input depends on every id before it (as the piano state does)."""

    def __init__(self, rows: int, size: int = 3) -> None:
        self.total, self.size = torch.zeros(rows, size, dtype=torch.float64), size

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(ids % self.size, self.size).double()
        out = self.total[:, None] + onehot.cumsum(dim=1)
        self.total = out[:, -1]
        return out / 10


def test_the_three_decoders_agree_with_a_side_input():
    model = sharp(tiny(mem_len=40, tgt_len=4, side_size=3))
    prompt = torch.randint(0, VOCAB, (3, 6))
    runs = {
        decoding: generate(
            model, prompt, 30, generator=[seeded(s) for s in (1, 2, 3)], decoding=decoding, side=RunningSum(3)
        )  # fmt: skip
        for decoding in ("cached", "incremental", "recompute")
    }
    for row in range(3):
        assert torch.equal(runs["cached"][row], runs["recompute"][row])
        assert torch.equal(runs["cached"][row], runs["incremental"][row])
    # The side input takes part: with another one the same seeds sample something else.
    other = generate(
        model, prompt, 30, generator=[seeded(s) for s in (1, 2, 3)], side=lambda ids: RunningSum(3)(ids) * 0
    )
    assert any(not torch.equal(a, b) for a, b in zip(runs["cached"], other, strict=True))


def test_cached_steps_with_a_side_input_give_the_full_forwards_logits():
    model = tiny(mem_len=40, side_size=3)
    tokens = torch.randint(0, VOCAB, (2, 25))
    side = RunningSum(2)(tokens)
    full = model(tokens, side=side)[0]
    _, _, mems = model(tokens[:, :5], side=side[:, :5])
    cache = decode_cache(model, mems)
    steps = torch.stack([model.step(tokens[:, t], cache, side[:, t : t + 1]) for t in range(5, 25)], dim=1)
    torch.testing.assert_close(steps, full[:, 5:], rtol=0, atol=1e-10)


def test_bf16_decodes_faster_times_both_and_leaves_the_model_as_it_was():
    from model.sampling import bf16_decodes_faster

    model = tiny(side_size=3).float().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert isinstance(bf16_decodes_faster(model, rows=2, steps=2), bool)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_forced_ids_replace_the_sampled_ones_and_the_rule_sees_each_steps_ids():
    model = sharp(tiny(mem_len=40))
    prompt = torch.randint(0, VOCAB, (2, 3))
    free = generate(model, prompt, 12, generator=[seeded(1), seeded(2)])
    seen = []

    def forced(previous: torch.Tensor | None) -> torch.Tensor:
        seen.append(None if previous is None else previous.clone())
        step = len(seen) - 1
        return torch.tensor([7, -1]) if step in (2, 5) else torch.tensor([-1, -1])

    ruled = generate(model, prompt, 12, generator=[seeded(1), seeded(2)], forced=forced)
    assert ruled[0][2] == 7 and ruled[0][5] == 7 and torch.equal(ruled[0][:2], free[0][:2])
    assert not torch.equal(ruled[0][3:], free[0][3:])  # the model reads the forced id like its own
    assert torch.equal(ruled[1], free[1])  # a row left free samples exactly what it would have
    assert seen[0] is None and all(torch.equal(seen[i + 1], torch.stack([r[i] for r in ruled])) for i in range(11))


def test_draws_give_each_row_its_own_generators_numbers_across_blocks():
    draws = Draws([seeded(1), seeded(2)], rows=2, device=torch.device("cpu"), block=3)
    got = torch.stack([draws() for _ in range(7)], dim=1)  # three blocks: 3 + 3 + 1
    for row, seed in enumerate((1, 2)):
        alone = seeded(seed)
        expected = torch.cat([torch.rand(3, generator=alone) for _ in range(3)])[:7]
        assert torch.equal(got[row], expected)
    with pytest.raises(ValueError, match="3 generators for 2 rows"):
        Draws([seeded(1)] * 3, rows=2, device=torch.device("cpu"))


def test_draw_inverts_the_cumulative_probability_and_never_picks_an_impossible_id():
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf"), 0.0, float("-inf")]]).repeat(4, 1)
    uniform = torch.tensor([0.0, 0.49, 0.51, 1 - 1e-7])  # 1 - u: 1.0, 0.51, 0.49, ~0
    assert draw(logits, uniform).tolist() == [3, 3, 1, 1]


def test_the_loop_stops_within_done_every_steps_of_the_last_row_ending():
    model = tiny()
    with torch.no_grad():
        model.out_bias[7] = 50.0  # every row samples id 7 at once
    calls = []
    rows = generate(model, torch.randint(0, VOCAB, (3, 2)), 100, generator=seeded(1), stop_token=7,
                    stop=lambda ids: calls.append(ids) or torch.zeros(3, dtype=torch.bool))  # fmt: skip
    assert [r.tolist() for r in rows] == [[7]] * 3 and len(calls) == DONE_EVERY < 100


def test_progress_sees_every_done_every_steps_a_growing_prefix_of_the_sample():
    model = tiny()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    seen = []
    rows = generate(
        model, prompt, 3 * DONE_EVERY + 5, generator=seeded(1), progress=lambda ids: seen.append(ids.clone())
    )
    assert [ids.shape for ids in seen] == [(2, k * DONE_EVERY) for k in (1, 2, 3)]
    for ids in seen:
        assert all(torch.equal(ids[r], rows[r][: ids.size(1)]) for r in range(2))
    assert torch.equal(torch.stack(generate(model, prompt, 3 * DONE_EVERY + 5, generator=seeded(1))), torch.stack(rows))
