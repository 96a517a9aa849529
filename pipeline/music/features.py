"""Musical features of note sets, and Yang & Lerch's comparison of two sets of pieces through them.

The method is that of L.-C. Yang and A. Lerch (2018), "On the evaluation of generative models in music", Neural
Computing and Applications, and of their toolbox mgeval (github.com/RichardYang40148/mgeval), which is not on PyPI;
this is a numpy/scipy implementation of it:

- absolute measurement: each feature's mean and standard deviation over the pieces of a set;
- relative measurement: for each feature, the distances between every two pieces of the reference set A (intra-set)
  and between every piece of A and every piece of the compared set B (inter-set), each sample of distances smoothed
  into a density by a Gaussian KDE; reported are the densities' overlap area and KL(intra_A || inter).

A is the reference (real validation excerpts), B the compared set (generated samples). An overlap near 1 and a KL
near 0 say that a generated piece lies as far from a real one as two real pieces lie from each other.

Deliberate departures from mgeval: both densities are evaluated on one common grid that reaches past their tails
(mgeval's kl_dist evaluates them on two different grids, and its overlap integrates only between the samples'
extremes), and a distance sample with no spread gets a kernel of fixed width instead of an error.

Feature values are 1-D float64 arrays, of length 12 for the pitch-class histogram and 1 for the scalars, so that the
distance between two pieces is always a Euclidean norm (for a scalar, the absolute difference). NaN marks a feature
that a note set does not define (everything but note density for no notes, the onset gap for fewer than two onsets,
polyphony for a span of zero); the comparison leaves such pieces out of that feature.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.music.performance_encoding import STEPS_PER_SECOND

FEATURES = (
    "pitch_class_histogram",
    "pitch_range",
    "inter_onset_interval",
    "note_duration",
    "velocity",
    "polyphony",
    "note_density",
)
FEATURE_SIZE = {name: 12 if name == "pitch_class_histogram" else 1 for name in FEATURES}
NOTE_KEYS = ("onset", "offset", "pitch", "velocity")
GRID_POINTS = 2048  # the least number of points of the common grid
MAX_GRID_POINTS = 1 << 16
TAIL_WIDTHS = 6.0  # the grid reaches this many kernel widths past the samples, where a Gaussian has ~1e-9 left
KL_FLOOR = 1e-12  # densities below this fraction of the peak count as this, so that KL stays finite
KERNEL_REACH = 9.0  # kernel widths past which a Gaussian adds under 3e-18 of its peak, far below KL_FLOOR
GRID_CHUNK = 64  # grid points whose nearby samples are summed in one block


def feature_values(notes: dict[str, np.ndarray], seconds: float) -> dict[str, np.ndarray]:
    """The features of one note set (see FEATURES); `seconds` is the excerpt's length, for the note density."""
    onset = np.asarray(notes["onset"], np.float64)
    offset = np.maximum(np.asarray(notes["offset"], np.float64), onset)  # a note never ends before it starts
    pitch = np.asarray(notes["pitch"], np.int64)
    velocity = np.asarray(notes["velocity"], np.float64)
    n = len(onset)
    density = np.array([n / seconds if seconds > 0 else np.nan])
    if n == 0:
        nan = np.array([np.nan])
        values = {name: nan.copy() for name in FEATURES}
        return {**values, "pitch_class_histogram": np.full(12, np.nan), "note_density": density}
    # Onsets in one 10 ms step (the encoding's resolution) are one onset: a performed chord spreads its notes over
    # a few milliseconds, a decoded one does not, and both must count as one chord.
    steps = np.unique(np.floor(onset * STEPS_PER_SECOND + 0.5))
    ioi = np.diff(steps).mean() / STEPS_PER_SECOND if len(steps) > 1 else np.nan
    span = offset.max() - onset.min()
    return {
        "pitch_class_histogram": np.bincount(pitch % 12, minlength=12) / n,
        "pitch_range": np.array([float(pitch.max() - pitch.min())]),
        "inter_onset_interval": np.array([ioi]),
        "note_duration": np.array([(offset - onset).mean()]),
        "velocity": np.array([velocity.mean()]),
        "polyphony": np.array([_sounding_time(onset, offset, pitch) / span if span > 0 else np.nan]),
        "note_density": density,
    }


