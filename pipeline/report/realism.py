"""The report's section on what a listener hears first (pipeline/music/texture.py): the samples' register, density,
polyphony and note lengths beside real openings of their length, with the note-length rule and without; the long
samples window by window beside real pieces, so that drift over minutes shows; and whether a sample copies a train
piece (pipeline/music/originality.py), beside how much real openings share with the train split by chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report.markdown import table

WINDOW_S = 30.0  # the long samples are measured in windows this long
TEXTURE_COLUMNS = ["", "pieces", "mean pitch", "spread of mean pitch", "at C7 and above", "notes per second",
                   "polyphony", "note duration (s)", "notes over 5 s"]  # fmt: skip


def texture_row(label: str, figures: dict) -> list:
    """One row of a texture table: a set's figures (set_texture's), the shares as percentages."""

    def num(value: float, form: str) -> str:
        return "n/a" if not np.isfinite(value) else format(value, form)

    spread = num(figures["mean_pitch_spread"], ".1f") if figures["pieces"] > 1 else "–"  # of one piece: none
    return [label, figures["pieces"], num(figures["mean_pitch"], ".1f"), spread,
            num(figures["high_share"], ".1%"), num(figures["notes_per_second"], ".1f"),
            num(figures["polyphony"], ".2f"), num(figures["note_duration"], ".2f"),
            num(figures["long_share"], ".1%")]  # fmt: skip


def rounded(figures: dict) -> dict:
    """Figures for samples.json: four decimals, None for undefined."""
    return {k: (round(float(v), 4) if np.isfinite(v) else None) for k, v in figures.items()}


def texture_part(real: list[dict], sets: dict[str, list[dict]], seconds: float) -> tuple[list[str], dict]:
    """The samples' texture (one row per set: with the rule, without) beside the first `seconds` of real pieces."""
    from pipeline.music.texture import set_texture

    measured = {"real_openings": set_texture(real, seconds)}
    measured.update({name: set_texture(notes, seconds) for name, notes in sets.items()})
    rows = [texture_row(f"real openings ({seconds:g} s)", measured["real_openings"])]
    rows += [texture_row(f"samples, {name.replace('_', ' ')}", measured[name]) for name in sets]
    lines = [
        "### What a listener hears first: register, density, polyphony, note length",
        "",
        f"Each sample's {seconds:g} s beside the first {seconds:g} s of every validation piece, the sustain pedal "
        "applied to both as the tokens have it. Mean pitch: the mean over pieces of their notes' mean MIDI pitch "
        "(60 is middle C), and its spread (standard deviation) over pieces. At C7 and above, and notes over 5 s: "
        "shares of all notes. Polyphony: the mean number of keys sounding while any does. Without the rule: the "
        "same seeds with the note-length rule off, the model alone.",
        "",
        *table(TEXTURE_COLUMNS, rows, "l" + "r" * 8),
        "",
    ]
    return lines, {name: rounded(figures) for name, figures in measured.items()}


