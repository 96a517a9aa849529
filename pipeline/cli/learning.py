"""The model commands: train the Transformer-XL, evaluate it against the baselines and package it to share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import ParamsOption, _run


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
    from pipeline.params import TrainParams, load_section, typed
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
