"""The report's Composers section, for a model trained with composer labels: what knowing the composer is worth
(the NLL with and without the label), how well the model names a piece's composer (top-1 and top-3 against always
naming the composer with the most train pieces, and a confusion matrix), and whether a composer's samples come
closer to that composer's real music than samples with no composer given (Yang & Lerch overlaps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report import figures
from pipeline.report.markdown import table
from pipeline.report.notes import openings, split_notes
from pipeline.report.samples import sample_set, two_way_overlap

NONE = "no composer"


def composers_section(scores: dict, summary: dict, samples: Path, out: Path, pieces: dict, notes: dict) -> list[str]:
    """The section's Markdown (empty for a model without labels), with the confusion matrices in `out`."""
    splits = {split: m for split, m in scores.items() if "identification" in m}
    if not splits:
        return []
    lines = ["## Composers", "", *gain_lines(splits), *identification_lines(splits, out)]
    return lines + style_lines(summary, samples, pieces, notes)


def gain_lines(splits: dict) -> list[str]:
    """The NLL with each piece's composer label against with none (label 0) on the same opening tokens of each piece,
    per split and per composer."""
    rows, per = [], []
    for split, m in splits.items():
        gain = m["label_gain"]
        rows.append([split, f"{m['nll_labelled']:.3f}", f"{m['nll_labelled'] + gain:.3f}", f"{gain:+.4f}",
                     f"{m['labelled_tokens']:,} ({m['labelled_share']:.0%})"])  # fmt: skip
        for composer, nll in m["by_composer_labelled"].items():
            gain = m["by_composer_gain"][composer]
            per.append([split, composer, f"{nll:.3f}", f"{nll + gain:.3f}", f"{gain:+.4f}"])
    return [
        "The model reads each piece's composer label at every token (label dropout trains it without, too). What "
        "knowing the composer is worth, in nats per token: the NLL with the label against with none, on the same "
        "tokens, each piece's opening `evaluate.label_tokens` (their count and share of the split's tokens below).",
        "",
        *table(["split", "with the composer", "without", "gain", "tokens"], rows, "lrrrr"),
        "",
        *table(["split", "composer", "with the composer", "without", "gain"], per, "llrrr"),
        "",
    ]


def identification_lines(splits: dict, out: Path) -> list[str]:
    """Top-1 and top-3 accuracy of naming each piece's composer, beside the majority guess, and the confusions."""
    rows, images = [], []
    for split, m in splits.items():
        named = m["identification"]
        rows.append([split, named["pieces"], named["tokens"], f"{named['top1']:.3f}", f"{named['top3']:.3f}",
                     f"{named['majority']:.3f}"])  # fmt: skip
        name = figures.confusion(
            out / f"composer_confusion_{split}.png",
            np.array(named["confusion"]),
            named["labels"],
            f"Composer named from the first {named['tokens']} tokens ({split})",
        )
        images.append(f"![composer confusion, {split}](figures/{name})")  # fmt: skip
    return [
        "### Who wrote it?",
        "",
        "Each piece's first tokens are scored under every composer's label; the likeliest names the composer. The "
        "majority column always names the composer with the most train pieces.",
        "",
        *table(["split", "pieces", "tokens", "top-1", "top-3", "majority"], rows, "lrrrrr"),
        "",
        *images,
        "",
    ]


def style_lines(summary: dict, samples: Path, pieces: dict, notes: dict) -> list[str]:
    """For each composer the samples were asked for: the mean Yang & Lerch overlap of its samples with that
    composer's real validation openings, beside the overlap of the samples with no composer given."""
    from pipeline.music.features import FEATURES, feature_values

    seconds = float(summary["settings"]["seconds"])
    records = summary["samples"]
    asked = list(dict.fromkeys(s.get("composer") for s in records))
    if len(asked) < 2 or None not in asked:
        return []
    values = dict(zip((id(s) for s in records), sample_set(samples, records, seconds)["values"], strict=True))
    rows_of = np.flatnonzero(pieces["split"] == "validation")
    real = split_notes(pieces, notes, "validation")
    free = [values[id(s)] for s in records if s.get("composer") is None]
    rows = []
    for composer in (c for c in asked if c is not None):
        theirs = [n for n, r in zip(real, rows_of, strict=True) if _same(pieces["composer"][r], composer)]
        reference = [feature_values(o, seconds) for o in openings(theirs, seconds)]
        mine = [values[id(s)] for s in records if s.get("composer") == composer]
        if len(reference) < 2:
            rows.append([composer, len(mine), len(reference), "–", "–"])
            continue
        overlap = [np.nanmean([o[f]["overlap"] for f in FEATURES]) for o in
                   (two_way_overlap(reference, mine), two_way_overlap(reference, free))]  # fmt: skip
        rows.append([composer, len(mine), len(reference), f"{overlap[0]:.3f}", f"{overlap[1]:.3f}"])
    return [
        "### Does asking for a composer bring the music closer?",
        "",
        f"The mean Yang & Lerch overlap (1 is indistinguishable) of each composer's samples with that composer's "
        f"real validation openings ({seconds:g} s), beside the samples with no composer given against the same "
        "openings. With a few samples a side the numbers are rough.",
        "",
        *table(
            ["composer", "its samples", "real openings", "its samples' overlap", f"{NONE}'s overlap"], rows, "lrrrr"
        ),  # fmt: skip
        "",
    ]


def _same(name: str, composer: str) -> bool:
    """Whether the metadata's composer is the label's (labels carry the metadata's own names)."""
    return str(name) == composer
