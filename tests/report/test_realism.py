"""The report's register, long-form and originality figures: each against a direct computation, and a copied
passage flagged while real-like music is not."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.music.texture import set_texture, window
from pipeline.report.realism import long_form_part, originality_part, texture_part


def piece(rng: np.random.Generator, seconds: float, low: int = 48, high: int = 84, rate: float = 8.0) -> dict:
    n = int(seconds * rate)
    onset = np.sort(rng.uniform(0, seconds, n))
    return {"onset": onset, "offset": onset + rng.uniform(0.1, 1.0, n), "pitch": rng.integers(low, high, n),
            "velocity": rng.integers(30, 100, n)}  # fmt: skip


def test_a_transposed_copy_of_a_train_passage_is_flagged_and_real_like_music_is_not() -> None:
    rng = np.random.default_rng(0)
    train = [piece(rng, 60.0) for _ in range(6)]
    real = [piece(rng, 30.0) for _ in range(10)]
    source = train[3]
    copy = {key: value[100:160].copy() for key, value in source.items()}  # 60 notes, a third up, 7 s later
    copy["onset"], copy["offset"], copy["pitch"] = copy["onset"] - 7.0, copy["offset"] - 7.0, copy["pitch"] + 4
    fresh = [piece(rng, 30.0) for _ in range(3)]
    samples = {"with_rule": [("sample-01", fresh[0], 30.0), ("sample-02", copy, 30.0)]}
    lines, measured = originality_part(train, [1.0], {30.0: real}, samples)
    assert measured["with_rule"]["sample-02"] >= 60 and measured["with_rule"]["sample-01"] < 60
    assert measured["flagged"] == 1 and measured["real_openings_30s"]["largest"] < 60
    assert any("sample-02" in line and "| none |" not in line for line in lines)
    # A stretch the model trained on is indexed as such: a copy of a 5 % faster train piece, on the 10 ms grid as the
    # model's tokens put it (the stretched piece's steps, 7 s earlier), is found too.
    faster = {**copy, "onset": np.floor(source["onset"][100:160] / 1.05 * 100 + 0.5) / 100 - 7.0}
    _, stretched = originality_part(train, [1.0, 1 / 1.05], {30.0: real}, {"with_rule": [("s", faster, 30.0)]})
    _, plain = originality_part(train, [1.0], {30.0: real}, {"with_rule": [("s", faster, 30.0)]})
    assert stretched["with_rule"]["s"] >= 60 > plain["with_rule"]["s"]


def test_texture_rows_are_the_sets_figures() -> None:
    rng = np.random.default_rng(1)
    real, ruled, free = ([piece(rng, 30.0, *span) for _ in range(5)] for span in ((40, 80), (60, 100), (30, 70)))
    lines, measured = texture_part(real, {"with_rule": ruled, "without_rule": free}, 30.0)
    for name, notes in (("real_openings", real), ("with_rule", ruled), ("without_rule", free)):
        expected = set_texture(notes, 30.0)
        assert measured[name]["mean_pitch"] == pytest.approx(expected["mean_pitch"], abs=1e-4)
        assert measured[name]["mean_pitch_spread"] == pytest.approx(expected["mean_pitch_spread"], abs=1e-4)
    row = next(line for line in lines if line.startswith("| samples, with rule"))
    assert f"| {set_texture(ruled, 30.0)['mean_pitch']:.1f} |" in row


def test_long_form_measures_each_window_and_sees_a_climb() -> None:
    rng = np.random.default_rng(2)
    real = [piece(rng, 125.0) for _ in range(4)] + [piece(rng, 60.0)]  # the short one is left out
    parts = [piece(rng, 30.0, 40 + 12 * k, 60 + 12 * k) for k in range(4)]  # a register that climbs an octave a window
    climbing = {key: np.concatenate([p[key] + (30.0 * k if key in ("onset", "offset") else 0)
                                     for k, p in enumerate(parts)]) for key in parts[0]}  # fmt: skip
    lines, measured = long_form_part(real, [("long-01", climbing)], 120.0)
    means = [measured[f"{30 * k}-{30 * (k + 1)}s"]["long-01"]["mean_pitch"] for k in range(4)]
    assert means == pytest.approx([float(p["pitch"].mean()) for p in parts], abs=1e-4)
    assert all(b - a > 8 for a, b in zip(means, means[1:], strict=False))
    first_real = set_texture([window(p, 0.0, 30.0) for p in real[:4]], 30.0)
    assert measured["0-30s"]["real"]["notes_per_second"] == pytest.approx(first_real["notes_per_second"], abs=1e-4)
    assert "the 4 validation pieces that last as long" in " ".join(lines)
    assert "![long-01](samples/long-01.png)" in lines[-2]
    assert long_form_part(real, [], 120.0) == ([], {})
