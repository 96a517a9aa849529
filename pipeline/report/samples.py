"""The report's Samples section: each sample's figures, piano roll and files, and generated against real music as
Yang & Lerch (2018) compare them (pipeline/music/features.py), beside real openings of the samples' count and length
as the reference (the same-size reference test), with and without the note-length rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write_text
from pipeline.report import figures
from pipeline.report.markdown import table
from pipeline.report.notes import new_notes, openings, split_notes

REFERENCE_DRAWS, REFERENCE_SEED = 20, 3
# The same-size reference test: each feature's overlap at least MIN_FEATURE_RATIO of real music's at the samples'
# size, and the mean over features at least MIN_MEAN_RATIO of real music's mean. Real openings pass it: a stricter
# rule fails them, since with 16 pieces one feature or another often lands below 0.9 of its reference.
MIN_FEATURE_RATIO, MIN_MEAN_RATIO = 0.8, 0.9
HELD_NOTE_S = 5.0
SAMPLE_COLUMNS = ["sample", "seed", "notes", "first note (s)", "notes over 5 s", "polyphony", "note duration (s)",
                  "rule", "flags", "files"]  # fmt: skip
FEATURE_COLUMNS = ["feature", "validation (mean ± sd)", "generated", "overlap", "reference overlap", "ratio", "KL",
                   "reference KL"]  # fmt: skip


def real_features(pieces: list[dict], seconds: float, per_piece: int, most: int, seed: int) -> list[dict]:
    """Features of up to `per_piece` excerpts of `seconds` from each piece, from at most `most` pieces (seeded)."""
    from pipeline.music.features import excerpts, feature_values

    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pieces), size=min(most, len(pieces)), replace=False).tolist())
    return [feature_values(e, seconds) for i in chosen for e in excerpts(pieces[i], seconds, per_piece, rng)]


def two_way_overlap(a: list[dict], b: list[dict]) -> dict[str, dict[str, float]]:
    """compare_sets(a, b), with each feature's overlap the lower of a against b and b against a."""
    from pipeline.music.features import compare_sets

    forward, backward = compare_sets(a, b), compare_sets(b, a)
    return {name: {**v, "overlap": float(np.fmin(v["overlap"], backward[name]["overlap"]))} for name, v in
            forward.items()}  # fmt: skip


