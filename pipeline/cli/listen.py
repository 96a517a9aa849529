"""The listening commands: `generate` composes samples into files, `demo` serves the listening page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import ParamsOption, _default, _fail, _run
from pipeline.params import GenerateParams

DEFAULTS = GenerateParams()  # the generate: values a run gets when neither params.yaml nor an option sets them

# generate's options, one alias each so that its signature reads one line an option; an unset one is None, and the
# value comes from params.yaml's generate: section, else DEFAULTS (the bracketed default in the help).
ModelFolder = Annotated[Path, typer.Option(help="model folder (model.safetensors, config.json, vocab.json)")]
PrimerFile = Annotated[Path | None, typer.Option(help="MIDI file whose opening the samples continue")]
PrimerSeconds = Annotated[
    float | None, typer.Option(help=f"seconds of the primer to keep {_default(DEFAULTS.primer_seconds)}")
]
KeepPrimer = Annotated[
    bool | None,
    typer.Option(
        "--keep-primer/--drop-primer",
        help="begin each output with its primer, or leave the primer out "
        f"{_default('--keep-primer' if DEFAULTS.keep_primer else '--drop-primer')}",
        show_default=False,
    ),
]
Seconds = Annotated[float | None, typer.Option(help=f"seconds of new music per sample {_default(DEFAULTS.seconds)}")]
StopAtPieceEnd = Annotated[
    bool | None,
    typer.Option(
        "--stop-at-piece-end/--play-to-length",
        help="let the model end a sample early, or sample each to its full length "
        f"{_default('--stop-at-piece-end' if DEFAULTS.stop_at_piece_end else '--play-to-length')}",
        show_default=False,
    ),
]
Temperature = Annotated[
    float | None, typer.Option(help=f"softmax temperature, above 0 {_default(DEFAULTS.temperature)}")
]
TopK = Annotated[
    int | None, typer.Option(help=f"sample among the k likeliest tokens; 0 is off {_default(DEFAULTS.top_k)}")
]
TopP = Annotated[
    float | None,
    typer.Option(help=f"nucleus: the likeliest tokens holding p, in (0, 1] {_default(DEFAULTS.top_p)}"),
]
Seed = Annotated[int | None, typer.Option(help=f"sample i uses seed + i {_default(DEFAULTS.seed)}")]
Samples = Annotated[int | None, typer.Option(help=f"samples per primer and composer {_default(DEFAULTS.samples)}")]
LongSamples = Annotated[
    int | None,
    typer.Option(help=f"also this many samples of long_seconds, no composer {_default(DEFAULTS.long_samples)}"),
]
LongSeconds = Annotated[
    float | None, typer.Option(help=f"seconds of new music per long sample {_default(DEFAULTS.long_seconds)}")
]
WavSamples = Annotated[
    int | None,
    typer.Option(help=f"render WAV for the first this many samples only {_default(DEFAULTS.wav_samples)}"),
]
MaxNoteS = Annotated[
    float | None,
    typer.Option(help=f"release a key sounding this many seconds; 0 is off {_default(DEFAULTS.max_note_s)}"),
]
Composer = Annotated[
    str | None,
    typer.Option(
        help="a composer (a name or surname in vocab.json, or none); unset: each of generate.composers "
        f"{_default('none')}"
    ),
]
Guidance = Annotated[
    float | None,
    typer.Option(
        help=f"classifier-free guidance of the composer: 1 plain, above 1 more so {_default(DEFAULTS.guidance)}"
    ),
]
MemLen = Annotated[
    int | None,
    typer.Option(
        help="hidden states kept per layer while sampling "
        f"{_default('twice model.mem_len' if DEFAULTS.mem_len is None else DEFAULTS.mem_len)}"
    ),
]
Device = Annotated[str | None, typer.Option(help=f"auto, cuda or cpu {_default(DEFAULTS.device)}")]
Precision = Annotated[
    str | None,
    typer.Option(help=f"auto (bfloat16 where it is faster), float32 or bfloat16 {_default(DEFAULTS.precision)}"),
]
SamplesOut = Annotated[Path, typer.Option(help="folder for sample-NN.mid/.png/.wav and samples.json")]
NoPrimer = Annotated[bool, typer.Option("--no-primer", hidden=True)]  # --drop-primer's former name, for old scripts
PrimerTokens = Annotated[Path, typer.Option(help="token shards, for generate.primers")]


def generate(
    model: ModelFolder = Path("data/model"),
    primer: PrimerFile = None,
    primer_seconds: PrimerSeconds = None,
    keep_primer: KeepPrimer = None,
    seconds: Seconds = None,
    stop_at_piece_end: StopAtPieceEnd = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    seed: Seed = None,
    samples: Samples = None,
    long_samples: LongSamples = None,
    long_seconds: LongSeconds = None,
    wav_samples: WavSamples = None,
    max_note_s: MaxNoteS = None,
    composer: Composer = None,
    guidance: Guidance = None,
    mem_len: MemLen = None,
    device: Device = None,
    precision: Precision = None,
    out: SamplesOut = Path("samples"),
    no_primer: NoPrimer = False,
    params: ParamsOption = Path("params.yaml"),
    tokens: PrimerTokens = Path("data/tokens"),
) -> None:
    """Compose piano performances with the trained model: continue a primer (--primer FILE.mid, or the validation
    pieces of generate.primers) or start from nothing, writing MIDI, a piano roll, WAV (with FluidSynth) and
    samples.json to OUT.

    Unset options come from the generate: section of --params (params.yaml, which a project folder has), else the
    defaults in brackets: in the project's folder, for example, the samples are made for each of generate.composers."""
    from pipeline.generate import generate as run_generate
    from pipeline.params import load_section, typed

    if no_primer and keep_primer:
        _fail("--keep-primer and --no-primer contradict each other")
    section = _run(load_section, "generate", params) if params.is_file() or params != Path("params.yaml") else {}
    given = {
        "primer_seconds": primer_seconds,
        "keep_primer": False if no_primer else keep_primer,
        "seconds": seconds,
        "stop_at_piece_end": stop_at_piece_end,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "samples": samples,
        "long_samples": long_samples,
        "long_seconds": long_seconds,
        "wav_samples": wav_samples,
        "max_note_s": max_note_s,
        "mem_len": mem_len,
        "device": device,
        "precision": precision,
        "composers": None if composer is None else [composer],
        "guidance": guidance,
    }
    values = {**_run(typed, GenerateParams, section, "generate"), **{k: v for k, v in given.items() if v is not None}}
    _echo_samples(_run(run_generate, model, out, GenerateParams(**values), primer, tokens), out)


