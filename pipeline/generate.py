"""generate stage and `maestro-xl generate`: piano performances from the trained model, from nothing or continuing
a primer (pipeline/generation/primers.py), as MIDI, piano rolls, WAV and a summary (samples.json).

The sampler (pipeline/generation/decoding.py) continues each primer with the memory cached, until PIECE_END or
`seconds` of new music. Imports torch, numpy and the standard library at the top; symusic (a primer file), mido
(MIDI out) and matplotlib (piano rolls) where they are used, and FluidSynth runs when it is installed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from model import AttnSpan, TransformerXL
from model.device import DEVICES, PRECISIONS, pick_device
from model.sampling import check_sampling
from pipeline.atomic import atomic_write_text
from pipeline.composers import resolve, unlabelled
from pipeline.errors import PipelineError
from pipeline.generation.decoding import decode_dtype, sample_batch
from pipeline.generation.primers import Primer, load_primers, unconditional
from pipeline.model_folder import load_model, model_vocab, reads_texture
from pipeline.music.audio import render_wav, synthesizer
from pipeline.music.midi import cut_notes, one_note_per_key, write_midi
from pipeline.music.performance_encoding import (
    PIECE_END,
    STEP_S,
    VOCAB_SIZE,
    decode,
    elapsed_steps,
)
from pipeline.music.piano_state import PIANO_STATE_SIZE
from pipeline.params import GenerateParams

MAX_SAMPLES, MAX_SECONDS, MAX_MEM_LEN = 256, 3600.0, 16384  # beyond these a run would not fit in memory
LONG_NOTE_S = 10.0
HELD_NOTE_S = 5.0  # a sample's share of notes longer than this is in its record (real music has next to none)
SAMPLE_FILE = re.compile(r"^(sample|long)-\d+(-without-rule)?\.(mid|png|wav)$")
WITHOUT_RULE = "-without-rule"  # the MIDI of a sample made again without the note-length rule, for the report


def check_params(p: GenerateParams) -> None:
    """Raise PipelineError naming the first setting that makes no sense (or would not fit in memory)."""
    if not math.isfinite(p.temperature):
        raise PipelineError(f"temperature must be a finite number, not {p.temperature}")
    try:
        check_sampling(p.temperature, p.top_k, p.top_p)
    except ValueError as exc:
        raise PipelineError(str(exc)) from exc
    for name, value, ok, rule in (
        ("samples", p.samples, 1 <= p.samples <= MAX_SAMPLES, f"from 1 to {MAX_SAMPLES}"),
        ("wav_samples", p.wav_samples, p.wav_samples >= 0, "0 or more"),
        ("max_note_s", p.max_note_s, 0 <= p.max_note_s < math.inf, "0 (off) or a number of seconds"),
        ("guidance", p.guidance, 0 <= p.guidance < math.inf, "0 or more (1: plain conditioning)"),
        ("seconds", p.seconds, 0 < p.seconds <= MAX_SECONDS, f"above 0 and at most {MAX_SECONDS}"),
        ("long_samples", p.long_samples, 0 <= p.long_samples <= MAX_SAMPLES, f"from 0 to {MAX_SAMPLES}"),
        ("long_seconds", p.long_seconds, 0 < p.long_seconds <= MAX_SECONDS, f"above 0 and at most {MAX_SECONDS}"),
        ("primer seconds", p.primer_seconds, 0 < p.primer_seconds < math.inf, "above 0 and finite"),
        ("seed", p.seed, 0 <= p.seed < 2**63 - MAX_SAMPLES * max(len(p.primers), 1), "from 0 to 2^63 - 1"),
        ("mem_len", p.mem_len, p.mem_len is None or 0 <= p.mem_len <= MAX_MEM_LEN, f"from 0 to {MAX_MEM_LEN}"),
        ("precision", p.precision, p.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("device", p.device, p.device in DEVICES, f"one of {', '.join(DEVICES)}"),
    ):
        if not ok:
            raise PipelineError(f"{name} must be {rule}, not {value!r}")
    for piece in p.primers:
        if isinstance(piece, bool) or not isinstance(piece, int):
            raise PipelineError(f"generate.primers must list validation piece ids (integers), not {piece!r}")


def sample_flags(notes: dict[str, np.ndarray]) -> list[str]:
    """What makes a sample suspect: silent, one pitch over and over, or a note held longer than LONG_NOTE_S."""
    flags = []
    if len(notes["pitch"]) == 0:
        flags.append("silent")
    elif len(notes["pitch"]) > 1 and len(np.unique(notes["pitch"])) == 1:
        flags.append("one_pitch_repeated")
    if len(notes["pitch"]) and float(np.max(notes["offset"] - notes["onset"])) > LONG_NOTE_S:
        flags.append("note_held_over_10s")
    return flags


def write_sample(  # noqa: PLR0913
    folder: Path,
    name: str,
    primer: Primer,
    new: np.ndarray,
    p: GenerateParams,
    synth: tuple | str | None,
    figures: bool = True,
) -> dict:
    """Decode primer + new tokens and write NAME.mid, NAME.png (with `figures`) and (with a synthesizer) NAME.wav;
    return its record."""
    from pipeline.music.pianoroll import draw_piano_roll

    new_steps, limit = elapsed_steps(new), round(p.seconds / STEP_S)
    end = (primer.steps + min(new_steps, limit)) * STEP_S  # in whole steps, as decode's times; a last crossing is cut
    notes = one_note_per_key(cut_notes(decode(np.concatenate([primer.tokens, new])), end))  # as the MIDI holds them
    new_notes = {k: v[notes["onset"] >= primer.seconds] for k, v in notes.items()}
    shown, start = (notes, 0.0) if p.keep_primer else (new_notes, primer.seconds)
    shown = {**shown, "onset": shown["onset"] - start, "offset": shown["offset"] - start}
    length, primer_end = end - start, primer.seconds - start
    write_midi(shown, folder / f"{name}.mid", end=length)
    ended_by = "piece_end" if len(new) and new[-1] == PIECE_END else "seconds"
    if ended_by == "seconds" and new_steps < limit:
        ended_by = "max_tokens"
    flags = sample_flags(new_notes)
    durations = new_notes["offset"] - new_notes["onset"]
    opening = f"after {primer.seconds:.1f} s of {Path(primer.source).name}" if primer.seconds else "from nothing"
    settings = f"temperature {p.temperature:g}, top-k {p.top_k}, top-p {p.top_p:g}"
    title = f"{name}: {end - primer.seconds:.1f} s {opening}; {settings}" + (f"; {', '.join(flags)}" if flags else "")
    if figures:
        draw_piano_roll(shown, folder / f"{name}.png", length, title, primer_end)
    wav = None
    if synth is not None and not isinstance(synth, str):
        wav = render_wav(folder / f"{name}.mid", folder / f"{name}.wav", length, *synth).name
    return {
        "name": name,
        "midi": f"{name}.mid",
        "png": f"{name}.png" if figures else None,
        "wav": wav,
        "primer": {"source": primer.source, "seconds": round(primer.seconds, 2), "kept": p.keep_primer},
        "tokens": int(len(new)),
        "seconds": round(end - primer.seconds, 2),
        "notes": int(len(new_notes["pitch"])),
        "first_note_s": round(float(new_notes["onset"].min() - primer.seconds), 2) if len(durations) else None,
        "held_over_5s": round(float(np.mean(durations > HELD_NOTE_S)), 4) if len(durations) else 0.0,
        "ended_by": ended_by,
        "flags": flags,
    }


def open_model(model_dir: Path, p: GenerateParams, rows: int) -> tuple[TransformerXL, torch.dtype | None, AttnSpan]:
    """The model of `model_dir` on p.device, the dtype its matmuls sample `rows` rows in (decode_dtype), and how far
    its attention reaches while sampling."""
    try:
        device = pick_device(p.device)
    except ValueError as exc:
        raise PipelineError(f"generate.{exc}") from exc
    model = load_model(model_dir, device, PIANO_STATE_SIZE)
    if model.cfg.vocab_size != VOCAB_SIZE:
        raise PipelineError(f"{model_dir}: the model has {model.cfg.vocab_size} tokens, the encoding {VOCAB_SIZE}")
    # How far back the sampling looks, not the weights. Twice the training memory by default, as the evaluation:
    # a Transformer-XL attends well past the memory it was trained with, and the samples keep their key for longer.
    mem_len = p.mem_len if p.mem_len is not None else min(2 * model.cfg.mem_len, MAX_MEM_LEN)
    return model, decode_dtype(p.precision, device, model, rows), dataclasses.replace(model.cfg.span(), mem_len=mem_len)


def generate(
    model_dir: Path, out: Path, p: GenerateParams, primer_file: Path | None = None, tokens: Path = Path("data/tokens")
) -> dict:
    """Write p.samples samples per primer to `out` (MIDI, PNG, WAV when possible, samples.json); return the summary.

    Files are written to a temporary folder and moved into `out` one by one, samples.json last. The sample files of
    the previous run (those its samples.json lists) that this run does not replace are removed; nothing else in
    `out` is touched, and nothing at all before every sample is made.
    """
    out = Path(out)
    check_params(p)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"{out}: exists and is not a folder (--out)")
    primers = load_primers(p, primer_file, tokens)
    model, dtype, span = open_model(model_dir, p, p.samples)
    synth = synthesizer()
    if isinstance(synth, str):
        print(f"generate: WAV files skipped: {synth}", flush=True)
    reads = model.cfg.n_labels or reads_texture(model.cfg)  # a model without either needs no vocab.json
    vocab = model_vocab(model_dir, tokens) if reads else {}
    groups = composer_groups(p, model, model_dir, vocab)
    textures = vocab.get("textures") if reads_texture(model.cfg) else None  # the tracks a texture reader draws from
    records, free = [], []  # free: the same samples made without the rule, when it is on
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        for k, (primer, (label, composer)) in enumerate((pr, g) for pr in primers for g in groups):
            seeds, about = [p.seed + k * p.samples + i for i in range(p.samples)], {"composer": composer}
            rows, released = sample_batch(model, primer, p, seeds, dtype, span, label=label, textures=textures)
            for seed, new, count in zip(seeds, rows, released, strict=True):
                audio = synth if len(records) < p.wav_samples else None
                record = write_sample(Path(tmp), f"sample-{len(records) + 1:02d}", primer, new, p, audio)
                records.append({**record, **about, "seed": seed, "rule_releases": int(count)})
            if p.max_note_s:
                again = sample_batch(model, primer, p, seeds, dtype, span, False, label, textures=textures)[0]
                for seed, new in zip(seeds, again, strict=True):
                    name = f"sample-{len(free) + 1:02d}{WITHOUT_RULE}"
                    record = write_sample(Path(tmp), name, primer, new, p, None, figures=False)
                    free.append({**record, **about, "seed": seed})
        first_long = p.seed + len(primers) * len(groups) * p.samples
        long = long_samples(model, p, first_long, dtype, span, Path(tmp), textures)
        move_samples(Path(tmp), out)
    settings = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("primers", "precision")}
    summary = {
        "model": str(model_dir),
        "settings": {
            **settings,
            "device": next(model.parameters()).device.type,
            "mem_len": span.mem_len,
            "precision": "bfloat16" if dtype else "float32",
        },
        "wav": f"rendered with FluidSynth for the first {min(p.wav_samples, len(records))} samples"
        if not isinstance(synth, str)
        else f"skipped: {synth}",
        "samples": records,
        "without_rule": free,
        "long": long,
    }
    atomic_write_text(out / "samples.json", json.dumps(summary, indent=2) + "\n")
    return summary


def long_samples(  # noqa: PLR0913
    model: TransformerXL,
    p: GenerateParams,
    first_seed: int,
    dtype: torch.dtype | None,
    span: AttnSpan,
    folder: Path,
    textures: dict | None = None,
) -> list[dict]:
    """p.long_samples samples of p.long_seconds from nothing, without a composer, with the rule as p has it, seeded
    from `first_seed` on (a texture-reading model's drawn from `textures`): long-NN.mid and .png in `folder`; their
    records."""
    if not p.long_samples:
        return []
    long = dataclasses.replace(p, seconds=p.long_seconds, stop_at_piece_end=False)
    seeds, primer = [first_seed + i for i in range(p.long_samples)], unconditional()
    rows, released = sample_batch(model, primer, long, seeds, dtype, span, textures=textures)
    made = enumerate(zip(seeds, rows, released, strict=True))
    return [{**write_sample(folder, f"long-{i + 1:02d}", primer, new, long, None), "seed": seed,
             "rule_releases": int(count)} for i, (seed, new, count) in made]  # fmt: skip


def composer_groups(
    p: GenerateParams, model: TransformerXL, model_dir: Path, vocab: dict
) -> list[tuple[int, str | None]]:
    """(label, composer) of each group of samples: p.composers' labels (the names in the model folder's vocab.json),
    or one group without a composer, which a model without labels gets whatever p.composers says (and says so)."""
    if all(unlabelled(name) for name in p.composers):
        return [(0, None)]
    if not model.cfg.n_labels:
        print(f"generate: the model was trained without composer labels (model.composer_labels), so the samples have "
              f"no composer: {', '.join(map(str, p.composers))} left aside", flush=True)  # fmt: skip
        return [(0, None)]
    return resolve(p.composers, model_labels(model, model_dir, vocab))


def model_labels(model: TransformerXL, model_dir: Path, vocab: dict) -> list[dict]:
    """The composer labels of a model with labels (its `vocab`'s, `model_vocab`), checked against the model's count."""
    labels = vocab.get("labels", [])
    if len(labels) != model.cfg.n_labels:
        raise PipelineError(
            f"{model_dir}: vocab.json lists {len(labels)} composer labels, the model has {model.cfg.n_labels}"
        )
    return labels


def move_samples(made: Path, out: Path) -> None:
    """Move every file of `made` into `out`, then remove the previous run's sample files that none replaced."""
    previous = previous_sample_files(out)
    out.mkdir(exist_ok=True)
    written = {path.name for path in made.iterdir()}
    for name in sorted(written):
        os.replace(made / name, out / name)
    for name in previous - written:
        (out / name).unlink(missing_ok=True)


def previous_sample_files(out: Path) -> set[str]:
    """The files that the samples.json in `out` lists (a run's own files, and only those, are replaced)."""
    try:
        listed = json.loads((out / "samples.json").read_text())
        samples = listed["samples"] + listed.get("without_rule", []) + listed.get("long", [])
        names = {s[key] for s in samples for key in ("midi", "png", "wav") if s.get(key)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name in names if isinstance(name, str) and SAMPLE_FILE.match(name)}
