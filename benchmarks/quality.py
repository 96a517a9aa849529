"""Music the model plays by itself, judged over training seeds against real music: for each seed the CPU-recipe
model (trained here, or a model folder given for it), 16 samples of 30 s (12 with composers, 4 without) and 8 of
120 s without a composer, each with the note-length rule and without; one table against real validation openings and
windows, and each criterion of the long-form quality bar, met or not.

The peer of every figure is real music from the same data: the first 30 s of every validation piece, and the 30-s
windows of every validation piece that lasts 120 s. Samples are never picked: sample i draws from seed + i. For a
model that reads a texture track, a second peer: the real train pieces whose tracks the samples draw (the same for
every seed), measured as the samples are, so that the table says how close the pieces the samples follow come to
the bar themselves.

Usage: python benchmarks/quality.py [--seeds 1234 1 2] [--model SEED=FOLDER ...] [--work DIR] [--params params.yaml]
       [--data data] [--train-set SECTION.KEY=VALUE ...] [--generate-set KEY=VALUE ...] [--short 30] [--long 120]
       [--json FILE]
Needs the pipeline's data (DATA/events, DATA/validated, DATA/tokens: `dvc repro` up to tokenize). Each seed trains
as `maestro-xl train` would with train.seed set (about 7.5 minutes on two cores), then samples (about 3 minutes).
The long samples are measured in windows of --short seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LONG_SAMPLES = 8  # samples of --long seconds, without a composer
EVERY, EVERY_WINDOW, IN_WINDOWS = "every texture criterion", "every criterion of the windows", "in every window"


def trained_model(seed: int, work: Path, params: Path, data: Path, overrides: list[str]) -> Path:
    """Train the CPU-recipe model with train.seed = `seed` (and `overrides`) into work/seed-N; its model folder."""
    folder = work / f"seed-{seed}"
    if (folder / "trained" / "config.json").is_file():
        return folder / "trained"
    folder.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load(params.read_text())
    settings["train"]["seed"] = seed
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        settings[section][name] = yaml.safe_load(value)
    (folder / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    command = [sys.executable, "-m", "pipeline", "train", "--params", str(folder / "params.yaml"), "--tokens",
               str(data / "tokens"),
               "--checkpoints", str(folder / "checkpoints"), "--shared", str(folder / "shared"),
               "--out", str(folder / "trained"), "--live", str(folder / "live")]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return folder / "trained"


def sample_sets(model: Path, out: Path, params: Path, data: Path, short: float, long: float, overrides: list[str]
                ) -> dict[str, list]:  # fmt: skip
    """The four sample sets' notes: `short` and `long` seconds, each with the rule and without (the generate params
    with `overrides`, KEY=VALUE each)."""
    from pipeline.generate import generate
    from pipeline.params import GenerateParams, load_section, typed
    from pipeline.report.notes import new_notes

    base = GenerateParams(**typed(GenerateParams, load_section("generate", params), "generate"))
    changes = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in overrides)}
    base = dataclasses.replace(base, primers=[], wav_samples=0, long_samples=0, **changes)
    runs = {"short": dataclasses.replace(base, seconds=short),
            "long": dataclasses.replace(base, seconds=long, samples=LONG_SAMPLES, composers=[])}  # fmt: skip
    sets = {}
    for name, p in runs.items():
        summary = generate(model, out / name, p, tokens=data / "tokens")
        sets[f"{name}_records"] = summary["samples"]
        sets[f"{name}_with_rule"] = [new_notes(out / name / r["midi"], 0.0) for r in summary["samples"]]
        sets[f"{name}_without_rule"] = [new_notes(out / name / r["midi"], 0.0) for r in summary["without_rule"]]
    return sets


def real_music(data: Path, stretch: list, short: float, long: float) -> dict:
    """Every figure of real music, once for all seeds: the texture of the validation openings of `short` s and of
    the windows of the validation pieces that last `long` s, the same-size reference test's excerpts and pool, and
    the train split's passage index with the longest run any opening shares with it."""
    from pipeline.music.features import feature_values
    from pipeline.music.originality import PassageIndex, note_intervals
    from pipeline.music.texture import set_texture, window
    from pipeline.report.notes import openings, split_notes
    from pipeline.report.samples import real_features
    from pipeline.report.stage import load_pieces

    pieces, notes = load_pieces(data / "validated", data / "events")
    validation, train = split_notes(pieces, notes, "validation"), split_notes(pieces, notes, "train")
    first = openings(validation, short)
    lasting = [p for p in validation if len(p["offset"]) and float(np.max(p["offset"])) >= long]
    index = PassageIndex(note_intervals(p["onset"] * f, p["pitch"]) for p in train for f in stretch)
    windows = range(int(long // short))
    return {
        # Each split's openings and the windows of its pieces that last `long`, for sets of real pieces (real_chance).
        "sets": {
            split: (
                openings(pieces, short),
                [
                    [window(p, k * short, short) for k in windows]
                    for p in pieces
                    if len(p["offset"]) and float(np.max(p["offset"])) >= long
                ],
            )
            for split, pieces in (("train", train), ("validation", validation))
        },  # fmt: skip
        "texture": set_texture(first, short),
        "windows": [
            set_texture([window(p, k * short, short) for p in lasting], short) for k in range(int(long // short))
        ],
        # The report's same-size reference test: validation excerpts, and train openings in the samples' place.
        "excerpts": real_features(validation, short, 2, 10_000, seed=0),
        "pool": [feature_values(o, short) for o in openings(train, short)],
        "index": index,
        "longest": max(index.longest(note_intervals(o["onset"], o["pitch"])) for o in first),
    }


def measure(sets: dict[str, list], real: dict, short: float, long: float, drawn: dict | None = None) -> dict:
    """Texture of the short sets and of each short window of the long sets, held notes, the same-size reference test
    and the longest run shared with a train piece, beside the same figures of real music (and of the `drawn` train
    pieces, `drawn_music`'s, where given)."""
    from pipeline.music.features import feature_values
    from pipeline.music.originality import note_intervals
    from pipeline.music.texture import set_texture, window
    from pipeline.report.samples import reference_draws, reference_test, two_way_overlap

    index, windows = real["index"], range(int(long // short))
    result = {"real": real["texture"], "real_windows": real["windows"], "real_longest": real["longest"]}
    if drawn:
        result["drawn"] = {"short": set_texture(drawn["short"], short),
                           "windows": [set_texture([window(n, k * short, short) for n in drawn["long"]], short)
                                       for k in windows]}  # fmt: skip
    for rule in ("with_rule", "without_rule"):
        brief, extended = sets[f"short_{rule}"], sets[f"long_{rule}"]
        generated = [feature_values(n, short) for n in brief]
        draws = reference_draws(real["excerpts"], real["pool"], len(brief))
        verdict = reference_test(two_way_overlap(real["excerpts"], generated), draws)
        result[rule] = {
            "short": set_texture(brief, short),
            "windows": [set_texture([window(n, k * short, short) for n in extended], short) for k in windows],
            "held_over_10s": sum(bool(len(n["onset"])) and float(np.max(n["offset"] - n["onset"])) > 10 for n in brief),
            "reference": verdict,
            "longest": max(index.longest(note_intervals(n["onset"], n["pitch"])) for n in brief + extended),
        }
    return result


def drawn_music(model: Path, data: Path, sets: dict[str, list], short: float, long: float) -> dict[str, list] | None:
    """The real train pieces whose texture tracks the samples of `sets` drew, as notes cut to the samples' lengths
    (None for a model that reads no texture)."""
    from pipeline.generation.decoding import texture_picks
    from pipeline.model_folder import table_pieces
    from pipeline.music.performance_encoding import decode
    from pipeline.music.texture import window

    vocab = json.loads((model / "vocab.json").read_text())
    if "textures" not in vocab:
        return None
    labels = {entry["composer"]: entry["label"] for entry in vocab.get("labels", [])}
    store, kept = table_pieces(data / "tokens")
    drawn = {}
    for name, seconds in (("short", short), ("long", long)):
        picks = [texture_picks(vocab["textures"], labels.get(r["composer"], 0), [r["seed"]], seconds)[0]
                 for r in sets[f"{name}_records"]]  # fmt: skip
        drawn[name] = [window(decode(store.piece(kept[i])), 0.0, seconds) for i in picks]
    return drawn


def real_chance(real: dict, m: dict, sizes: tuple[int, int], short: float, draws: int = 1000) -> dict[str, dict]:
    """How often a set of real pieces of the sample sets' `sizes` (openings, long pieces), drawn at random from each
    split (with replacement only from a split with fewer), meets each texture criterion, and all of them, against the
    validation figures of `m`: the bar's reach at these sizes."""
    from pipeline.music.texture import set_texture

    rng, chance = np.random.default_rng(0), {}
    for split, (first, lasting) in real["sets"].items():
        met = {}
        for _ in range(draws):
            brief = [first[i] for i in rng.choice(len(first), sizes[0], replace=len(first) < sizes[0])]
            extended = [lasting[i] for i in rng.choice(len(lasting), sizes[1], replace=len(lasting) < sizes[1])]
            windows = [set_texture([piece[k] for piece in extended], short) for k in range(len(extended[0]))]
            checks = texture_criteria({"short": set_texture(brief, short), "windows": windows}, m)
            windows_met = all(ok for name, ok in checks.items() if name.endswith(IN_WINDOWS))
            for name, ok in {**checks, EVERY_WINDOW: windows_met, EVERY: all(checks.values())}.items():
                met[name] = met.get(name, 0) + ok
        chance[split] = {name: count / draws for name, count in met.items()}
    return chance


def within(value: float, real: float, share: float) -> bool:
    """Whether `value` lies within ±share of `real`."""
    return bool(np.isfinite(value) and abs(value - real) <= share * abs(real))


def criteria(m: dict, rule: str) -> dict[str, bool]:
    """The quality bar for one sample set (with the rule or without), each criterion met or not."""
    own = m[rule]
    checks = {
        **texture_criteria(own, m),
        "reference test passed": own["reference"]["passed"],
        "no sample copies": own["longest"] <= m["real_longest"],
    }
    if rule == "without_rule":
        checks["at most 1 of 16 holds a note over 10 s"] = own["held_over_10s"] <= 1
        checks["notes over 5 s at most 2x real"] = own["short"]["long_share"] <= 2 * m["real"]["long_share"]
    return checks


def texture_criteria(own: dict, m: dict) -> dict[str, bool]:
    """The quality bar's criteria of texture for one set's 30-s figures and windows (`own`), against real music."""
    real, short = m["real"], own["short"]
    return {
        "mean pitch within 2 semitones": abs(short["mean_pitch"] - real["mean_pitch"]) <= 2,
        "C7 and above at most 3x real": short["high_share"] <= 3 * real["high_share"],
        "spread of mean pitch at most 1.5x real": short["mean_pitch_spread"] <= 1.5 * real["mean_pitch_spread"],
        **{
            f"{name.replace('_', ' ')} within 20%": within(short[name], real[name], 0.2)
            for name in ("notes_per_second", "polyphony", "note_duration")
        },  # fmt: skip
        **{
            f"{name.replace('_', ' ')} within 30% {IN_WINDOWS}": all(
                within(w[name], r[name], 0.3) for w, r in zip(own["windows"], m["real_windows"], strict=True)
            )
            for name in ("notes_per_second", "polyphony", "note_duration")
        },  # fmt: skip
    }


def table(results: dict[int, dict]) -> list[str]:
    """One row per seed and sample set, and real music's rows, as Markdown."""
    head = ["", "mean pitch", "C7+", "spread", "notes/s", "polyphony", "duration (s)", "over 5 s",
            "windows: mean pitch", "windows: notes/s", "windows: polyphony", "held > 10 s", "ref. test (lowest, mean)",
            "longest run", "criteria met"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    first = next(iter(results.values()))
    lines.append(row("real validation music", first["real"], first["real_windows"], "", "", first["real_longest"], ""))
    if first.get("drawn"):
        drawn = first["drawn"]
        met = met_summary(texture_criteria(drawn, first))
        lines.append(row("real train pieces the samples draw", drawn["short"], drawn["windows"], "", "", "", met))
    for seed, m in results.items():
        for rule in ("with_rule", "without_rule"):
            own, met = m[rule], criteria(m, rule)
            verdict = own["reference"]
            ref = f"{'pass' if verdict['passed'] else 'FAIL'} ({verdict['ratios'][verdict['lowest']]:.2f}, " \
                  f"{verdict['mean_ratio']:.2f})"  # fmt: skip
            label = f"seed {seed}, {rule.replace('_', ' ')}"
            lines.append(row(label, own["short"], own["windows"], own["held_over_10s"], ref, own["longest"],
                             met_summary(met)))  # fmt: skip
    return lines


def met_summary(met: dict[str, bool]) -> str:
    """How many criteria are met, and which are not."""
    failed = [name for name, ok in met.items() if not ok]
    return f"{sum(met.values())}/{len(met)}" + (f": not {'; '.join(failed)}" if failed else "")


def row(label: str, short: dict, windows: list[dict], held: object, ref: str, longest: int, met: str) -> str:
    """A table row: the 30-s figures, then the 120-s samples' windows as first → last."""

    def span(name: str, form: str) -> str:
        return " → ".join(format(w[name], form) for w in windows)

    cells = [label, f"{short['mean_pitch']:.1f}", f"{short['high_share']:.1%}", f"{short['mean_pitch_spread']:.1f}",
             f"{short['notes_per_second']:.1f}", f"{short['polyphony']:.2f}", f"{short['note_duration']:.2f}",
             f"{short['long_share']:.1%}", span("mean_pitch", ".1f"), span("notes_per_second", ".1f"),
             span("polyphony", ".1f"), held, ref, longest, met]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    """Train (or take) each seed's model, sample, measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    parser.add_argument("--model", action="append", default=[], help="SEED=FOLDER: this seed's model, not trained")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "quality", help="models and samples go here")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="with events/, validated/ and tokens/")
    parser.add_argument("--train-set", action="append", default=[], help="SECTION.KEY=VALUE for training")
    parser.add_argument("--generate-set", action="append", default=[], help="KEY=VALUE of generate: for sampling")
    parser.add_argument("--short", type=float, default=30.0, help="seconds of the 16 samples, and of each window")
    parser.add_argument("--long", type=float, default=120.0, help="seconds of the 8 long samples")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    given = {int(seed): Path(folder) for seed, folder in (item.split("=", 1) for item in args.model)}
    stretch = yaml.safe_load(args.params.read_text())["tokenize"]["stretch"]
    real, results = real_music(args.data, stretch, args.short, args.long), {}
    for seed in args.seeds:
        model = given.get(seed) or trained_model(seed, args.work, args.params, args.data, args.train_set)
        folder = args.work / f"seed-{seed}" / "samples"
        sets = sample_sets(model, folder, args.params, args.data, args.short, args.long, args.generate_set)
        drawn = drawn_music(model, args.data, sets, args.short, args.long) if not results else None
        results[seed] = measure(sets, real, args.short, args.long, drawn)
        print(f"seed {seed}: measured", flush=True)
    first = next(iter(results.values()))
    sizes = len(sets["short_with_rule"]), len(sets["long_with_rule"])
    first["real_chance"] = real_chance(real, first, sizes, args.short)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print("\n".join(table(results)))
    print(f"\nSets of real pieces of the same sizes ({sizes[0]} openings, {sizes[1]} long pieces), drawn at random "
          f"1,000 times from each split, that meet each texture criterion:\n")  # fmt: skip
    print("\n".join(chance_table(first["real_chance"])))


def chance_table(chance: dict[str, dict]) -> list[str]:
    """`real_chance` as Markdown: a row per criterion, a column per split."""
    splits = list(chance)
    lines = [
        "| criterion | " + " | ".join(f"{split} split" for split in splits) + " |",
        "| --- |" + " ---: |" * len(splits),
    ]
    for name in chance[splits[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{chance[split][name]:.0%}" for split in splits) + " |")
    return lines


if __name__ == "__main__":
    main()
