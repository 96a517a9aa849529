"""Sequences laid end to end in a row (seq_pos) against each sequence alone, and the side input's wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import TransformerXL, TransformerXLConfig

BACKENDS = [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]  # the plain and the fused attention kernels


def _seq_pos(lengths: list[int]) -> torch.Tensor:
    """Each position's index in its own sequence, for sequences of these lengths laid end to end."""
    return torch.cat([torch.arange(n) for n in lengths])


def _row_losses(
    model: TransformerXL, row: torch.Tensor, side: torch.Tensor | None, lengths: list[int], masked: bool = True
) -> torch.Tensor:
    """Per-token losses of one row [1, T] trained as the train stage does: segments of tgt_len, memory carried."""
    pos, n, mems, losses = _seq_pos(lengths)[None], model.cfg.tgt_len, None, []
    for a in range(0, row.size(1) - 1, n):
        x, y = row[:, a : a + n], row[:, a + 1 : a + n + 1]
        x, p = x[:, : y.size(1)], pos[:, a : a + y.size(1)] if masked else None
        s = None if side is None else side[:, a : a + y.size(1)]
        logits, _, mems = model(x, mems=mems, side=s, seq_pos=p)
        losses.append(F.cross_entropy(logits[0], y[0], reduction="none"))
    return torch.cat(losses)


