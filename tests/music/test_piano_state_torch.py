"""The piano state on the torch device against the numpy reference, bit for bit in float32: on random and real token
streams, cut at any boundary, one token at a time, with rows dropped; a fixed number of torch operations per call
whatever its length; and the note-length rule against one written from the numpy state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MAESTRO_ASAP, require
from test_piano_state import capped_streams, random_tokens
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.generation.decoding import NoteLimit
from pipeline.music.performance_encoding import NOTE_OFF, STEP_S, TIME_SHIFT, encode
from pipeline.music.piano_state import PianoState as Reference
from pipeline.music.piano_state_torch import PianoState
from pipeline.music.texture import TRACK_COLUMNS


def in_parts(tokens: np.ndarray, cuts: list[int]) -> np.ndarray:
    """The torch state's features of `tokens` [rows, time], fed in the parts that `cuts` makes."""
    state, bounds = PianoState(len(tokens)), [0, *cuts, tokens.shape[1]]
    parts = [state(torch.from_numpy(tokens[:, a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(parts, dim=1).numpy()


CUTS = [[], [1], [7, 8, 300], [512, 1024, 1536], [1023, 1025, 2500], list(range(5, 3000, 331))]


@pytest.mark.parametrize("cuts", CUTS)
def test_any_cut_of_a_random_stream_gives_the_numpy_state(cuts):
    tokens = random_tokens(np.random.default_rng(len(cuts)), 3, 3000)
    reference = Reference(3)(tokens)
    got = in_parts(tokens, cuts)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, reference)
    assert reference[..., :128].sum() > 1000 and (reference[..., 128:256] == 1).any()  # keys sound, some over 10 s


@pytest.mark.parametrize("stream", [0, 1])
def test_the_piece_figures_past_their_caps_are_the_numpy_state(stream):
    tokens = capped_streams()[stream][None]
    np.testing.assert_array_equal(in_parts(tokens, [tokens.shape[1] // 2]), Reference(1)(tokens))
    state = PianoState(1)
    state(torch.from_numpy(tokens[:, :-40]))  # the last 40 tokens, stepped one at a time, pass or follow a cap
    stepped = torch.cat(
        [state(torch.from_numpy(tokens[:, t : t + 1])) for t in range(tokens.shape[1] - 40, tokens.shape[1])], dim=1
    )
    np.testing.assert_array_equal(stepped.numpy(), Reference(1)(tokens)[:, -40:])


def test_one_token_at_a_time_gives_the_numpy_state():
    tokens = random_tokens(np.random.default_rng(9), 4, 700)
    state = PianoState(4)
    one_by_one = torch.cat([state(torch.from_numpy(tokens[:, t : t + 1])) for t in range(700)], dim=1)
    np.testing.assert_array_equal(one_by_one.numpy(), Reference(4)(tokens))


def test_dropping_rows_keeps_the_others_state():
    tokens = random_tokens(np.random.default_rng(3), 3, 400)
    state, reference = PianoState(3), Reference(3)
    state(torch.from_numpy(tokens[:, :200]))
    reference(tokens[:, :200])
    state.keep(2)
    reference.keep(2)
    np.testing.assert_array_equal(state(torch.from_numpy(tokens[:2, 200:])).numpy(), reference(tokens[:2, 200:]))


def test_a_real_performance_in_segments_gives_the_numpy_state():
    from pipeline.music.midi import read_performance

    paths = sorted(require(MAESTRO_ASAP).rglob("*.mid*"))[:2]
    for path in paths:
        perf = read_performance(path)
        tokens, _ = encode(np.zeros(len(perf.onset), np.int64), perf.onset, perf.offset, perf.pitch, perf.velocity)
        tokens = tokens.astype(np.int64)[None, :6000]
        np.testing.assert_array_equal(in_parts(tokens, list(range(512, 6000, 512))), Reference(1)(tokens))


class OpCount(TorchDispatchMode):
    """Counts the torch operations that run."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("lengths", [(2, 64), (64, 512)])
@pytest.mark.parametrize(("tracked", "most"), [(False, 110), (True, 185)])  # 105 and 178 today
def test_the_operations_per_call_do_not_grow_with_its_length(lengths, tracked, most):
    counts = []
    for length in lengths:
        track = torch.rand(4, 3, TRACK_COLUMNS) * 100 if tracked else None  # a track's plan costs operations of its own
        state, tokens = (
            PianoState(4, texture=track),
            torch.from_numpy(random_tokens(np.random.default_rng(0), 4, 2 * length)),
        )
        state(tokens[:, :length])  # the second call carries state, as every segment after the first does
        with OpCount() as count:
            state(tokens[:, length:])
        counts.append(count.ops)
    assert counts[0] == counts[1] < most
    with OpCount() as count:
        state(tokens[:, :1])
    assert count.ops < 0.6 * counts[0]  # a sampled token takes the short path: 47 and 102 operations today


def reference_rule(tokens: np.ndarray, opening: int, seconds: float) -> list[np.ndarray]:
    """The note-length rule from the numpy state: per step, the NOTE_OFF of the longest-held key held `seconds` or
    longer (-1: none), after the opening and then after each further token."""
    state, out = Reference(len(tokens)), []
    state(tokens[:, :opening])
    for t in range(opening, tokens.shape[1] + 1):
        if t > opening:
            state.step(tokens[:, t - 1])
        held = state.seconds_held()
        longest = held.argmax(axis=1)
        over = held[np.arange(len(held)), longest] >= seconds - 1e-9
        out.append(np.where(over, NOTE_OFF + longest, -1))
    return out


@pytest.mark.parametrize("seconds", [0.5, 2.0, 5.0])
def test_the_note_length_rule_on_the_device_is_the_one_of_the_numpy_state(seconds):
    tokens = random_tokens(np.random.default_rng(int(seconds * 10)), 5, 900)
    expected = reference_rule(tokens, 100, seconds)
    rule = NoteLimit(torch.from_numpy(tokens[:, :100]), seconds)
    got = [rule(None)] + [rule(torch.from_numpy(tokens[:, t])) for t in range(100, 900)]
    np.testing.assert_array_equal(torch.stack(got).numpy(), np.stack(expected))
    assert (np.stack(expected) >= 0).sum() > 50  # the rule does fire


def test_the_note_length_rule_fires_at_the_limit_and_not_a_step_before():
    held = [[60, TIME_SHIFT + 98]]  # a key struck, then 99 steps: 0.99 s
    rule = NoteLimit(torch.tensor(held), 1.0)
    assert rule(None).tolist() == [-1]
    assert rule(torch.tensor([TIME_SHIFT])).tolist() == [NOTE_OFF + 60]  # one step more: 1.00 s
    assert round(100 * STEP_S, 9) == 1.0
