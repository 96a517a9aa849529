"""The `maestro-xl` command line: one Typer command per pipeline stage, each reading its params.yaml section."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.params import GenerateParams

DEFAULTS = GenerateParams()  # the generate: values a run gets when neither params.yaml nor an option sets them

app = typer.Typer(
    help="MAESTRO v3 to a Transformer-XL piano composer, one pipeline stage per command (see dvc.yaml).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", help="params file whose stage section is read")]


def _default(value: object) -> str:
    """A help text's bracketed default, escaped where Typer reads help texts as Rich markup ([auto] is a style tag)."""
    text = f"[{value:g}]" if isinstance(value, float) else f"[{value}]"
    if app.rich_markup_mode != "rich":
        return text
    from rich.markup import escape

    return escape(text)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _run(stage, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
    """Call a stage, turning a PipelineError into a one-line error message and exit status 1."""
    from pipeline.errors import PipelineError

    try:
        return stage(*args, **kwargs)
    except PipelineError as exc:
        _fail(str(exc))


@app.command()
def fetch(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="where MAESTRO lands")] = Path("data/raw/maestro-v3.0.0"),
    downloads: Annotated[Path, typer.Option(help="download cache")] = Path("data/downloads"),
) -> None:
    """Fetch MAESTRO v3 from data.source (an http(s) URL, a local .zip or a local folder) into OUT.

    Downloads resume after an interruption and are checked against data.size and data.sha256 before extraction.
    """
    from pipeline.fetch import fetch as run_fetch
    from pipeline.params import load_section

    p = _run(load_section, "data", params)
    counts = _run(run_fetch, str(p["source"]), out, p.get("sha256") or None, p.get("size") or None, downloads)
    typer.echo(f"fetch: {counts['listed']} pieces listed, {counts['missing']} MIDI files missing -> {out}")


@app.command()
def parse(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="MAESTRO folder from fetch")] = Path("data/raw/maestro-v3.0.0"),
    out: Annotated[Path, typer.Option(help="folder of Parquet tables")] = Path("data/events"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/parse.json"),
) -> None:
    """Parse every MIDI file into Parquet tables (pieces, notes, pedals) with symusic, in parallel.

    A file that cannot be parsed is recorded in OUT/parse_report.json and skipped; the stage fails only when more
    than parse.max_bad_fraction of the files fail.
    """
    from pipeline.params import load_section
    from pipeline.parse import parse as run_parse

    p = _run(load_section, "parse", params)
    report = _run(
        run_parse,
        raw,
        out,
        metrics,
        workers=int(p.get("workers", 0)),
        max_bad_fraction=float(p.get("max_bad_fraction", 0.05)),
        max_duration=float(p.get("max_duration_s", 7200)),
        progress=sys.stderr.isatty(),
    )
    typer.echo(
        f"parse: {report['parsed']} of {report['files']} files, {report['notes']:,} notes, {report['hours']} h -> {out}"
    )
    for failure in report["failures"][:20]:
        typer.echo(f"  skipped {failure['midi_filename']}: {failure['reason']}", err=True)


