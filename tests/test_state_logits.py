"""model.state_logits: its five values only, and nothing without the state input."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.model_folder import build_model, model_section
from pipeline.music.performance_encoding import vocab

SHAPE = dict(n_layer=1, d_model=16, n_head=2, d_head=8, d_inner=32, tgt_len=8, mem_len=8)


def test_state_logits_takes_only_its_five_values_and_needs_the_state_input_to_mean_anything():
    for old in ("key", "some", True):
        values = "all, all_relative_release, relative, release, none"
        with pytest.raises(PipelineError, match=f"model.state_logits must be one of {values}"):
            model_section({**SHAPE, "state_logits": old})
    assert model_section(SHAPE)["state_logits"] == "all"
    for reach in ("all_relative_release", "relative", "release", "none"):  # without the state input: no side input
        model = build_model(vocab(), model_section({**SHAPE, "state_logits": reach}))
        assert model.cfg.side_size == 0 and model.cfg.side_logit_pairs is None and not model.cfg.side_logit_bands
