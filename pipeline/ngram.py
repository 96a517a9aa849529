"""Baseline language models over token ids, fit and scored with numpy: uniform, unigram, and interpolated modified
Kneser–Ney n-grams (Chen & Goodman 1999, with KenLM's counts at sequence starts).

Sequences are pieces, each opened by a start token that is never predicted; a context never reaches into the
previous piece. Imports only numpy and the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def piece_positions(lengths: np.ndarray) -> np.ndarray:
    """Each token's position within its piece, for pieces of `lengths` laid end to end."""
    lengths = np.asarray(lengths, np.int64)
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def uniform_nll(vocab_size: int) -> float:
    """Nats per token of the model that gives every id the same probability."""
    return math.log(vocab_size)


def unigram_log_probs(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(id) from the predicted tokens (all but each piece's first), with add-one smoothing."""
    targets = np.asarray(tokens)[piece_positions(lengths) >= 1]
    counts = np.bincount(targets, minlength=vocab_size) + 1.0
    return np.log(counts / counts.sum())


def _gram_keys(tokens: np.ndarray, at: np.ndarray, k: int, base: int) -> np.ndarray:
    """The k tokens ending at each position of `at`, as one integer (the oldest token most significant)."""
    key = np.zeros(len(at), np.int64)
    for j in range(k - 1, -1, -1):
        key = key * base + tokens[at - j]
    return key


FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback, for counts too few or odd to estimate from


def modified_discounts(counts: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] from the counts of counts n1..n4 (Chen & Goodman's eq. 26): Y = n1 / (n1 + 2 n2),
    Dc = c - (c + 1) Y n(c+1) / nc. As in KenLM, where n1, n2 or n3 is zero or an estimate leaves (0, c], the
    fallback discounts are used instead. Every discount is then above zero, so every context keeps some mass for
    the order below, and no id has probability 0."""
    n = [int(np.count_nonzero(counts == c)) for c in (1, 2, 3, 4)]
    if min(n[:3]) == 0:
        return np.array([0.0, *FALLBACK_DISCOUNTS])
    y = n[0] / (n[0] + 2 * n[1])
    estimates = [c - (c + 1) * y * n[c] / n[c - 1] for c in (1, 2, 3)]
    if any(not 0 < d <= c for c, d in zip((1, 2, 3), estimates, strict=True)):  # a zero would give mass 0 below
        return np.array([0.0, *FALLBACK_DISCOUNTS])
    return np.array([0.0, *estimates])


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray, missing: int = 0) -> np.ndarray:
    """The value of each query's key in sorted `keys`, or `missing` where the key is absent."""
    if len(keys) == 0:
        return np.full(len(queries), missing, np.asarray(values).dtype)
    i = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[i] == queries, values[i], missing)


@dataclass
class _Order:
    """One order's tables: sorted n-gram keys with adjusted counts, sorted contexts with their totals."""

    grams: np.ndarray
    counts: np.ndarray  # adjusted: raw at the top order and after the start token, continuation counts below
    contexts: np.ndarray
    totals: np.ndarray  # sum of the adjusted counts of each context's n-grams
    backoff: np.ndarray  # D1·N1 + D2·N2 + D3+·N3+ of each context: the mass given to the order below
    discounts: np.ndarray  # [0, D1, D2, D3+]


class KneserNey:
    """An interpolated modified Kneser–Ney model of `order` over ids below `vocab_size`; the lowest order is
    interpolated with the uniform distribution, so every id has a probability above zero."""

    def __init__(self, order: int, vocab_size: int, start_token: int) -> None:
        if order < 1 or vocab_size**order >= 2**62:
            raise ValueError(f"n-gram order {order} is out of range for a vocabulary of {vocab_size}")
        self.order, self.vocab_size, self.start_token = order, vocab_size, start_token
        self.orders: list[_Order] = []

    def fit(self, tokens: np.ndarray, lengths: np.ndarray) -> KneserNey:
        """Count the pieces (laid end to end, each `lengths[i]` long and opened by the start token)."""
        tokens = np.asarray(tokens, np.int64)
        pos = piece_positions(lengths)
        base = self.vocab_size
        raw = {}
        for k in range(1, self.order + 1):
            at = np.flatnonzero((pos >= k - 1) & (pos >= 1))  # k-grams inside a piece that end on a predicted token
            raw[k] = np.unique(_gram_keys(tokens, at, k, base), return_counts=True)
        self.orders = []
        for k in range(1, self.order + 1):
            grams, counts = raw[k]
            if k < self.order:
                # Continuation counts: how many different tokens precede the k-gram. A k-gram that opens with the
                # start token can have nothing before it, so it keeps its raw count, as KenLM does.
                suffixes, preceded = np.unique(raw[k + 1][0] % base**k, return_counts=True)
                continuation = _lookup(suffixes, preceded, grams)
                opens = grams // base ** (k - 1) == self.start_token
                counts = np.where(opens, counts, continuation)
            self.orders.append(self._order_tables(grams, counts, base))
        return self

    @staticmethod
    def _order_tables(grams: np.ndarray, counts: np.ndarray, base: int) -> _Order:
        """The order's discounts, and each context's total count and backoff mass."""
        discounts = modified_discounts(counts)
        contexts, first = np.unique(grams // base, return_index=True)
        totals = np.add.reduceat(counts, first).astype(np.float64) if len(first) else np.zeros(0)
        discount = discounts[np.minimum(counts, 3)]
        backoff = np.add.reduceat(discount, first) if len(first) else np.zeros(0)
        return _Order(grams, counts, contexts, totals, backoff, discounts)

    def log_probs(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """log p(token | up to order - 1 earlier tokens of its piece) for every token but each piece's first."""
        tokens = np.asarray(tokens, np.int64)
        pos = piece_positions(lengths)
        at = np.flatnonzero(pos >= 1)
        prob = np.full(len(at), 1.0 / self.vocab_size)
        for k, tables in enumerate(self.orders, start=1):
            if len(tables.contexts) == 0:  # no piece of the train split was this long
                continue
            use = np.flatnonzero(pos[at] >= k - 1)  # the context of k - 1 tokens lies within the piece
            grams = _gram_keys(tokens, at[use], k, self.vocab_size)
            context = _lookup(tables.contexts, np.arange(len(tables.contexts)), grams // self.vocab_size, -1)
            c = np.maximum(context, 0)
            seen = (context >= 0) & (tables.totals[c] > 0)
            count = _lookup(tables.grams, tables.counts, grams)
            total = np.where(seen, tables.totals[c], 1.0)
            higher = (count - tables.discounts[np.minimum(count, 3)] + tables.backoff[c] * prob[use]) / total
            prob[use] = np.where(seen, higher, prob[use])  # an unseen context leaves the order below as it is
        return np.log(prob)