def _alone_losses(model: TransformerXL, piece: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
    """Per-token losses of one sequence scored alone in one pass from an empty memory (the evaluation protocol; the
    memory is longer than the piece, so every token sees all of it both ways)."""
    logits, _, _ = model(piece[None, :-1], side=None if side is None else side[None, :-1])
    return F.cross_entropy(logits[0], piece[1:], reduction="none")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side_size", [0, 3])
@pytest.mark.parametrize(
    "lengths",
    [
        [5, 12, 9],  # boundaries inside segments, and a piece that spans a segment edge
        [8, 8, 7],  # boundaries exactly at segment edges (tgt_len 8)
        [3, 20, 6],  # a piece that begins while the memory still holds the piece before
    ],
)
def test_a_piece_inside_a_row_scores_as_it_does_alone(backend, side_size, lengths):
    model = tiny(mem_len=24, side_size=side_size, tgt_len=8)  # the memory reaches back over any whole piece
    g = torch.Generator().manual_seed(sum(lengths))
    pieces = [torch.randint(0, 50, (n,), generator=g) for n in lengths]
    sides = [torch.randn(n, side_size, generator=g, dtype=torch.float64) for n in lengths] if side_size else None
    row = torch.cat(pieces)[None]
    side = torch.cat(sides)[None] if sides else None
    with torch.no_grad(), sdpa_kernel([backend]):
        in_row = _row_losses(model, row, side, lengths)
        starts = _seq_pos(lengths).eq(0).nonzero()[:, 0].tolist() + [row.size(1)]
        for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
            alone = _alone_losses(model, pieces[i], None if sides is None else sides[i])
            # The row predicts a piece's tokens from its second on; its first token follows the previous piece.
            torch.testing.assert_close(in_row[a : b - 1], alone, rtol=0, atol=1e-10, msg=f"piece {i} of {lengths}")
        # Without seq_pos the later pieces do see the earlier ones, so the test above is not vacuous.
        unmasked = _row_losses(model, row, side, lengths, masked=False)
    assert torch.equal(unmasked[: lengths[0] - 1], in_row[: lengths[0] - 1])
    assert not torch.allclose(unmasked[lengths[0] :], in_row[lengths[0] :])


@pytest.mark.parametrize("offset", [0, 3])
def test_a_piece_longer_than_the_memory_scores_as_alone_exactly_while_its_window_holds_all_of_it(offset):
    """Past the first segment, what a token sees depends on where the segments fall (Transformer-XL's window of
    mem_len states plus the segment so far). Each token of the piece is scored as in one pass over the piece alone
    exactly where its segment starts at most mem_len after the piece does, so that all of the piece so far is in
    view (its memory's states saw all of theirs too), and not beyond."""
    model = tiny(mem_len=8, tgt_len=8)
    with torch.no_grad():  # weights large enough that a token's far past shows in its score
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    lengths = [offset, 40, 5] if offset else [40, 5]
    g = torch.Generator().manual_seed(7)
    pieces = [torch.randint(0, 50, (n,), generator=g) for n in lengths]
    row = torch.cat(pieces)[None]
    first = offset  # where the long piece starts in the row
    with torch.no_grad():
        in_row = _row_losses(model, row, None, lengths)[first : first + 39]
        alone = _alone_losses(model, pieces[-2], None)
    t = torch.arange(39)  # each predicting token's place in the piece
    segment_start = (first + t) // 8 * 8
    whole = segment_start - 8 <= first
    assert whole.sum() >= 8 and (~whole).sum() >= 8  # both kinds of token are there
    torch.testing.assert_close(in_row[whole], alone[whole], rtol=0, atol=1e-10)
    assert (in_row[~whole] - alone[~whole]).abs().min() > 1e-6  # every later token sees less, and scores otherwise


def test_seq_pos_counting_from_the_row_start_changes_nothing():
    model = tiny()
    tokens = torch.randint(0, 50, (2, 8))
    plain, _, mems = model(tokens)
    counted, _, _ = model(tokens, seq_pos=torch.arange(8).repeat(2, 1))
    torch.testing.assert_close(counted, plain, rtol=0, atol=0)
    after, _, _ = model(tokens, mems=mems, seq_pos=torch.arange(8, 16).repeat(2, 1))
    torch.testing.assert_close(after, model(tokens, mems=mems)[0], rtol=0, atol=0)


def test_zero_side_layers_are_the_plain_model_and_the_side_input_is_causal():
    plain = tiny()
    with_side = TransformerXL(TransformerXLConfig(**{**plain.cfg.__dict__, "side_size": 4})).double().eval()
    side_weights = {k: v for k, v in with_side.state_dict().items() if k.startswith("side_")}
    assert sorted(side_weights) == ["side_logits.weight", "side_net.weight"]
    assert all(v.abs().sum() == 0 for v in side_weights.values())  # both start at zero
    with_side.load_state_dict({**plain.state_dict(), **side_weights}, strict=True)
    tokens, side = torch.randint(0, 50, (1, 12)), torch.randn(1, 12, 4, dtype=torch.float64)
    torch.testing.assert_close(with_side(tokens, side=side)[0], plain(tokens)[0], rtol=0, atol=0)
    for name in side_weights:  # each of the two paths on its own reaches the logits, from position t on only
        model = TransformerXL(with_side.cfg).double().eval()
        model.load_state_dict({**plain.state_dict(), **side_weights})
        with torch.no_grad():
            model.get_parameter(name).normal_()
        before = model(tokens, side=side)[0]
        changed = side.clone()
        changed[0, 7] += 1
        after = model(tokens, side=changed)[0]
        torch.testing.assert_close(after[:, :7], before[:, :7], rtol=0, atol=0)
        assert not torch.allclose(after[:, 7:8], before[:, 7:8]), name
        reaches_later = not torch.allclose(after[:, 8:], before[:, 8:])
        assert reaches_later == (name == "side_net.weight"), name  # the direct term acts at its own position only


def test_a_missing_or_misshapen_side_input_is_refused():
    model = tiny(side_size=3)
    tokens = torch.randint(0, 50, (1, 4))
    with pytest.raises(ValueError, match="side input of 3 features"):
        model(tokens)
    with pytest.raises(ValueError, match="side input must be"):
        model(tokens, side=torch.zeros(1, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="takes no side input"):
        tiny()(tokens, side=torch.zeros(1, 4, 3, dtype=torch.float64))


def test_side_logit_pairs_keep_the_direct_term_to_the_pairs_given():
    pairs = [[0, 3], [0, 7], [4, 7], [5, 49]]
    model = tiny(side_size=6, side_logit_pairs=pairs)
    dense = tiny(side_size=6)
    dense.load_state_dict(model.state_dict())  # the same weights: the dense model lets every pair through
    tokens = torch.randint(0, 50, (2, 5))
    side = torch.rand(2, 5, 6, dtype=torch.float64)
    core = torch.randn(2, 5, 32, dtype=torch.float64)
    allowed = torch.zeros(50, 6, dtype=torch.float64)
    for feature, token in pairs:
        allowed[token, feature] = 1.0
    direct = model._logits(core, side) - model._logits(core, None)
    assert torch.allclose(direct, F.linear(side, model.side_logits.weight * allowed))  # the pairs' weights only
    every = dense._logits(core, side) - dense._logits(core, None)
    assert torch.allclose(every, F.linear(side, dense.side_logits.weight))
    untouched = [t for t in range(50) if t not in (3, 7, 49)]
    assert torch.equal(direct[..., untouched], torch.zeros_like(direct[..., untouched]))
    model.train()
    logits, loss, _ = model(tokens, tokens, side=side)
    loss.backward()
    grad = model.side_logits.weight.grad
    assert torch.equal(grad * (1 - allowed), torch.zeros_like(grad)) and (grad * allowed).abs().sum() > 0
    with pytest.raises(ValueError, match="side_logit_pairs must pair features below 6"):
        tiny(side_size=6, side_logit_pairs=[[6, 0]])