def _sounding_time(onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray) -> float:
    """Seconds that each pitch sounds, summed over pitches (overlapping notes of one pitch count once, as in a piano
    roll), by a sweep over the notes' starts and ends."""
    n = len(onset)
    times = np.concatenate([onset, offset])
    delta = np.concatenate([np.ones(n, np.int64), -np.ones(n, np.int64)])
    order = np.lexsort((delta, times, np.concatenate([pitch, pitch])))
    times = times[order]
    # Each note adds one and takes one away, so every pitch's events sum to zero, and one running sum over the
    # events sorted pitch by pitch is each pitch's number of held notes; a pitch sounds while it is positive.
    held = np.cumsum(delta[order])
    return float(np.sum(np.diff(times) * (held[:-1] > 0)))


def excerpt_starts(first: float, last: float, seconds: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Start times, in order, of up to `count` non-overlapping windows of `seconds` that lie within [first, last]."""
    length = last - first
    if not seconds > 0 or count <= 0 or not length >= seconds:
        return np.zeros(0)
    slots = int(length // seconds)
    # Windows sit on a grid of whole slots, shifted by a random phase so that every part of the piece can be drawn.
    phase = rng.uniform(0.0, max(length - slots * seconds, 0.0))
    chosen = np.sort(rng.choice(slots, size=min(count, slots), replace=False))
    return first + phase + chosen * seconds


def excerpts(
    notes: dict[str, np.ndarray], seconds: float, count: int, rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    """Up to `count` non-overlapping excerpts of `seconds` from one piece, each shifted to start at 0.

    An excerpt keeps the notes that start inside its window, their ends cut at the window's end. Only whole windows
    are drawn (a piece shorter than one gives none), so that every excerpt spans the same length of music.
    """
    onset = np.asarray(notes["onset"], np.float64)
    if len(onset) == 0:
        return []
    offset = np.asarray(notes["offset"], np.float64)
    starts = excerpt_starts(float(onset.min()), float(offset.max()), seconds, count, rng)
    out = []
    for start in starts:
        # Tested in the window's own times, so that rounding cannot put a kept onset or a cut end at `seconds` + ulp.
        shifted = onset - start
        keep = (shifted >= 0) & (shifted < seconds)
        piece = {key: np.asarray(notes[key])[keep] for key in NOTE_KEYS}
        piece["onset"] = shifted[keep]
        piece["offset"] = np.minimum(offset[keep] - start, seconds)
        out.append(piece)
    return out


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """The trapezoidal integral of y over the sorted points x."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def density_overlap_kl(p: np.ndarray, q: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Overlap area of two densities given on the sorted grid x, and KL(p || q), each density first scaled to mass 1.

    Where q is below KL_FLOOR of the peak it counts as that floor, so densities that never meet give a KL of about
    log(1 / KL_FLOOR) ~ 27.6 nats rather than infinity.
    """
    x = np.asarray(x, np.float64)
    p, q = (np.clip(np.asarray(d, np.float64), 0.0, None) for d in (p, q))
    p_mass, q_mass = _trapezoid(p, x), _trapezoid(q, x)
    if not (p_mass > 0 and q_mass > 0 and np.isfinite(p_mass) and np.isfinite(q_mass)):
        return np.nan, np.nan
    p, q = p / p_mass, q / q_mass
    overlap = _trapezoid(np.minimum(p, q), x)
    floor = KL_FLOOR * max(p.max(), q.max())
    kl = _trapezoid(p * np.log(np.maximum(p, floor) / np.maximum(q, floor)), x)
    # The integrals of exact densities lie in [0, 1] and [0, inf); the grid's rounding may step just past them.
    return min(max(overlap, 0.0), 1.0), max(kl, 0.0)


def _kde(samples: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], float] | None:
    """The Gaussian KDE of the samples with scipy's kernel width (Scott's rule), and that width, or None for a sample
    it cannot smooth (no spread)."""
    from scipy.stats import gaussian_kde

    if len(samples) < 2 or not np.ptp(samples) > 0:
        return None
    try:
        width = float(np.sqrt(gaussian_kde(samples).covariance[0, 0]))
    except (np.linalg.LinAlgError, ValueError):  # a spread too small for the covariance to be factorised
        return None
    return _kernel_sum(samples, width), width


def _kernel_sum(samples: np.ndarray, width: float) -> Callable[[np.ndarray], np.ndarray]:
    """The mean of Gaussian kernels of `width` at the samples, as a density of x (scipy's gaussian_kde.evaluate).

    Each block of GRID_CHUNK points sums only the samples within KERNEL_REACH widths of it, so that thousands of
    distances cost their neighbours' share of the work rather than all of it: 10 to 20 times less here.
    """
    ordered = np.sort(samples)
    scale = 1.0 / (len(ordered) * width * np.sqrt(2 * np.pi))

    def density(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        out = np.empty(len(x))
        for start in range(0, len(x), GRID_CHUNK):
            block = x[start : start + GRID_CHUNK]
            reach = np.array([block.min(), block.max()]) + np.array([-1.0, 1.0]) * KERNEL_REACH * width
            lo, hi = np.searchsorted(ordered, reach)
            z = (block[:, None] - ordered[None, lo:hi]) / width
            out[start : start + GRID_CHUNK] = np.exp(-0.5 * z * z).sum(axis=1)
        return out * scale

    return density


def _spike(centre: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    """The density of one Gaussian kernel: what a sample of identical values smooths to."""
    return lambda x: np.exp(-0.5 * ((x - centre) / width) ** 2) / (width * np.sqrt(2 * np.pi))


def sample_overlap_kl(p_samples: np.ndarray, q_samples: np.ndarray) -> tuple[float, float]:
    """Overlap area and KL(p || q) of the Gaussian KDEs of two samples, on one common grid (NaN for an empty one).

    A sample with no spread becomes one kernel at its value, as wide as the other sample's kernel (the resolution the
    comparison has anyway), or, when neither has spread, 1/200 of the distance between them (at least 1e-3 of the
    values' size): equal values then overlap fully, different ones not at all.
    """
    p_samples, q_samples = (np.asarray(s, np.float64).ravel() for s in (p_samples, q_samples))
    p_samples, q_samples = p_samples[np.isfinite(p_samples)], q_samples[np.isfinite(q_samples)]
    if len(p_samples) == 0 or len(q_samples) == 0:
        return np.nan, np.nan
    both = np.concatenate([p_samples, q_samples])
    fitted = [_kde(p_samples), _kde(q_samples)]
    widths = [f[1] for f in fitted if f is not None]
    fallback = max(widths) if widths else max(np.ptp(both) / 200, 1e-3 * np.abs(both).max(), 1e-9)
    samples = (p_samples, q_samples)
    densities = [f[0] if f is not None else _spike(s[0], fallback) for f, s in zip(fitted, samples, strict=True)]
    narrowest, widest = min([*widths, fallback]), max([*widths, fallback])
    lo, hi = both.min() - TAIL_WIDTHS * widest, both.max() + TAIL_WIDTHS * widest
    # At least two points per narrowest kernel width: trapezoids integrate a Gaussian that finely to ~1e-9.
    points = int(np.clip(2 * (hi - lo) / narrowest + 1, GRID_POINTS, MAX_GRID_POINTS))
    x = np.linspace(lo, hi, points)
    return density_overlap_kl(densities[0](x), densities[1](x), x)


def _stack(pieces: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """One feature of every piece as rows of a matrix, leaving out pieces where it is undefined (NaN)."""
    rows = [np.asarray(piece[name], np.float64).ravel() for piece in pieces]
    matrix = np.stack(rows) if rows else np.zeros((0, FEATURE_SIZE[name]))
    return matrix[np.isfinite(matrix).all(axis=1)]


def _summary(values: np.ndarray) -> np.ndarray:
    """One number per piece for the absolute measurement: a scalar feature itself, a vector feature's norm."""
    return values[:, 0] if values.shape[1] == 1 else np.linalg.norm(values, axis=1)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation (as mgeval's np.std), NaN for no values."""
    return (float(values.mean()), float(values.std())) if len(values) else (np.nan, np.nan)


def compare_sets(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per feature: overlap and KL(intra_A || inter) of Yang & Lerch's relative measurement, and each set's mean/std.

    `a` (the reference) and `b` are lists of `feature_values` dicts. The mean and standard deviation of the
    pitch-class histogram are those of its Euclidean norm, from 1/sqrt(12) ~ 0.29 when the twelve classes are used
    equally to 1 when one class is used: how concentrated a piece's pitch classes are. n_a and n_b count the pieces
    that define the feature; overlap and KL are NaN when A has fewer than two of them or B none.
    """
    from scipy.spatial.distance import cdist, pdist

    result = {}
    for name in FEATURES:
        va, vb = _stack(a, name), _stack(b, name)
        intra = pdist(va) if len(va) > 1 else np.zeros(0)
        inter = cdist(va, vb).ravel() if len(va) and len(vb) else np.zeros(0)
        overlap, kl = sample_overlap_kl(intra, inter)
        (mean_a, std_a), (mean_b, std_b) = _mean_std(_summary(va)), _mean_std(_summary(vb))
        result[name] = {
            "overlap": overlap,
            "kl": kl,
            "mean_a": mean_a,
            "std_a": std_a,
            "mean_b": mean_b,
            "std_b": std_b,
            "n_a": float(len(va)),
            "n_b": float(len(vb)),
        }
    return result
