"""The side input's direct term with no pairs at all, and pairs that name a token past the vocabulary."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny


def test_no_side_logit_pairs_is_no_direct_term_and_a_token_past_the_vocabulary_is_refused():
    model = tiny(side_size=6, side_logit_pairs=[])
    with torch.no_grad():
        model.side_logits.weight.normal_()
    core, side = torch.randn(2, 5, 32, dtype=torch.float64), torch.rand(2, 5, 6, dtype=torch.float64)
    assert torch.equal(model._logits(core, side), model._logits(core, None))  # [] is none, not every pair
    with pytest.raises(ValueError, match="with tokens below 50"):
        tiny(side_size=6, side_logit_pairs=[[0, 50]])
