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


def test_the_bands_join_each_keys_two_features_to_the_key_tokens_they_name_by_interval():
    import torch

    from pipeline.music.performance_encoding import NOTE_OFF

    for reach, reached in (("relative", range(2 * NOTE_OFF)), ("all_relative_release", range(NOTE_OFF, 2 * NOTE_OFF))):
        model = build_model(vocab(), model_section({**SHAPE, "state_input": True, "state_logits": reach}))
        with torch.no_grad():
            model.side_bands.copy_(torch.arange(1.0, model.side_bands.numel() + 1).reshape(model.side_bands.shape))
        weight = model._band_weight()  # the dense weights stay at zero: the bands alone
        for feature in (60, 128 + 60):  # key 60 sounding, and key 60's held time
            tokens = set(torch.nonzero(weight[:, feature]).flatten().tolist())
            assert tokens == set(reached), (reach, feature)
            start = reached[0]  # key 60 to key 63 (3 up) shares its weight with key 61 to key 64
            assert weight[start + 63, feature] == weight[start + 64, feature + 1] != weight[start + 62, feature]
