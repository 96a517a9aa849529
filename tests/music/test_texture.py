"""Register, density, polyphony and durations of a stretch of music, against direct counts and a fine piano roll."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.music.texture import HIGH_PITCH, LONG_NOTE_S, TEXTURE, set_texture, texture, window


def random_notes(rng: np.random.Generator, n: int, seconds: float) -> dict[str, np.ndarray]:
    onset = np.sort(rng.uniform(0, seconds, n))
    return {"onset": onset, "offset": onset + rng.exponential(1.0, n), "pitch": rng.integers(40, 109, n),
            "velocity": rng.integers(20, 100, n)}  # fmt: skip


def test_texture_against_a_piano_roll() -> None:
    rng = np.random.default_rng(0)
    notes = random_notes(rng, 120, 20.0)
    got = texture(notes, 20.0)
    # A 1 ms roll: at each instant, how many notes sound; polyphony is its mean over the instants where any does.
    grid = np.arange(0, notes["offset"].max() + 0.01, 0.001)
    sounding = ((grid[:, None] >= notes["onset"]) & (grid[:, None] < notes["offset"])).sum(axis=1)
    assert got["polyphony"] == pytest.approx(sounding[sounding > 0].mean(), rel=2e-3)
    duration = notes["offset"] - notes["onset"]
    assert got["mean_pitch"] == pytest.approx(notes["pitch"].mean())
    assert got["high_share"] == pytest.approx(np.mean(notes["pitch"] >= 96))
    assert got["notes_per_second"] == pytest.approx(6.0)
    assert got["note_duration"] == pytest.approx(duration.mean())
    assert got["long_share"] == pytest.approx(np.mean(duration > LONG_NOTE_S))


def test_a_chord_of_three_held_alone_is_polyphony_three() -> None:
    chord = {"onset": np.zeros(3), "offset": np.full(3, 2.0), "pitch": np.array([60, 64, HIGH_PITCH])}
    apart = {"onset": np.array([0.0, 5.0]), "offset": np.array([1.0, 6.0]), "pitch": np.array([60, 62])}
    assert texture(chord, 10.0)["polyphony"] == pytest.approx(3.0)
    assert texture(chord, 10.0)["high_share"] == pytest.approx(1 / 3)
    assert texture(apart, 10.0)["polyphony"] == pytest.approx(1.0)  # the silence between does not count
    empty = texture({"onset": np.zeros(0), "offset": np.zeros(0), "pitch": np.zeros(0)}, 10.0)
    assert empty["notes_per_second"] == 0
    assert all(np.isnan(empty[name]) for name in TEXTURE if name != "notes_per_second")


def test_set_texture_pools_shares_over_notes_and_spreads_the_mean_pitch() -> None:
    low = {"onset": np.arange(4.0), "offset": np.arange(4.0) + 6, "pitch": np.full(4, 50)}  # every note long
    high = {"onset": np.arange(12.0), "offset": np.arange(12.0) + 0.5, "pitch": np.full(12, 100)}
    got = set_texture([low, high], 20.0)
    assert got["high_share"] == pytest.approx(12 / 16) and got["long_share"] == pytest.approx(4 / 16)
    assert got["mean_pitch"] == pytest.approx(75.0) and got["mean_pitch_spread"] == pytest.approx(25.0)
    assert got["notes_per_second"] == pytest.approx((4 + 12) / 2 / 20) and got["pieces"] == 2


def test_window_cuts_and_shifts() -> None:
    notes = {"onset": np.array([1.0, 29.0, 31.0, 65.0]), "offset": np.array([2.0, 40.0, 33.0, 70.0]),
             "pitch": np.array([60, 61, 62, 63])}  # fmt: skip
    second = window(notes, 30.0, 30.0)
    assert second["pitch"].tolist() == [62] and second["onset"].tolist() == [1.0] and second["offset"].tolist() == [3.0]
    first = window(notes, 0.0, 30.0)
    assert first["offset"].tolist() == [2.0, 30.0]  # the note that crosses the window's end is cut there


def test_window_holds_a_note_at_its_start_and_leaves_one_at_its_end_to_the_next() -> None:
    notes = {"onset": np.array([0.0, 30.0, 60.0]), "offset": np.array([1.0, 31.0, 61.0]),
             "pitch": np.array([60, 61, 62])}  # fmt: skip
    assert window(notes, 0.0, 30.0)["pitch"].tolist() == [60]
    second = window(notes, 30.0, 30.0)
    assert second["pitch"].tolist() == [61] and second["onset"].tolist() == [0.0]  # [start, start + seconds)


def test_a_note_of_exactly_long_note_s_is_not_long() -> None:
    notes = {"onset": np.array([0.0, 1.0]), "offset": np.array([LONG_NOTE_S, 1.0 + LONG_NOTE_S + 0.5]),
             "pitch": np.array([60, 62])}  # fmt: skip
    assert texture(notes, 10.0)["long_share"] == pytest.approx(0.5)  # "over" LONG_NOTE_S: 5.0 s itself is not


def test_an_empty_stretch_counts_in_density_but_not_in_the_means_it_leaves_undefined() -> None:
    full = {"onset": np.arange(10.0), "offset": np.arange(10.0) + 0.5, "pitch": np.full(10, 60)}
    empty = {"onset": np.zeros(0), "offset": np.zeros(0), "pitch": np.zeros(0, int)}
    got = set_texture([full, empty], 10.0)
    assert got["notes_per_second"] == pytest.approx(0.5)  # 1 and 0 notes per second
    assert got["mean_pitch"] == pytest.approx(60.0) and got["polyphony"] == pytest.approx(1.0)
    assert got["note_duration"] == pytest.approx(0.5) and got["mean_pitch_spread"] == pytest.approx(0.0)


def test_a_note_that_ends_before_it_starts_lasts_nothing() -> None:
    notes = {"onset": np.array([1.0, 2.0]), "offset": np.array([0.5, 3.0]), "pitch": np.array([60, 62])}
    assert texture(notes, 10.0)["note_duration"] == pytest.approx(0.5)  # (0 + 1) / 2
