"""The realism section as the report stage calls it: flags past the largest real run, every column, each window,
and real openings of each length."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.music.texture import set_texture, window
from pipeline.report.realism import long_form_part, originality_part, realism_section, texture_part


def piece(rng: np.random.Generator, seconds: float, low: int = 48, high: int = 84, rate: float = 8.0,
          longest: float = 1.0) -> dict:  # fmt: skip
    n = int(seconds * rate)
    onset = np.sort(rng.uniform(0, seconds, n))
    return {"onset": onset, "offset": onset + rng.uniform(0.1, longest, n), "pitch": rng.integers(low, high, n),
            "velocity": rng.integers(30, 100, n)}  # fmt: skip


def passage(source: dict, start: int, count: int, shift: float) -> dict:
    out = {key: value[start : start + count].copy() for key, value in source.items()}
    out["onset"], out["offset"] = out["onset"] - shift, out["offset"] - shift
    return out


def test_a_sample_is_flagged_only_past_the_largest_real_run_not_the_median() -> None:
    rng = np.random.default_rng(3)
    train = [piece(rng, 60.0) for _ in range(4)]
    real = [piece(rng, 30.0) for _ in range(4)] + [passage(train[0], 100, 30, 10.0)]  # one real opening quotes 30
    samples = {"with_rule": [("within", passage(train[1], 100, 20, 10.0), 30.0),
                             ("beyond", passage(train[2], 100, 40, 10.0), 30.0)]}  # fmt: skip
    _, measured = originality_part(train, [1.0], {30.0: real}, samples)
    assert measured["real_openings_30s"]["largest"] >= 30 > measured["real_openings_30s"]["median"]
    assert 15 <= measured["with_rule"]["within"] < 30 < measured["with_rule"]["beyond"]
    assert measured["flagged"] == 1  # "beyond" only


def test_a_texture_row_shows_every_figure_in_its_column_and_no_spread_for_one_sample() -> None:
    rng = np.random.default_rng(4)
    real = [piece(rng, 30.0, 80, 108, longest=9.0) for _ in range(3)]  # high notes and long ones, in other shares
    lines, _ = texture_part(real, {"with_rule": real, "without_rule": real[:1]}, 30.0)
    f = set_texture(real, 30.0)
    assert f["high_share"] != pytest.approx(f["long_share"], abs=1e-3)
    row = (
        f"| samples, with rule | 3 | {f['mean_pitch']:.1f} | {f['mean_pitch_spread']:.1f} | {f['high_share']:.1%} "
        f"| {f['notes_per_second']:.1f} | {f['polyphony']:.2f} | {f['note_duration']:.2f} | {f['long_share']:.1%} |"
    )
    assert row in lines
    one = next(line for line in lines if line.startswith("| samples, without rule"))
    assert one.split(" | ")[1:3] == ["1", f"{set_texture(real[:1], 30.0)['mean_pitch']:.1f}"]
    assert one.split(" | ")[3] == "–"  # the spread of one piece: none


def test_long_form_real_rows_are_each_windows_own() -> None:
    rng = np.random.default_rng(5)
    real = [piece(rng, 125.0, rate=4.0 + k) for k in range(3)]
    _, measured = long_form_part(real, [("long-01", piece(rng, 120.0))], 120.0)
    for k in range(4):
        expected = set_texture([window(p, 30.0 * k, 30.0) for p in real], 30.0)
        got = measured[f"{30 * k}-{30 * (k + 1)}s"]["real"]
        assert got["mean_pitch"] == pytest.approx(expected["mean_pitch"], abs=1e-4)
        assert got["polyphony"] == pytest.approx(expected["polyphony"], abs=1e-4)


def test_the_section_compares_long_samples_with_real_openings_of_their_own_length(tmp_path) -> None:
    from pipeline.music.midi import write_midi

    rng = np.random.default_rng(6)
    validation = [piece(rng, 125.0), piece(rng, 125.0), piece(rng, 40.0)]
    train = [piece(rng, 60.0), piece(rng, 60.0)]
    every = [*validation, *train]
    pieces = {"piece_id": np.arange(5), "split": np.array(["validation"] * 3 + ["train"] * 2)}
    notes = {key: np.concatenate([p[key] for p in every]) for key in ("onset", "offset", "pitch", "velocity")}
    notes["piece"] = np.concatenate([np.full(len(p["onset"]), i) for i, p in enumerate(every)])
    write_midi(piece(rng, 120.0), tmp_path / "long-01.mid")
    summary = {"settings": {"seconds": 30.0, "long_seconds": 120.0}, "samples": [{"name": "sample-01"}],
               "long": [{"name": "long-01", "midi": "long-01.mid"}]}  # fmt: skip
    lines, measured = realism_section(tmp_path, summary, {"with_rule": [piece(rng, 30.0)]}, pieces, notes, [1.0])
    originality = measured["originality"]
    assert originality["real_openings_30s"]["pieces"] == 3 and originality["real_openings_120s"]["pieces"] == 2
    assert set(originality["long"]) == {"long-01"} and set(originality["with_rule"]) == {"sample-01"}
    assert list(measured["long_form"]) == ["0-30s", "30-60s", "60-90s", "90-120s"]
    assert "the 2 validation pieces that last as long" in " ".join(lines)