def long_form_part(real_pieces: list[dict], long_samples: list[tuple[str, dict]], seconds: float) -> tuple[list, dict]:
    """Each long sample's texture window by window beside the same windows of every real piece that lasts as long,
    and its piano roll."""
    from pipeline.music.texture import set_texture, window

    if not long_samples:
        return [], {}
    count = int(seconds // WINDOW_S)
    lasting = [p for p in real_pieces if len(p["offset"]) and float(np.max(p["offset"])) >= count * WINDOW_S]
    rows, measured = [], {}
    for k in range(count):
        start, name = k * WINDOW_S, f"{k * WINDOW_S:g}-{(k + 1) * WINDOW_S:g}s"
        real = set_texture([window(p, start, WINDOW_S) for p in lasting], WINDOW_S)
        measured[name] = {"real": rounded(real)}
        rows.append(texture_row(f"{name}: real pieces", real))
        for sample, notes in long_samples:
            figures = set_texture([window(notes, start, WINDOW_S)], WINDOW_S)
            measured[name][sample] = rounded(figures)
            rows.append(texture_row(f"{name}: {sample}", figures))
    rolls = [f"![{sample}](samples/{sample}.png)" for sample, _ in long_samples]
    lines = [
        f"### Long form: {len(long_samples)} samples of {seconds:g} s",
        "",
        f"Made by the generate stage from nothing, without a composer, to {seconds:g} s (generate.long_samples, "
        f"generate.long_seconds), and measured in windows of {WINDOW_S:g} s beside the same windows of the "
        f"{len(lasting)} validation pieces that last as long (spread: over those pieces; a sample is one piece). "
        "A model whose own notes push it somewhere drifts here, window after window.",
        "",
        *table(TEXTURE_COLUMNS, rows, "l" + "r" * 8),
        "",
        *table(["", ""], [rolls[i : i + 2] + [""] * (2 - len(rolls[i : i + 2])) for i in range(0, len(rolls), 2)]),
        "",
    ]
    return lines, measured


def originality_part(train: list[dict], stretch: list[float], real: dict[float, list[dict]],
                     sets: dict[str, list[tuple[str, dict]]]) -> tuple[list[str], dict]:  # fmt: skip
    """For every sample, the longest run of notes it shares with a train piece (as the model saw it: each time
    stretch), beside the same for real validation openings of its length (`real`: openings by length); a sample
    whose run is longer than every real opening's is flagged."""
    from pipeline.music.originality import SEED, PassageIndex, note_intervals

    index = PassageIndex(note_intervals(p["onset"] * factor, p["pitch"]) for p in train for factor in stretch)
    longest = {s: [index.longest(note_intervals(o["onset"], o["pitch"])) for o in real[s]] for s in real}
    measured, rows, flagged = {}, [], []
    for seconds, openings in longest.items():
        median = float(np.median(openings)) if openings else None
        measured[f"real_openings_{seconds:g}s"] = {"pieces": len(openings), "largest": max(openings, default=SEED),
                                                   "median": median}  # fmt: skip
        rows.append([f"real validation openings ({seconds:g} s, {len(openings)})", max(openings, default=SEED),
                     f"{np.median(openings):g}" if openings else "n/a", ""])  # fmt: skip
    for name, samples in sets.items():
        for sample, notes, seconds in samples:
            run = index.longest(note_intervals(notes["onset"], notes["pitch"]))
            ceiling = measured[f"real_openings_{seconds:g}s"]["largest"]
            measured.setdefault(name, {})[sample] = run
            flagged += [sample] if run > ceiling else []
        runs = list(measured[name].values())
        rows.append([f"samples, {name.replace('_', ' ')} ({len(runs)})", max(runs), f"{np.median(runs):g}",
                     ", ".join(s for s, _, _ in samples if s in flagged) or "none"])  # fmt: skip
    measured["flagged"] = len(flagged)
    lines = [
        "### Originality: the longest passage shared with a train piece",
        "",
        "A passage is a run of notes with the same pitch steps and onset intervals (10 ms steps), so a transposed "
        "copy counts; the train split is indexed at each time stretch the model trained on "
        f"({', '.join(map(str, stretch))}). "
        "Real openings share scales, chords and cadences with the train split too: a sample is flagged when its "
        f"longest run, in notes, is longer than every real opening's of its length. {SEED} is the floor: the index "
        f"finds runs of {SEED + 1} notes and more.",
        "",
        *table(["", "longest run (notes)", "median", "flagged"], rows, "lrrl"),
        "",
    ]
    return lines, measured


def realism_section(samples: Path, summary: dict, sets: dict[str, list[dict]], pieces: dict, notes: dict,
                    stretch: list[float]) -> tuple[list[str], dict]:  # fmt: skip
    """The section's lines and its figures for samples.json: texture, long form and originality. `sets` holds the
    notes of the samples by set (with_rule, and without_rule when the rule was on), in summary order."""
    from pipeline.report.notes import new_notes, openings, split_notes

    seconds = float(summary["settings"]["seconds"])
    validation, train = split_notes(pieces, notes, "validation"), split_notes(pieces, notes, "train")
    real = {seconds: openings(validation, seconds)}
    texture_lines, texture = texture_part(real[seconds], sets, seconds)
    records = {"with_rule": summary["samples"], "without_rule": summary.get("without_rule") or []}
    named = {name: [(r["name"], n, seconds) for r, n in zip(records[name], sets[name], strict=True)] for name in sets}
    long_lines, long_form = [], {}
    if summary.get("long"):
        long_seconds = float(summary["settings"]["long_seconds"])
        made = [(r["name"], new_notes(Path(samples) / r["midi"], 0.0)) for r in summary["long"]]
        long_lines, long_form = long_form_part(validation, made, long_seconds)
        real[long_seconds] = openings(validation, long_seconds)
        named["long"] = [(name, n, long_seconds) for name, n in made]
    originality_lines, originality = originality_part(train, stretch, real, named)
    measured = {"texture": texture, "originality": originality, **({"long_form": long_form} if long_form else {})}
    return [*texture_lines, *long_lines, *originality_lines], measured