def reference_draws(reference: list[dict], pool: list[dict], size: int) -> dict[str, dict[str, float]]:
    """two_way_overlap(reference, B) for REFERENCE_DRAWS seeded draws B of `size` pieces from `pool` (real music in
    the generated set's place, at its size): per feature the mean overlap and KL, and the overlap's 10th percentile."""
    from pipeline.music.features import FEATURES

    rng = np.random.default_rng(REFERENCE_SEED)
    draws = [two_way_overlap(reference, [pool[i] for i in rng.choice(len(pool), size, replace=False)])
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


def reference_test(ours: dict[str, dict[str, float]], reference: dict[str, dict[str, float]]) -> dict:
    """The same-size reference test: per feature the overlap's ratio to real music's, their lowest, the ratio of the
    means over features, and whether every ratio reaches MIN_FEATURE_RATIO and the mean one MIN_MEAN_RATIO."""
    ratios = {name: ours[name]["overlap"] / reference[name]["overlap"] for name in reference}
    ratios = {name: float(r) if np.isfinite(r) else 0.0 for name, r in ratios.items()}  # undefined fails
    mean_ours = np.mean([ours[name]["overlap"] for name in reference])
    mean_ratio = float(mean_ours / np.mean([reference[name]["overlap"] for name in reference]))
    mean_ratio = mean_ratio if np.isfinite(mean_ratio) else 0.0
    lowest = min(ratios, key=ratios.get)
    passed = ratios[lowest] >= MIN_FEATURE_RATIO and mean_ratio >= MIN_MEAN_RATIO
    return {"ratios": ratios, "lowest": lowest, "mean_ratio": mean_ratio, "passed": bool(passed)}


def sample_set(samples: Path, records: list[dict], seconds: float) -> dict:
    """The notes of each listed sample after its primer, their features, durations and first notes; `generated`
    holds the features of the samples that ran their full length (one that ended early is no window of `seconds`)."""
    from pipeline.music.features import feature_values

    made = [new_notes(samples / s["midi"], s["primer"]["seconds"] if s["primer"]["kept"] else 0.0) for s in records]
    values = [feature_values(m, seconds) for m in made]
    full = [v for v, s in zip(values, records, strict=True) if s.get("ended_by", "seconds") == "seconds"]
    return {"notes": made, "values": values, "generated": full,
            "durations": [m["offset"] - m["onset"] for m in made],
            "firsts": [float(m["onset"].min()) for m in made if len(m["onset"])]}  # fmt: skip


def samples_section(  # noqa: PLR0913
    samples: Path,
    summary: dict,
    out: Path,
    plots: Path,
    pieces: dict,
    notes: dict,
    metrics: Path | None = None,
    stretch: tuple[float, ...] = (1.0,),
) -> list[str]:
    """Each sample's figures and piano roll, then generated against real music, feature by feature (Yang & Lerch),
    with the same-size reference test, with and without the note-length rule, and what a listener hears first
    (report/realism.py: `stretch` is the train split's time stretches); the figures also go to `metrics`
    (samples.json) when given."""
    from pipeline.music.features import FEATURES, feature_values
    from pipeline.report.realism import realism_section

    seconds = float(summary["settings"]["seconds"])
    ruled = sample_set(samples, summary["samples"], seconds)
    rows = [sample_row(*row) for row in zip(summary["samples"], ruled["notes"], ruled["values"], strict=True)]
    validation = real_features(split_notes(pieces, notes, "validation"), seconds, 2, 10_000, seed=0)
    real_openings = openings(split_notes(pieces, notes, "train"), seconds)
    pool = [feature_values(o, seconds) for o in real_openings]
    rows.append(openings_row(real_openings, pool))
    generated = ruled["generated"]
    ours, reference = two_way_overlap(validation, generated), reference_draws(validation, pool, len(generated))
    verdict = reference_test(ours, reference)
    measured = sample_metrics(summary["samples"], ruled["durations"], ruled["firsts"], verdict)
    sets = {"with_rule": ruled["notes"]}
    if summary.get("without_rule"):
        free = sample_set(samples, summary["without_rule"], seconds)
        measured["without_rule"] = without_rule_metrics(free, summary["without_rule"], validation, reference)
        sets["without_rule"] = free["notes"]
    realism_lines, realism = realism_section(samples, summary, sets, pieces, notes, list(stretch))
    measured.update(realism)
    grid = figures.feature_grid(out / "features.png", {"validation": validation, "generated": generated}, FEATURES,
                                f"Generated samples against {seconds:g}-second validation excerpts")  # fmt: skip
    table_rows, plot_rows = feature_rows(ours, reference, verdict)
    atomic_write_text(plots / "feature_overlap.json", json.dumps(plot_rows, indent=1) + "\n")
    if metrics is not None:
        atomic_write_text(metrics, json.dumps(measured, indent=2) + "\n")
    rolls = [f"![{s['name']}](samples/{s['png']})" for s in summary["samples"]]
    return [
        *samples_lines(summary, seconds, rows, rolls),
        *comparison_lines(seconds, len(generated), len(validation), table_rows, verdict),
        *rule_lines(summary, measured),
        f"![features](figures/{grid})",
        "",
        *realism_lines,
    ]


def sample_row(s: dict, made: dict[str, np.ndarray], values: dict) -> list:
    """A sample's row of the samples table: its name, seed, notes, first note, long notes, polyphony, note duration,
    the rule's releases, flags and files."""
    length = made["offset"] - made["onset"]
    files = f"[MIDI](samples/{s['midi']})" + (f" · [WAV](samples/{s['wav']})" if s.get("wav") else "")
    first = f"{made['onset'].min():.2f}" if len(length) else "–"
    name = f"{s['name']} ({s['composer']})" if s.get("composer") else s["name"]  # grouped, as generated
    return [name, s["seed"], len(length), first, _share(length), _num(values["polyphony"][0]),
            _num(values["note_duration"][0]), s.get("rule_releases", 0), ", ".join(s["flags"]) or "none",
            files]  # fmt: skip


def openings_row(real_openings: list[dict[str, np.ndarray]], pool: list[dict]) -> list:
    """The samples table's last row: the same figures over real openings (`pool` holds their features)."""
    real_lengths = [o["offset"] - o["onset"] for o in real_openings]
    return [f"real openings ({len(pool)}, mean)", "", f"{np.mean([len(d) for d in real_lengths]):.0f}",
            f"{np.median([d['onset'].min() for d in real_openings if len(d['onset'])]):.2f} (median)",
            _share(np.concatenate(real_lengths)), _num(np.nanmean([p['polyphony'][0] for p in pool])),
            _num(np.nanmean([p['note_duration'][0] for p in pool])), "", "", ""]  # fmt: skip


def without_rule_metrics(
    free: dict, records: list[dict], validation: list[dict], reference: dict[str, dict[str, float]]
) -> dict:
    """sample_metrics of the samples made from the same seeds without the note-length rule (`records`, whose
    sample_set is `free`), with their own same-size reference test against the same reference."""
    free_verdict = reference_test(two_way_overlap(validation, free["generated"]), reference)
    return sample_metrics(records, free["durations"], free["firsts"], free_verdict)


def feature_rows(ours: dict, reference: dict, verdict: dict) -> tuple[list[list], list[dict]]:
    """Per feature, its row of the features table and its point of the overlap plot (feature_overlap.json)."""
    from pipeline.music.features import FEATURES

    table_rows, plot_rows = [], []
    for name in FEATURES:
        o, r = ours[name], reference[name]
        table_rows.append([name.replace("_", " "), f"{o['mean_a']:.3g} ± {o['std_a']:.2g}",
                           f"{o['mean_b']:.3g} ± {o['std_b']:.2g}", _num(o["overlap"]),
                           f"{_num(r['overlap'])} (p10 {_num(r['overlap_p10'])})", f"{verdict['ratios'][name]:.2f}",
                           _num(o["kl"]), _num(r["kl"])])  # fmt: skip
        plot_rows.append({"feature": name, "generated": _rounded(o["overlap"]), "reference": _rounded(r["overlap"])})
    return table_rows, plot_rows


def samples_lines(summary: dict, seconds: float, rows: list[list], rolls: list[str]) -> list[str]:
    """The section's heading, what the samples table shows, the table, then the piano rolls two by two."""
    settings = ", ".join(f"{k} {v}" for k, v in summary["settings"].items())
    return [
        "## Samples",
        "",
        f"Made by the generate stage with {settings}; audio: {summary['wav']}. Every sample is shown: sample i is "
        "seed + i, none is picked. First note: seconds from the sample's start to its first note. Notes over 5 s: "
        "the share of its notes held longer (real music has next to none). Polyphony: the mean number of keys "
        "sounding while any does; note duration: the mean, in seconds. Rule: the releases that the note-length "
        "rule imposed (generate.max_note_s). The last row is the first "
        f"{seconds:g} s of every train piece.",
        "",
        *table(SAMPLE_COLUMNS, rows, "lrrrrrrrll"),
        "",
        *table(["", ""], [rolls[i : i + 2] + [""] * (2 - len(rolls[i : i + 2])) for i in range(0, len(rolls), 2)]),
        "",
    ]


def comparison_lines(seconds: float, generated: int, excerpts: int, table_rows: list[list], verdict: dict) -> list[str]:
    """Generated against real music: how the features are compared, their table, and the same-size reference test."""
    outcome = "**passed**" if verdict["passed"] else "**failed**"
    return [
        f"### Generated against real music ({generated} samples, {excerpts} validation excerpts)",
        "",
        f"Yang & Lerch (2018): for each feature, the distances between real excerpts (validation, {seconds:g} s each) "
        "and between each generated sample and each real excerpt, as densities; their overlap (1 is "
        "indistinguishable), the lower of the two ways round, and KL divergence (0 is indistinguishable). The "
        f"reference puts real music in the samples' place: {REFERENCE_DRAWS} draws of {generated} real "
        f"{seconds:g}-second openings of train pieces (as many as there are samples), compared with the same "
        "validation excerpts; the mean, and the 10th percentile of the overlap. That is what indistinguishable "
        "looks like with this many samples.",
        "",
        *table(FEATURE_COLUMNS, table_rows, "lrrrrrrr"),
        "",
        f"Same-size reference test: {outcome}. It asks every feature's overlap to reach {MIN_FEATURE_RATIO:g} of "
        f"its reference (the lowest is {verdict['lowest'].replace('_', ' ')}, at "
        f"{verdict['ratios'][verdict['lowest']]:.2f}) and the mean over features {MIN_MEAN_RATIO:g} of the "
        f"reference's mean ({verdict['mean_ratio']:.2f}).",
        "",
    ]


def rule_lines(summary: dict, measured: dict) -> list[str]:
    """The samples' figures with the note-length rule beside those of the same seeds without it."""
    if "without_rule" not in measured:
        return ["The note-length rule was off (generate.max_note_s is 0): the samples are the model's alone.", ""]
    limit = summary["settings"].get("max_note_s")
    names = ["silent", "note_held_over_10s", "first_note_median_s", "notes_over_5s", "overlap_ratio_lowest",
             "overlap_ratio_mean", "reference_test_passed"]  # fmt: skip
    rows = [[label, *(m[n] for n in names)] for label, m in (("with the rule", measured),
            ("without (the model alone)", measured["without_rule"]))]  # fmt: skip
    released = sum(s.get("rule_releases", 0) for s in summary["samples"])
    return [
        f"**The note-length rule** (generate.max_note_s = {limit:g}): a key that has sounded {limit:g} s is "
        f"released at the next event; it imposed {released} releases over the {len(summary['samples'])} samples "
        "(per sample in the table above). The same seeds without it:",
        "",
        *table(
            [
                "samples",
                "silent",
                "held over 10 s",
                "first note (median s)",
                "notes over 5 s",
                "lowest overlap ratio",
                "mean overlap ratio",
                "reference test passed",
            ],
            rows,
            "lrrrrrrr",
        ),  # fmt: skip
        "",
    ]


def sample_metrics(records: list[dict], durations: list[np.ndarray], firsts: list[float], verdict: dict) -> dict:
    """The samples' figures for `dvc metrics`: silent and held-note counts, first notes, long notes, the reference
    test."""
    every = np.concatenate(durations) if durations else np.zeros(0)
    return {
        "samples": len(records),
        "silent": sum("silent" in r["flags"] for r in records),
        "note_held_over_10s": sum("note_held_over_10s" in r["flags"] for r in records),
        "first_note_median_s": round(float(np.median(firsts)), 3) if firsts else None,
        "notes_over_5s": round(float(np.mean(every > HELD_NOTE_S)), 4) if len(every) else 0.0,
        "overlap_ratio_lowest": round(verdict["ratios"][verdict["lowest"]], 4),
        "overlap_ratio_mean": round(verdict["mean_ratio"], 4),
        "reference_test_passed": verdict["passed"],
    }


def _share(durations: np.ndarray) -> str:
    return f"{np.mean(durations > HELD_NOTE_S):.1%}" if len(durations) else "–"


def _rounded(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 4)


def _num(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"
