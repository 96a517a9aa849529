"""Note-set features against hand and brute-force values, excerpts, and Yang & Lerch's set comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.music.features import (
    FEATURES,
    _kde,
    compare_sets,
    density_overlap_kl,
    excerpt_starts,
    excerpts,
    feature_values,
    sample_overlap_kl,
)


def notes(onset: list[float], offset: list[float], pitch: list[int], velocity: list[int] | None = None) -> dict:
    velocity = velocity if velocity is not None else [64] * len(onset)
    return {
        "onset": np.array(onset, np.float64),
        "offset": np.array(offset, np.float64),
        "pitch": np.array(pitch, np.int64),
        "velocity": np.array(velocity, np.int64),
    }


def random_piece(rng: np.random.Generator, seconds: float, low: int, high: int) -> dict:
    """Random notes over `seconds`, pitches in [low, high]; a narrow pitch span makes same-pitch overlaps common."""
    n = int(rng.integers(20, 80))
    onset = np.sort(rng.uniform(0, seconds, n))
    return {
        "onset": onset,
        "offset": onset + rng.uniform(0.05, 1.5, n),
        "pitch": rng.integers(low, high + 1, n),
        "velocity": rng.integers(30, 110, n),
    }


def test_every_feature_against_hand_values() -> None:
    values = feature_values(notes([0, 0, 0.5, 1.25], [1.0, 0.5, 1.5, 2.0], [60, 64, 60, 67], [80, 40, 60, 100]), 4.0)
    assert tuple(values) == FEATURES
    histogram = np.zeros(12)
    histogram[[0, 4, 7]] = [0.5, 0.25, 0.25]  # C twice, E once, G once
    np.testing.assert_allclose(values["pitch_class_histogram"], histogram)
    assert values["pitch_range"].tolist() == [7.0]
    assert values["inter_onset_interval"].tolist() == pytest.approx([0.625])  # onsets 0, 0.5, 1.25: chords count once
    assert values["note_duration"].tolist() == pytest.approx([(1.0 + 0.5 + 1.0 + 0.75) / 4])
    assert values["velocity"].tolist() == pytest.approx([70.0])
    # Pitch 60 sounds over [0, 1.5] (its two notes overlap), 64 over [0, 0.5], 67 over [1.25, 2]: 2.75 s in 2 s.
    assert values["polyphony"].tolist() == pytest.approx([2.75 / 2.0])
    assert values["note_density"].tolist() == pytest.approx([1.0])
    assert all(v.ndim == 1 and v.dtype == np.float64 for v in values.values())


@pytest.mark.parametrize(
    ("onset", "offset", "pitch", "expected"),
    [
        ([0, 1], [2, 3], [60, 64], 4 / 3),  # two pitches overlap for a second of three
        ([0, 1], [2, 3], [60, 60], 1.0),  # one pitch re-struck while held sounds once
        ([0, 2], [1, 3], [60, 64], 2 / 3),  # a silent second in the middle
        ([0, 0, 0], [1, 1, 1], [60, 64, 67], 3.0),  # a held triad
    ],
)
def test_polyphony_by_hand(onset: list, offset: list, pitch: list, expected: float) -> None:
    assert feature_values(notes(onset, offset, pitch), 3.0)["polyphony"][0] == pytest.approx(expected)


def test_onsets_in_one_step_are_one_chord() -> None:
    values = feature_values(notes([0.0, 0.003, 0.004, 1.0, 1.5], [2.0] * 5, [60, 64, 67, 60, 62]), 2.0)
    assert values["inter_onset_interval"][0] == pytest.approx(0.75)  # onsets 0, 1.0, 1.5


@pytest.mark.parametrize("seed", range(5))
def test_polyphony_against_a_sampled_piano_roll(seed: int) -> None:
    piece = random_piece(np.random.default_rng(seed), 5.0, 60, 64)
    first, last = piece["onset"].min(), piece["offset"].max()
    cells = int(round((last - first) / 0.001))
    t = first + (np.arange(cells) + 0.5) * (last - first) / cells  # the middle of each 1 ms cell
    roll = (piece["onset"][:, None] <= t) & (t < piece["offset"][:, None])
    sounding = sum(roll[piece["pitch"] == p].any(axis=0) for p in np.unique(piece["pitch"]))
    assert feature_values(piece, 5.0)["polyphony"][0] == pytest.approx(sounding.mean(), abs=0.01)


def long_piece() -> dict:
    """Two minutes of notes every quarter second, each with its own (pitch, velocity), some longer than 3 s."""
    rng = np.random.default_rng(7)
    onset = np.arange(480) * 0.25
    return {
        "onset": onset,
        "offset": onset + rng.uniform(0.1, 4.0, len(onset)),
        "pitch": 30 + np.arange(480) % 60,
        "velocity": 1 + np.arange(480) // 60,
    }


def test_excerpts_are_disjoint_clipped_windows() -> None:
    piece, seconds = long_piece(), 20.0
    cut = excerpts(piece, seconds, 4, np.random.default_rng(3))
    starts = excerpt_starts(0.0, piece["offset"].max(), seconds, 4, np.random.default_rng(3))
    assert len(cut) == len(starts) == 4
    assert np.all(np.diff(starts) >= seconds) and starts[0] >= 0 and starts[-1] + seconds <= piece["offset"].max()
    ids = [tuple(pv) for c in cut for pv in zip(c["pitch"], c["velocity"], strict=True)]
    assert len(ids) == len(set(ids))  # no note in two excerpts
    for c, start in zip(cut, starts, strict=True):
        assert np.all((c["onset"] >= 0) & (c["onset"] < seconds))
        assert np.all((c["offset"] <= seconds) & (c["offset"] >= c["onset"]))
        inside = (piece["onset"] >= start) & (piece["onset"] < start + seconds)
        np.testing.assert_allclose(c["onset"], piece["onset"][inside] - start)
        np.testing.assert_allclose(c["offset"], np.minimum(piece["offset"][inside] - start, seconds))
        np.testing.assert_array_equal(c["pitch"], piece["pitch"][inside])
    assert any(np.any(c["offset"] == seconds) for c in cut)  # some notes were cut at the window's end


def test_excerpts_count_and_determinism() -> None:
    piece = long_piece()  # 120 s to ~123 s: six whole windows of 20 s
    assert len(excerpts(piece, 20.0, 10, np.random.default_rng(0))) == 6
    assert excerpts(piece, 20.0, 0, np.random.default_rng(0)) == []
    assert excerpts(piece, 200.0, 3, np.random.default_rng(0)) == []  # shorter than one window
    assert excerpts(notes([], [], []), 20.0, 3, np.random.default_rng(0)) == []
    first, again = (excerpts(piece, 20.0, 3, np.random.default_rng(11)) for _ in range(2))
    for x, y in zip(first, again, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    other = excerpts(piece, 20.0, 3, np.random.default_rng(12))
    assert any(not np.array_equal(x["pitch"], y["pitch"]) for x, y in zip(first, other, strict=True))


def test_overlap_and_kl_of_known_normals() -> None:
    from scipy.stats import norm

    x = np.linspace(-12, 14, 20001)
    overlap, kl = density_overlap_kl(norm.pdf(x, 0, 1), norm.pdf(x, 1.5, 1), x)
    assert overlap == pytest.approx(2 * norm.cdf(-1.5 / 2), abs=1e-6)
    assert kl == pytest.approx(1.5**2 / 2, abs=1e-6)
    # KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / (2 * 4) - 1/2, and KL is not symmetric.
    _, kl = density_overlap_kl(norm.pdf(x, 0, 1), norm.pdf(x, 1, 2), x)
    assert kl == pytest.approx(math.log(2) + 0.25 - 0.5, abs=1e-6)
    assert density_overlap_kl(norm.pdf(x), 3 * norm.pdf(x), x) == pytest.approx((1.0, 0.0), abs=1e-9)
    assert density_overlap_kl(norm.pdf(x, -6, 0.5), norm.pdf(x, 6, 0.5), x)[0] < 1e-9


def test_overlap_and_kl_from_samples() -> None:
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    overlap, kl = sample_overlap_kl(rng.normal(0, 1, 10000), rng.normal(1.5, 1, 10000))
    assert overlap == pytest.approx(2 * norm.cdf(-0.75), abs=0.03)  # the KDE's kernels widen both a little
    # KL weighs the tails, where a KDE falls faster than the normal past its last sample: over ten seeds it spans
    # 1.08-1.24 around the exact 1.125.
    assert kl == pytest.approx(1.125, abs=0.2)


@pytest.mark.parametrize("count", [2, 7, 300, 20000])
def test_kde_is_scipys(count: int) -> None:
    """The blockwise kernel sum gives scipy's gaussian_kde at every grid point, deep tails and a skewed sample too."""
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(count)
    samples = np.concatenate([np.abs(rng.normal(2, 1, count - count // 4)), rng.exponential(5, count // 4)])
    density, width = _kde(samples)
    oracle = gaussian_kde(samples)
    assert width == pytest.approx(np.sqrt(oracle.covariance[0, 0]), rel=1e-12)
    x = np.linspace(samples.min() - 12 * width, samples.max() + 12 * width, 5001)
    ours, theirs = density(x), oracle(x)
    assert np.abs(ours - theirs).max() <= 1e-12 * theirs.max()
    tails = theirs > 1e-10 * theirs.max()  # where the KL's floor does not reach: equal to the last digits
    assert ours[tails] == pytest.approx(theirs[tails], rel=1e-9)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("count", [300, 20000])
def test_kde_is_scipys_where_a_block_spans_many_widths(count: int, order: str) -> None:
    """On the comparison's own grid (half the narrowest width a step), a block of GRID_CHUNK points spans about 31
    kernel widths, well past KERNEL_REACH: each block still sums every sample within reach of any of its points,
    in any order of the points."""
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(count)
    samples = np.concatenate([np.abs(rng.normal(2, 1, count - count // 4)), rng.exponential(5, count // 4)])
    density, width = _kde(samples)
    oracle = gaussian_kde(samples)
    x = np.arange(samples.min() - 12 * width, samples.max() + 12 * width, width / 2)
    if order == "shuffled":
        x = rng.permutation(x)
    ours, theirs = density(x), oracle(x)
    assert np.abs(ours - theirs).max() <= 1e-12 * theirs.max()
    tails = theirs > 1e-10 * theirs.max()
    assert ours[tails] == pytest.approx(theirs[tails], rel=1e-9)


def random_set(seed: int, count: int, low: int, high: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [feature_values(random_piece(rng, 20.0, low, high), 20.0) for _ in range(count)]


def test_sets_from_one_distribution_overlap() -> None:
    result = compare_sets(random_set(1, 40, 40, 80), random_set(2, 40, 40, 80))
    for name in FEATURES:
        assert result[name]["overlap"] > 0.8, name
        assert result[name]["kl"] < 0.2, name


def test_sets_far_apart_do_not_overlap() -> None:
    rng = np.random.default_rng(5)
    a_notes = [random_piece(rng, 20.0, 30, 80) for _ in range(30)]
    b_notes = [random_piece(rng, 20.0, 90, 100) for _ in range(30)]
    a = [feature_values(p, 20.0) for p in a_notes]
    result = compare_sets(a, [feature_values(p, 20.0) for p in b_notes])["pitch_range"]
    assert result["overlap"] < 0.05 and result["kl"] > 3
    ranges = [float(p["pitch"].max() - p["pitch"].min()) for p in b_notes]
    assert (result["mean_b"], result["std_b"]) == pytest.approx((np.mean(ranges), np.std(ranges)))
    b = [feature_values(p, 20.0) for p in b_notes[:10]]
    vectors = [[piece["pitch_class_histogram"] for piece in s] for s in (a, b)]
    intra = [np.sqrt(np.sum((x - y) ** 2)) for i, x in enumerate(vectors[0]) for y in vectors[0][i + 1 :]]
    inter = [np.sqrt(np.sum((x - y) ** 2)) for x in vectors[0] for y in vectors[1]]
    wired = compare_sets(a, b)["pitch_class_histogram"]
    assert (wired["overlap"], wired["kl"]) == pytest.approx(sample_overlap_kl(intra, inter))
    histogram = compare_sets(a, a)["pitch_class_histogram"]
    norms = [np.linalg.norm(np.bincount(p["pitch"] % 12, minlength=12) / len(p["pitch"])) for p in a_notes]
    assert histogram["mean_a"] == pytest.approx(np.mean(norms)) and histogram["n_a"] == 30


@pytest.mark.filterwarnings("error")
def test_degenerate_inputs_do_not_raise() -> None:
    empty = feature_values(notes([], [], []), 20.0)
    assert empty["note_density"].tolist() == [0.0]
    assert all(np.isnan(v).all() for k, v in empty.items() if k != "note_density")
    one = feature_values(notes([1.0], [1.5], [60]), 20.0)
    assert np.isnan(one["inter_onset_interval"][0]) and one["pitch_range"][0] == 0 and one["polyphony"][0] == 1
    assert np.isnan(feature_values(notes([1.0], [1.0], [60]), 20.0)["polyphony"][0])  # no span

    piece = feature_values(notes([0, 0.5, 1], [1, 1, 2], [60, 62, 64]), 20.0)
    same = compare_sets([piece] * 5, [piece] * 5)  # every distance is zero
    for name in FEATURES:
        assert same[name]["overlap"] == pytest.approx(1.0) and same[name]["kl"] == pytest.approx(0.0, abs=1e-9)
        assert same[name]["std_a"] == 0
    shifted = feature_values(notes([0, 0.5, 1], [1, 1, 2], [60, 62, 90]), 20.0)
    apart = compare_sets([piece] * 5, [shifted] * 5)["pitch_range"]
    assert apart["overlap"] < 1e-6 and 3 < apart["kl"] < math.inf

    single = compare_sets([piece], random_set(3, 5, 40, 80))  # no intra-set pair
    assert all(np.isnan(single[name]["overlap"]) and np.isfinite(single[name]["mean_a"]) for name in FEATURES)
    with_empty = compare_sets([empty, *random_set(4, 6, 40, 80)], [empty] * 3)
    assert with_empty["note_density"]["n_b"] == 3 and with_empty["velocity"]["n_a"] == 6
    assert np.isnan(with_empty["velocity"]["overlap"]) and np.isnan(with_empty["velocity"]["mean_b"])
    assert np.isfinite(with_empty["note_density"]["overlap"])
    assert all(np.isnan(v) for v in sample_overlap_kl([], [1.0, 2.0]))
    assert sample_overlap_kl([2.0], [2.0]) == pytest.approx((1.0, 0.0))
    assert np.all(np.isfinite(sample_overlap_kl([0.0, 0.0], [0.0, 1.0, 3.0])))
