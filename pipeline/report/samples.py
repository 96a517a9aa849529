"""The report's Samples section: each sample's piano roll and files, and generated against real music as Yang & Lerch
(2018) compare them (pipeline/music/features.py), beside real held-out against real train music as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write_text
from pipeline.errors import PipelineError
from pipeline.report import figures
from pipeline.report.markdown import table

REFERENCE_DRAWS, REFERENCE_SEED = 20, 3


def split_notes(pieces: dict, notes: dict, split: str) -> list[dict[str, np.ndarray]]:
    """Each piece of a split as its own note dict, in piece order."""
    rows = np.flatnonzero(pieces["split"] == split)
    order = np.argsort(notes["piece"], kind="stable")
    bounds = np.searchsorted(notes["piece"][order], np.arange(len(pieces["piece_id"]) + 1))
    keys = ("onset", "offset", "pitch", "velocity")
    return [{k: notes[k][order[bounds[r] : bounds[r + 1]]] for k in keys} for r in rows]


def real_features(pieces: list[dict], seconds: float, per_piece: int, most: int, seed: int) -> list[dict]:
    """Features of up to `per_piece` excerpts of `seconds` from each piece, from at most `most` pieces (seeded)."""
    from pipeline.music.features import excerpts, feature_values

    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pieces), size=min(most, len(pieces)), replace=False).tolist())
    return [feature_values(e, seconds) for i in chosen for e in excerpts(pieces[i], seconds, per_piece, rng)]


def reference_draws(reference: list[dict], pool: list[dict], size: int) -> dict[str, dict[str, float]]:
    """compare_sets(reference, B) for REFERENCE_DRAWS seeded draws B of `size` pieces from `pool` (real music in the
    generated set's place, at its size): per feature the mean overlap and KL, and the overlap's 10th percentile."""
    from pipeline.music.features import FEATURES, compare_sets

    rng = np.random.default_rng(REFERENCE_SEED)
    draws = [compare_sets(reference, [pool[i] for i in rng.choice(len(pool), size, replace=False)])
             for _ in range(REFERENCE_DRAWS if 0 < size <= len(pool) else 0)]  # fmt: skip
    result = {}
    for name in FEATURES:
        overlap = np.array([d[name]["overlap"] for d in draws], float)
        kl = np.array([d[name]["kl"] for d in draws], float)
        finite = np.isfinite(overlap) & np.isfinite(kl)
        result[name] = {
            "overlap": float(overlap[finite].mean()) if finite.any() else float("nan"),
            "overlap_p10": float(np.percentile(overlap[finite], 10)) if finite.any() else float("nan"),
            "kl": float(kl[finite].mean()) if finite.any() else float("nan"),
        }
    return result


def samples_section(samples: Path, summary: dict, out: Path, plots: Path, pieces: dict, notes: dict) -> list[str]:
    """Each sample's piano roll and files, then generated against real music, feature by feature (Yang & Lerch)."""
    from pipeline.music.features import FEATURES, compare_sets, feature_values

    seconds = float(summary["settings"]["seconds"])
    settings = ", ".join(f"{k} {v}" for k, v in summary["settings"].items())
    lines = ["## Samples", "", f"Made by the generate stage with {settings}; audio: {summary['wav']}.", ""]
    generated = []
    for s in summary["samples"]:
        notes_new = new_notes(samples / s["midi"], s["primer"]["seconds"] if s["primer"]["kept"] else 0.0)
        if s.get("ended_by", "seconds") == "seconds":  # a sample that ended early is not a window of `seconds`
            generated.append(feature_values(notes_new, seconds))
        files = f"[MIDI](samples/{s['midi']})" + (f" · [WAV](samples/{s['wav']})" if s.get("wav") else "")
        flags = ", ".join(s["flags"]) or "none"
        lines += [
            f"**{s['name']}** (seed {s['seed']}; primer: {s['primer']['source']}): {s['seconds']} s, {s['notes']} "
            f"notes, flags: {flags}. {files}",
            "",
            f"![{s['name']}](samples/{s['png']})",
            "",
        ]
    validation = real_features(split_notes(pieces, notes, "validation"), seconds, 2, 10_000, seed=0)
    train = real_features(split_notes(pieces, notes, "train"), seconds, 1, 200, seed=1)
    ours, reference = compare_sets(validation, generated), reference_draws(validation, train, len(generated))
    grid = figures.feature_grid(out / "features.png", {"validation": validation, "generated": generated}, FEATURES,
                                f"Generated samples against {seconds:g}-second validation excerpts")  # fmt: skip
    rows, plot_rows = [], []
    for name in FEATURES:
        o, r = ours[name], reference[name]
        rows.append(
            [
                name.replace("_", " "),
                f"{o['mean_a']:.3g} ± {o['std_a']:.2g}",
                f"{o['mean_b']:.3g} ± {o['std_b']:.2g}",
                _num(o["overlap"]),
                _num(o["kl"]),
                f"{_num(r['overlap'])} (p10 {_num(r['overlap_p10'])})",
                _num(r["kl"]),
            ]
        )
        plot_rows.append({"feature": name, "generated": _rounded(o["overlap"]), "reference": _rounded(r["overlap"])})
    atomic_write_text(plots / "feature_overlap.json", json.dumps(plot_rows, indent=1) + "\n")
    lines += [
        f"### Generated against real music ({len(generated)} samples, {len(validation)} validation excerpts)",
        "",
        f"Yang & Lerch (2018): for each feature, the distances between real excerpts (validation, {seconds:g} s each) "
        "and between each generated sample and each real excerpt, as densities; their overlap (1 is "
        "indistinguishable) and KL divergence (0 is indistinguishable). The reference columns put real music in the "
        f"samples' place: {REFERENCE_DRAWS} draws of {len(generated)} real train excerpts (as many as there are "
        "samples), compared with the same validation excerpts; the mean, and the 10th percentile of the overlap. "
        "That is what indistinguishable looks like with this many samples.",
        "",
        *table(
            ["feature", "validation (mean ± sd)", "generated", "overlap", "KL", "reference overlap", "reference KL"],
            rows,
            "lrrrrrr",
        ),  # fmt: skip
        "",
        f"![features](figures/{grid})",
        "",
    ]
    return lines


def _rounded(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def _num(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def new_notes(midi: Path, start: float) -> dict[str, np.ndarray]:
    """The notes of a sample's MIDI file from `start` seconds on (after its primer), times from there; a silent
    sample has none."""
    from pipeline.music.midi import UnreadableMidi, read_performance

    keys = ("onset", "offset", "pitch", "velocity")
    if not Path(midi).is_file():
        raise PipelineError(f"{midi}: listed in samples.json but missing (rerun the generate stage)")
    try:
        perf = read_performance(midi)
    except UnreadableMidi as exc:
        if str(exc) != "contains no notes":  # a silent sample is the only MIDI of generate's the reader refuses
            raise PipelineError(f"{midi}: unreadable sample ({exc})") from exc
        return {k: np.zeros(0) for k in keys}
    new = perf.onset >= start - 1e-6
    return {"onset": perf.onset[new] - start, "offset": perf.offset[new] - start, "pitch": perf.pitch[new],
            "velocity": perf.velocity[new]}  # fmt: skip