def _echo_samples(summary: dict, out: Path) -> None:
    """One line per sample that generate wrote: its composer, length, notes, seed, how it ended and its files."""
    for s in summary["samples"] + summary.get("long", []):
        files = ", ".join(f for f in (s["midi"], s["png"], s["wav"]) if f)
        flags = f" [{', '.join(s['flags'])}]" if s["flags"] else ""
        rule = f", {s['rule_releases']} released by the rule" if s.get("rule_releases") else ""
        by = f" as {s['composer']}" if s.get("composer") else ""
        typer.echo(
            f"generate: {s['name']}{by}: {s['seconds']:.1f} s, {s['notes']} notes, {s['tokens']} tokens, "
            f"seed {s['seed']}, "
            f"ended by {s['ended_by']}{rule}{flags} -> {out}/ ({files})"
        )


def demo(
    model: Annotated[Path, typer.Option(help="model folder (the package stage's)")] = Path("data/model"),
    host: Annotated[str, typer.Option(help="address to listen on; another than 127.0.0.1 opens it to others")] = (
        "127.0.0.1"
    ),
    port: Annotated[int | None, typer.Option(help=f"port {_default('the first free one from 7860')}")] = None,
    params: ParamsOption = Path("params.yaml"),
    tokens: Annotated[Path, typer.Option(help="token shards, for validation primers")] = Path("data/tokens"),
) -> None:
    """Serve the listening page: upload a primer or pick a validation piece, choose a composer and the settings,
    listen, download the MIDI. Settings come from params.yaml's demo: and generate: sections when there is one."""
    from pipeline.demo.page import start

    _run(start, model, tokens, params, host, port)