@app.command()
def validate(
    params: ParamsOption = Path("params.yaml"),
    raw: Annotated[Path, typer.Option(help="MAESTRO folder from fetch")] = Path("data/raw/maestro-v3.0.0"),
    events: Annotated[Path, typer.Option(help="Parquet tables from parse")] = Path("data/events"),
    out: Annotated[Path, typer.Option(help="validated pieces and quarantine")] = Path("data/validated"),
    report: Annotated[Path, typer.Option(help="readable summary")] = Path("reports/validation.md"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/validation.json"),
) -> None:
    """Check the metadata, notes and pieces with great-expectations; quarantine every piece that fails.

    Writes OUT/pieces.parquet (the pieces that passed, all that tokenize reads), OUT/quarantine.parquet, the
    Markdown summary REPORT and the counts in METRICS. Fails only past validate.max_bad_fraction.
    """
    from pipeline.params import load_section
    from pipeline.validate import validate as run_validate

    p = _run(load_section, "validate", params)
    result = _run(
        run_validate,
        raw,
        events,
        out,
        report,
        metrics,
        duration_tolerance_s=float(p.get("duration_tolerance_s", 5.0)),
        onset_tolerance_s=float(p.get("onset_tolerance_s", 1.0)),
        min_notes=int(p.get("min_notes", 10)),
        max_bad_fraction=float(p.get("max_bad_fraction", 0.05)),
    )
    typer.echo(f"validate: {result.get('passed')} of {result.get('pieces')} pieces passed -> {out}; see {report}")


@app.command()
def tokenize(
    params: ParamsOption = Path("params.yaml"),
    events: Annotated[Path, typer.Option(help="Parquet tables from parse")] = Path("data/events"),
    validated: Annotated[Path, typer.Option(help="validated pieces")] = Path("data/validated"),
    out: Annotated[Path, typer.Option(help="token shards, index and vocab.json")] = Path("data/tokens"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/tokens.json"),
) -> None:
    """Encode validated pieces as performance events (Music Transformer's 388-event vocabulary plus piece start and
    end) into uint16 shards per split, with a piece index and vocab.json.

    The train split also gets time-stretched copies (tokenize.stretch); validation and test are left as played.
    """
    from pipeline.params import load_section
    from pipeline.tokenize import tokenize as run_tokenize

    p = _run(load_section, "tokenize", params)
    stats = _run(
        run_tokenize,
        events,
        validated,
        out,
        metrics,
        shard_tokens=int(p.get("shard_tokens", 1 << 23)),
        stretch=[float(f) for f in p.get("stretch", [1.0])],
        workers=int(p.get("workers", 0)),
        min_composer_pieces=int(p.get("min_composer_pieces", 20)),
    )
    for split, s in stats["splits"].items():
        typer.echo(f"tokenize: {split}: {s['copies']} pieces, {s['tokens']:,} tokens in {s['shards']} shard(s)")


@app.command()
def train(
    params: ParamsOption = Path("params.yaml"),
    tokens: Annotated[Path, typer.Option(help="token shards from tokenize")] = Path("data/tokens"),
    checkpoints: Annotated[Path, typer.Option(help="resumable checkpoint (last.pt)")] = Path("data/checkpoints"),
    shared: Annotated[Path, typer.Option(help="the shared checkpoint: the last finished run's, pushed by DVC")] = Path(
        "data/shared"
    ),
    out: Annotated[Path, typer.Option(help="model folder: weights, config.json, vocab.json")] = Path("data/trained"),
    live: Annotated[Path, typer.Option(help="DVCLive metrics and plots")] = Path("reports/train"),
) -> None:
    """Train the Transformer-XL (model: and train: params) on the token shards, resuming from CHECKPOINTS.

    On a GPU: bf16 autocast, TF32, fused AdamW, torch.compile (train.compile: auto); on a CPU: the CPU profile's
    smaller shape (train.profile), bf16 autocast where the CPU has it natively (train.precision), the same code.
    SIGTERM or SIGINT saves a checkpoint and stops; the next run resumes there, as long as the model, the data and
    the params that steer training are the same (otherwise the old checkpoint is kept as last.prev.pt), and a
    finished run is exported again only by the same code (the train stage's deps in dvc.yaml): other code trains
    afresh, while a stopped run resumes under it. A finished run copies its checkpoint to SHARED, which DVC pushes
    and pulls; a clone resumes from it. LIVE gets DVCLive's metrics and params.yaml, the shape and settings as
    trained. Under torchrun it trains with DDP.
    """
    from pipeline.model_folder import model_section
    from pipeline.params import load_section, typed
    from pipeline.train import TrainParams
    from pipeline.train import train as run_train
    from pipeline.training.distributed import finish

    model_params = _run(model_section, _run(load_section, "model", params))
    section = _run(typed, TrainParams, _run(load_section, "train", params), "train")
    try:
        result = _run(run_train, tokens, checkpoints, out, live, model_params, TrainParams(**section), shared=shared)
    finally:
        finish()
    if result.get("interrupted"):
        raise typer.Exit(130)


@app.command()
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    tokens: Annotated[Path, typer.Option(help="token shards from tokenize")] = Path("data/tokens"),
    model: Annotated[Path, typer.Option(help="trained model from train")] = Path("data/trained"),
    metrics: Annotated[Path, typer.Option(help="DVC metrics file")] = Path("reports/metrics/eval.json"),
) -> None:
    """Score the trained model on every held-out split (validation, and test when the data has one) with
    Transformer-XL's protocol, beside uniform, unigram and Kneser–Ney baselines fit on the train split.

    Each piece is scored from its start with an empty memory; every token once. Writes NLL (nats and bits per token),
    perplexity, accuracy, nats per second of music, and the NLL per composer to METRICS.
    """
    from pipeline.evaluate import evaluate as run_evaluate
    from pipeline.params import EvaluateParams, load_section, typed

    section = _run(typed, EvaluateParams, _run(load_section, "evaluate", params), "evaluate")
    result = _run(run_evaluate, tokens, model, metrics, EvaluateParams(**section))
    for split, m in result.items():
        b = m["baselines"]
        typer.echo(
            f"evaluate: {split}: {m['nll']:.4f} nats/token ({m['bits_per_token']:.3f} bits, accuracy "
            f"{m['accuracy']:.3f}) over {m['tokens']:,} tokens; Kneser–Ney {b['kneser_ney']:.4f}, unigram "
            f"{b['unigram']:.4f}, uniform {b['uniform']:.4f}"
        )


@app.command()
def package(
    params: ParamsOption = Path("params.yaml"),
    trained: Annotated[Path, typer.Option(help="model folder from train")] = Path("data/trained"),
    reports: Annotated[Path, typer.Option(help="the reports train and evaluate wrote")] = Path("reports"),
    out: Annotated[Path, typer.Option(help="the self-contained model folder")] = Path("data/model"),
) -> None:
    """Make OUT a model folder anyone can share: the weights (safetensors), config.json, vocab.json and a README.md
    model card with the data, its license, the params and the evaluation's figures."""
    from pipeline.package import package as run_package
    from pipeline.params import load_section

    source = str(_run(load_section, "data", params).get("source", "?"))
    typer.echo(f"package: {_run(run_package, trained, out, reports, source)}/ (model.safetensors, config.json, "
               "vocab.json, README.md)")  # fmt: skip


@app.command()
def generate(
    model: Annotated[Path, typer.Option(help="model folder (model.safetensors, config.json, vocab.json)")] = Path(
        "data/model"
    ),
    primer: Annotated[Path | None, typer.Option(help="MIDI file whose opening the samples continue")] = None,
    primer_seconds: Annotated[
        float | None, typer.Option(help=f"seconds of the primer to keep {_default(DEFAULTS.primer_seconds)}")
    ] = None,
    keep_primer: Annotated[
        bool | None,
        typer.Option(
            "--keep-primer/--drop-primer",
            help="begin each output with its primer, or leave the primer out "
            f"{_default('--keep-primer' if DEFAULTS.keep_primer else '--drop-primer')}",
            show_default=False,
        ),
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(help=f"seconds of new music per sample {_default(DEFAULTS.seconds)}")
    ] = None,
    stop_at_piece_end: Annotated[
        bool | None,
        typer.Option(
            "--stop-at-piece-end/--play-to-length",
            help="let the model end a sample early, or sample each to its full length "
            f"{_default('--stop-at-piece-end' if DEFAULTS.stop_at_piece_end else '--play-to-length')}",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help=f"softmax temperature, above 0 {_default(DEFAULTS.temperature)}")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help=f"sample among the k likeliest tokens; 0 is off {_default(DEFAULTS.top_k)}")
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(help=f"nucleus: the likeliest tokens holding p, in (0, 1] {_default(DEFAULTS.top_p)}"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help=f"sample i uses seed + i {_default(DEFAULTS.seed)}")] = None,
    samples: Annotated[
        int | None, typer.Option(help=f"samples per primer and composer {_default(DEFAULTS.samples)}")
    ] = None,
    wav_samples: Annotated[
        int | None,
        typer.Option(help=f"render WAV for the first this many samples only {_default(DEFAULTS.wav_samples)}"),
    ] = None,
    max_note_s: Annotated[
        float | None,
        typer.Option(help=f"release a key sounding this many seconds; 0 is off {_default(DEFAULTS.max_note_s)}"),
    ] = None,
    composer: Annotated[
        str | None,
        typer.Option(
            help="a composer (a name or surname in vocab.json, or none); unset: each of generate.composers "
            f"{_default('none')}"
        ),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            help=f"classifier-free guidance of the composer: 1 plain, above 1 more so {_default(DEFAULTS.guidance)}"
        ),
    ] = None,
    mem_len: Annotated[
        int | None,
        typer.Option(
            help="hidden states kept per layer while sampling "
            f"{_default('twice model.mem_len' if DEFAULTS.mem_len is None else DEFAULTS.mem_len)}"
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help=f"auto, cuda or cpu {_default(DEFAULTS.device)}")] = None,
    precision: Annotated[
        str | None,
        typer.Option(help=f"auto (bfloat16 where it is faster), float32 or bfloat16 {_default(DEFAULTS.precision)}"),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for sample-NN.mid/.png/.wav and samples.json")] = Path("samples"),
    # The former name of --drop-primer, kept so that existing scripts still run.
    no_primer: Annotated[bool, typer.Option("--no-primer", hidden=True)] = False,
    params: ParamsOption = Path("params.yaml"),
    tokens: Annotated[Path, typer.Option(help="token shards, for generate.primers")] = Path("data/tokens"),
) -> None:
    """Compose piano performances with the trained model: continue a primer (--primer FILE.mid, or the validation
    pieces of generate.primers) or start from nothing, writing MIDI, a piano roll, WAV (with FluidSynth) and
    samples.json to OUT.

    Unset options come from the generate: section of --params (params.yaml, which a project folder has), else the
    defaults in brackets: in the project's folder, for example, the samples are made for each of generate.composers.
    """
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
        "wav_samples": wav_samples,
        "max_note_s": max_note_s,
        "mem_len": mem_len,
        "device": device,
        "precision": precision,
        "composers": None if composer is None else [composer],
        "guidance": guidance,
    }
    values = {**_run(typed, GenerateParams, section, "generate"), **{k: v for k, v in given.items() if v is not None}}
    summary = _run(run_generate, model, out, GenerateParams(**values), primer, tokens)
    for s in summary["samples"]:
        files = ", ".join(f for f in (s["midi"], s["png"], s["wav"]) if f)
        flags = f" [{', '.join(s['flags'])}]" if s["flags"] else ""
        rule = f", {s['rule_releases']} released by the rule" if s.get("rule_releases") else ""
        by = f" as {s['composer']}" if s.get("composer") else ""
        typer.echo(
            f"generate: {s['name']}{by}: {s['seconds']:.1f} s, {s['notes']} notes, {s['tokens']} tokens, "
            f"seed {s['seed']}, "
            f"ended by {s['ended_by']}{rule}{flags} -> {out}/ ({files})"
        )


