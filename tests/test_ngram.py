"""The n-gram baselines: Kneser–Ney against values worked out by hand and against a plain reference, and as a
distribution that sums to one."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from pipeline.ngram import KneserNey, modified_discounts, piece_positions, unigram_log_probs

S, A, B, C = 0, 1, 2, 3  # a four-token vocabulary; S opens every piece


def flat(pieces: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([np.array(p) for p in pieces]), np.array([len(p) for p in pieces])


def test_a_bigram_model_worked_out_by_hand():
    model = KneserNey(2, 4, S).fit(*flat([[S, A, B, A, B, C], [S, A, C]]))
    # Bigrams (raw counts at the top order): SA 2, AB 2, BA 1, BC 1, AC 1. No count is 3 (n3 = 0), so the discounts
    # cannot be estimated and are KenLM's fallback: D1 = 0.5, D2 = 1, D3+ = 1.5.
    # Unigrams (continuation counts): A 2 (after S, B), B 1 (after A), C 2 (after B, A), total 5; fallback again.
    # Their backoff mass, (0.5·1 + 1·2) / 5 = 0.5, is spread uniformly over the four ids: 0.125 each.
    p_a, p_b, p_c, p_s = (2 - 1) / 5 + 0.125, (1 - 0.5) / 5 + 0.125, (2 - 1) / 5 + 0.125, 0.125
    assert p_a + p_b + p_c + p_s == pytest.approx(1, abs=1e-15)
    # After A: AB 2, AC 1, total 3, backoff (1 + 0.5) / 3. After B: BA 1, BC 1, backoff (0.5 + 0.5) / 2.
    p_b_after_a = (2 - 1) / 3 + 1.5 / 3 * p_b
    p_c_after_a = (1 - 0.5) / 3 + 1.5 / 3 * p_c
    p_a_after_b = (1 - 0.5) / 2 + 1 / 2 * p_a
    p_a_after_s = (2 - 1) / 2 + 1 / 2 * p_a
    expected = [p_a_after_s, p_b_after_a, p_a_after_b, p_c_after_a, p_c]  # C was never followed: unigram only
    got = np.exp(model.log_probs(*flat([[S, A, B, A, C, C]])))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_discounts_follow_chen_and_goodman_and_fall_back_like_kenlm():
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [9] * 5)  # n1 = 10, n2 = 4, n3 = 2, n4 = 1
    y = 10 / (10 + 2 * 4)
    expected = [0, 1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2]
    np.testing.assert_allclose(modified_discounts(counts), expected, rtol=1e-12)
    assert modified_discounts(np.array([5, 7, 9])).tolist() == [0, 0.5, 1.0, 1.5]  # n1 = 0
    assert modified_discounts(np.array([1, 2, 3, 3, 3])).tolist() == [0, 0.5, 1.0, 1.5]  # D2 = 2 - 3·(1/3)·3 < 0
    zero = np.array([1] * 6 + [2] * 3 + [3] * 4)  # D2 = 2 - 3·(1/2)·4/3 = 0: a context seen twice would keep no mass
    assert modified_discounts(zero).tolist() == [0, 0.5, 1.0, 1.5]


def test_no_id_gets_probability_zero_and_short_train_pieces_are_no_error():
    # Context 1 is only ever followed by 2, twice; every other id must still be possible after it.
    pieces = [[S, 1, 2], [S, 1, 2]] + [[S, 3, 3, 3, 3, 3, 3, 3]] * 3
    for order in (2, 9):  # no train piece is long enough for order 9
        model = KneserNey(order, 4, S).fit(*flat(pieces))
        log_probs = model.log_probs(*flat([[S, *[3] * 9, 1, w] for w in range(4)]))  # longer than any train piece
        assert np.all(np.isfinite(log_probs))


def reference_kneser_ney(pieces: list[list[int]], order: int, vocab_size: int, start: int):  # noqa: ANN201
    """Interpolated modified Kneser–Ney written plainly with dictionaries, for small corpora."""
    raw = [Counter() for _ in range(order + 1)]
    for piece in pieces:
        for i in range(1, len(piece)):
            for k in range(1, min(order, i + 1) + 1):
                raw[k][tuple(piece[i - k + 1 : i + 1])] += 1
    adjusted = {order: raw[order]}
    for k in range(1, order):
        adjusted[k] = Counter(
            {g: c if g[0] == start else len({h[0] for h in raw[k + 1] if h[1:] == g}) for g, c in raw[k].items()}
        )
    discounts = {}
    for k in range(1, order + 1):
        n = [sum(1 for c in adjusted[k].values() if c == j) for j in (1, 2, 3, 4)]
        d = [0.0, 0.5, 1.0, 1.5]
        if n[0] and n[1] and n[2]:
            y = n[0] / (n[0] + 2 * n[1])
            estimate = [0.0] + [j - (j + 1) * y * n[j] / n[j - 1] for j in (1, 2, 3)]
            d = estimate if all(0 <= estimate[j] <= j for j in (1, 2, 3)) else d
        discounts[k] = d

    def prob(word: int, context: tuple) -> float:
        p = 1 / vocab_size
        for k in range(1, len(context) + 2):
            history = context[len(context) - k + 1 :] if k > 1 else ()
            grams = {g: c for g, c in adjusted[k].items() if g[:-1] == history}
            total = sum(grams.values())
            if total == 0:
                continue
            d = discounts[k]
            count = grams.get((*history, word), 0)
            backoff = sum(d[min(c, 3)] for c in grams.values()) / total
            p = max(count - d[min(count, 3)], 0) / total + backoff * p
        return p

    return prob


def random_pieces(rng: np.random.Generator, count: int, vocab_size: int) -> list[list[int]]:
    """Pieces opened by token 0, from a skewed Markov chain so that some n-grams repeat and others are rare."""
    step = rng.dirichlet(np.full(vocab_size - 1, 0.3), size=vocab_size)
    pieces = []
    for _ in range(count):
        piece = [0]
        for _ in range(int(rng.integers(1, 30))):
            piece.append(1 + int(rng.choice(vocab_size - 1, p=step[piece[-1]])))
        pieces.append(piece)
    return pieces


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_equals_a_plain_reference(order):
    rng = np.random.default_rng(order)
    train, held_out = random_pieces(rng, 40, 9), random_pieces(rng, 8, 9)
    model = KneserNey(order, 9, 0).fit(*flat(train))
    reference = reference_kneser_ney(train, order, 9, 0)
    expected = [
        math.log(reference(piece[i], tuple(piece[max(0, i - order + 1) : i])))
        for piece in held_out
        for i in range(1, len(piece))
    ]
    np.testing.assert_allclose(model.log_probs(*flat(held_out)), expected, rtol=1e-10)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_probabilities_sum_to_one_over_the_vocabulary(order):
    rng = np.random.default_rng(10 + order)
    vocab_size = 12
    model = KneserNey(order, vocab_size, 0).fit(*flat(random_pieces(rng, 60, vocab_size)))
    contexts = [[0], [0, 3], [0, 5, 5, 5, 5], [0, 11, 11, 11, 11, 11]] + [
        [0, *rng.integers(1, vocab_size, size=int(rng.integers(1, 8))).tolist()] for _ in range(30)
    ]
    for context in contexts:  # seen, unseen and partly seen, some shorter than the order near the piece start
        candidates = [[*context, word] for word in range(vocab_size)]
        log_probs = model.log_probs(*flat(candidates))
        last = np.cumsum([len(c) - 1 for c in candidates]) - 1  # each candidate's final token
        assert abs(np.exp(log_probs[last]).sum() - 1) < 1e-12, context


def test_contexts_stop_at_the_start_of_each_piece():
    model = KneserNey(3, 4, S).fit(*flat([[S, A, B, C], [S, B, B, A, C]]))
    together = model.log_probs(*flat([[S, A, B], [S, C, A, A]]))
    apart = np.concatenate([model.log_probs(*flat([[S, A, B]])), model.log_probs(*flat([[S, C, A, A]]))])
    np.testing.assert_array_equal(together, apart)
    assert len(together) == 2 + 3  # the opening token of each piece is never predicted


def test_unigram_is_add_one_smoothed_over_predicted_tokens():
    log_probs = unigram_log_probs(*flat([[S, A, A, B], [S, A]]), vocab_size=4)
    np.testing.assert_allclose(np.exp(log_probs), np.array([0 + 1, 3 + 1, 1 + 1, 0 + 1]) / (4 + 4))
    assert piece_positions(np.array([3, 1, 2])).tolist() == [0, 1, 2, 0, 0, 1]


def test_an_order_too_high_for_int64_keys_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        KneserNey(8, 390, 388)
