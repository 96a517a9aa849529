"""The side input's direct term with no pairs at all, pairs that name a token past the vocabulary, and bands."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny


def test_no_side_logit_pairs_is_no_direct_term_and_a_token_past_the_vocabulary_is_refused():
    model = tiny(side_size=6, side_logit_pairs=[])
    with torch.no_grad():
        model.side_logits.weight.normal_()
    core, side = torch.randn(2, 5, 32, dtype=torch.float64), torch.rand(2, 5, 6, dtype=torch.float64)
    assert torch.equal(model._logits(core, side), model._logits(core, None))  # [] is none, not every pair
    with pytest.raises(ValueError, match="with tokens below 50"):
        tiny(side_size=6, side_logit_pairs=[[0, 50]])


def test_side_logit_bands_tie_each_blocks_weights_by_distance_and_teach_every_place_from_one():
    bands = [[0, 10, 4], [2, 30, 3]]  # features 0-3 to tokens 10-13; features 2-4 to tokens 30-32
    model = tiny(side_size=6, side_logit_pairs=[], side_logit_bands=bands)
    assert model.side_bands.shape == (2, 7)  # 2 × widest - 1 distances each
    with torch.no_grad():
        model.side_bands.normal_()
    expected = torch.zeros(50, 6, dtype=torch.float64)  # from the definition, entry by entry
    for b, (f0, t0, w) in enumerate(bands):
        for t in range(w):
            for f in range(w):
                expected[t0 + t, f0 + f] += model.side_bands[b, t - f + 3].item()
    core, side = torch.randn(2, 5, 32, dtype=torch.float64), torch.rand(2, 5, 6, dtype=torch.float64)
    direct = model._logits(core, side) - model._logits(core, None)
    assert torch.allclose(direct, F.linear(side, expected))
    # A feature that is never active still gets the weights its band learns at other places.
    model.train()
    only = torch.zeros(1, 3, 6, dtype=torch.float64)
    only[..., 1] = 1.0  # feature 1 only: band 0's distances 10 - 1 + t, for tokens 10-13
    model.side_bands.grad = None
    _, loss, _ = model(torch.tensor([[11, 12, 13]]), torch.tensor([[12, 13, 10]]), side=only)
    loss.backward()
    grad = model.side_bands.grad
    assert grad[0, 2:6].abs().min() > 0 and grad[0, [0, 1, 6]].abs().sum() == 0 and grad[1].abs().sum() == 0
    trained = model._band_weight()
    assert trained[12, 3] == trained[11, 2] == trained[10, 1]  # feature 3, never active above, shares distance 9
    with pytest.raises(ValueError, match="side_logit_bands must lie within 6 features"):
        tiny(side_size=6, side_logit_bands=[[4, 0, 3]])