@app.command()
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


@app.command()
def report(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="folder of README.md, figures/ and plots/")] = Path("reports"),
) -> None:
    """Write the analysis report OUT/README.md (GitHub-flavoured Markdown) with its figures in OUT/figures/ and the
    data of the comparable figures in OUT/plots/, from what the earlier stages wrote.

    The same inputs give the same bytes; what changes from run to run (commit, machine) is in its last section.
    """
    from pipeline.report.stage import Inputs
    from pipeline.report.stage import report as run_report

    path = _run(run_report, Inputs(params=params), out)
    typer.echo(f"report: {path}")


@app.command()
def compare(
    base_rev: Annotated[str, typer.Argument(help="a git revision or a DVC experiment's name")],
    figures: Annotated[Path, typer.Option(help="where images without an address on GitHub are written")] = Path(
        "reports/compare"
    ),
    assets_url: Annotated[str | None, typer.Option(help="where FIGURES is published (default: its path)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the Markdown here rather than print it")] = None,
) -> None:
    """The pull request's comment: which commit and machine made each side, the metrics and params diffs against
    BASE_REV, and every report figure and sample piano roll that changed, old beside new (within GitHub's limit)."""
    from pipeline.atomic import atomic_write_text
    from pipeline.review.compare import compare as run_compare

    markdown = _run(run_compare, base_rev, figures, assets_url)
    if out is None:
        typer.echo(markdown)
    else:
        atomic_write_text(out, markdown)
        typer.echo(f"compare: {out} ({len(markdown):,} characters)")


@app.command()
def pull(
    remote: Annotated[str | None, typer.Option(help="a DVC remote's name (default: the default one)")] = None,
) -> None:
    """`dvc pull` of every stage's cached outputs, so that `dvc repro` has nothing to do and generate and the demo
    run without training; a missing remote or missing files is a one-line error naming the command to run."""
    from pipeline.review.remote import pull as run_pull

    typer.echo(_run(run_pull, remote))
