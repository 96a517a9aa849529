"""report stage: reports/README.md, the Markdown that reviewers read in a pull request, with PNG figures in
reports/figures/ and the data behind the comparable figures in reports/plots/ (declared as DVC plots).

It reads only what earlier stages wrote, and the same inputs give the same bytes: every figure is drawn from data,
without dates, and everything measured per run (the commit, the machine) sits in one marked section at the end.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from pipeline.atomic import atomic_write_text
from pipeline.errors import PipelineError
from pipeline.params import load_section
from pipeline.report import figures
from pipeline.report.attribution import composers_section
from pipeline.report.markdown import read_json, table
from pipeline.report.samples import samples_section
from pipeline.training.live import cpu_model

SPLITS = ("train", "validation", "test")
# Published figures, as far as their sources could be checked. None is comparable like for like: other MAESTRO
# versions, splits, encodings, context windows and far larger training budgets.
LITERATURE = (
    (
        "Music Transformer (Huang et al. 2019)",
        "≈ 1.84",
        "MAESTRO v1, test",
        "reported in the MAESTRO paper, Hawthorne et al. 2019, [arXiv:1810.12247](https://arxiv.org/abs/1810.12247); "
        "quoted from secondary sources, the paper's table not checked",
    ),
    (
        "Perceiver AR (Hawthorne et al. 2022)",
        "1.82",
        "MAESTRO v1, validation and test",
        "[arXiv:2202.07765](https://arxiv.org/abs/2202.07765); quoted from a results aggregator, the paper's table "
        "not checked",
    ),
    (
        "gwinndr/MusicTransformer-Pytorch, RPR model",
        "1.92",
        "MAESTRO v2, test",
        '[README](https://github.com/gwinndr/MusicTransformer-Pytorch), "Best loss for *rpr* model: 1.92 on epoch '
        '216": cross-entropy in nats on one random 2,048-token crop per piece, the best of 300 epochs chosen on the '
        "test set itself",
    ),
)
LIBRARIES = ("torch", "numpy", "symusic", "pyarrow", "matplotlib", "scipy", "mido", "dvc")


@dataclass
class Inputs:
    """Where the earlier stages' outputs are."""

    raw: Path = Path("data/raw/maestro-v3.0.0")
    events: Path = Path("data/events")
    validated: Path = Path("data/validated")
    metrics: Path = Path("reports/metrics")
    train: Path = Path("reports/train")
    samples: Path = Path("reports/samples")
    params: Path = Path("params.yaml")


def load_pieces(validated: Path, events: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The validated pieces (columns as arrays) and all their notes (with a `piece` row index into the pieces)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in (validated / "pieces.parquet", events / "notes", events / "pedals"):
        if not path.exists():
            raise PipelineError(f"{path}: not found (run the stages before report: dvc repro)")
    pieces = pq.read_table(validated / "pieces.parquet").sort_by("piece_id")
    notes = pq.read_table(events / "notes", columns=["piece_id", "onset", "offset", "pitch", "velocity"])
    notes = notes.filter(pc.is_in(notes["piece_id"], pieces["piece_id"]))
    p = {name: pieces[name].to_numpy(zero_copy_only=False) for name in pieces.column_names}
    n = {name: notes[name].to_numpy() for name in notes.column_names}
    n["piece"] = np.searchsorted(p["piece_id"], n["piece_id"])
    return p, n


def data_section(inputs: Inputs, out: Path, pieces: dict, notes: dict) -> list[str]:
    """What the data holds: per split counts, composers, durations, note statistics, pedal use, tokens, validation."""
    hours = pieces["file_duration"] / 3600
    splits = [s for s in SPLITS if np.any(pieces["split"] == s)]
    rows = [
        [s, int(np.sum(pieces["split"] == s)), f"{hours[pieces['split'] == s].sum():.1f}",
         f"{int(pieces['n_notes'][pieces['split'] == s].sum()):,}"]
        for s in splits
    ]  # fmt: skip
    rows.append(["all", len(hours), f"{hours.sum():.1f}", f"{int(pieces['n_notes'].sum()):,}"])
    composers, inverse = np.unique(pieces["composer"], return_inverse=True)
    composer_hours = np.bincount(inverse, weights=hours)
    top = np.argsort(-composer_hours, kind="stable")[:12]
    fig = {
        "composers": figures.bars(out / "composers.png", [composers[i] for i in top], composer_hours[top].tolist(),
                                  "The twelve composers with the most hours", "hours"),
        "durations": figures.histograms(out / "durations.png", {s: pieces["file_duration"][pieces["split"] == s] / 60
                                        for s in splits}, np.linspace(0, 50, 51), "Piece durations", "minutes"),
        "pitch": figures.histograms(out / "pitch.png", {"notes": notes["pitch"]}, np.arange(20.5, 109.5),
                                    "Pitch (MIDI note number; 60 is middle C)", "pitch"),
        "velocity": figures.histograms(out / "velocity.png", {"notes": notes["velocity"]}, np.arange(0.5, 128.5),
                                       "Velocity", "MIDI velocity"),
        "duration": figures.histograms(out / "note_duration.png", {"notes": notes["offset"] - notes["onset"]},
                                       np.geomspace(0.01, 30, 60), "Note duration (sustain pedal applied)", "seconds",
                                       log_x=True),
        "density": figures.histograms(out / "notes_per_second.png", {s: (pieces["n_notes"] / pieces["file_duration"])
                                      [pieces["split"] == s] for s in splits}, np.linspace(0, 30, 61),
                                      "Notes per second, per piece", "notes per second"),
    }  # fmt: skip
    tokens = read_json(inputs.metrics / "tokens.json")["splits"]
    kinds = list(next(iter(tokens.values()))["event_frequency"])
    token_rows = [[s, f"{t['tokens']:,}", f"{t['tokens_per_second']:.1f}",
                   *(f"{t['event_frequency'][k]:.3f}" for k in kinds)] for s, t in tokens.items()]  # fmt: skip
    checked = read_json(inputs.metrics / "validation.json")
    lines = [
        "## Data",
        "",
        *table(["split", "pieces", "hours", "notes"], rows),
        "",
        f"![composers](figures/{fig['composers']})",
        f"![durations](figures/{fig['durations']})",
        f"![pitch](figures/{fig['pitch']})",
        f"![velocity](figures/{fig['velocity']})",
        f"![note duration](figures/{fig['duration']})",
        f"![notes per second](figures/{fig['density']})",
        "",
        pedal_line(inputs, pieces),
        "",
        "Tokens (train counts include the time-stretched copies) and the share of each event type:",
        "",
        *table(["split", "tokens", "tokens per second", *kinds], token_rows),
        "",
        f"Validation: {checked['passed']} of {checked['pieces']} pieces passed, {checked['quarantined']} quarantined; "
        "see [validation.md](validation.md) for every expectation and each quarantined piece.",
        "",
    ]
    return lines


def pedal_line(inputs: Inputs, pieces: dict) -> str:
    """The average share of each piece's time with each pedal down."""
    import pyarrow.parquet as pq

    pedals = pq.read_table(inputs.events / "pedals").to_pydict()
    ids = set(pieces["piece_id"].tolist())
    down: dict[str, dict[int, float]] = {}
    for piece, pedal, on, off in zip(
        pedals["piece_id"], pedals["pedal"], pedals["onset"], pedals["offset"], strict=True
    ):
        if piece in ids:
            down.setdefault(pedal, {}).setdefault(piece, 0.0)
            down[pedal][piece] += off - on
    duration = dict(zip(pieces["piece_id"].tolist(), pieces["file_duration"].tolist(), strict=True))
    parts = []
    for pedal in ("sustain", "sostenuto", "soft"):
        share = [down.get(pedal, {}).get(piece, 0.0) / max(duration[piece], 1e-9) for piece in sorted(ids)]
        used = sum(1 for s in share if s > 0)
        parts.append(f"{pedal} down {100 * float(np.mean(share)):.1f}% of the time ({used} pieces use it)")
    return "Pedals, averaged over pieces: " + "; ".join(parts) + "."


def training_section(inputs: Inputs, out: Path) -> list[str]:
    """Loss curves against steps and tokens seen, model size, tokens seen and the device."""
    summary = read_json(inputs.train / "metrics.json")
    curves = {}
    for name, label in (("train/loss", "train loss"), ("val/nll", "validation NLL")):
        path = inputs.train / "plots" / "metrics" / f"{name}.tsv"
        if path.is_file():
            data = np.loadtxt(path, delimiter="\t", skiprows=1, ndmin=2)
            curves[label] = (data[:, 0], data[:, 1])
    per_step = summary["tokens_seen"] / max(summary["step"], 1)
    fig_steps = figures.curves(out / "loss_by_step.png", curves, "Loss (nats per token)", "step", "nats per token")
    by_tokens = {label: (x * per_step / 1e6, y) for label, (x, y) in curves.items()}
    fig_tokens = figures.curves(out / "loss_by_tokens.png", by_tokens, "Loss against tokens seen", "million tokens",
                                "nats per token")  # fmt: skip
    params_path = inputs.train / "params.yaml"
    trained = (yaml.safe_load(params_path.read_text()) or {}) if params_path.is_file() else {}
    side = trained.get("model", {}).get("side_size", "?")
    state = "?" if side == "?" else "on" if side else "off"
    header = ["parameters", "steps", "tokens seen", "final train loss", "final validation NLL", "piano state input",
              "precision", "device"]  # fmt: skip
    row = [f"{summary['num_params']:,}", f"{summary['step']:,}", f"{summary['tokens_seen']:,}",
           _metric(summary, "train", "loss"), _metric(summary, "val", "nll"), state,
           trained.get("precision", "float32"), trained.get("device", "?")]  # fmt: skip
    return [
        "## Training",
        "",
        *table(header, [row]),
        "",
        "Pieces lie end to end in each training row, but no token attends to an earlier piece, so the model learns to "
        "begin a piece from nothing, as it is evaluated and sampled. With the piano state input, the model also "
        "reads after each token which keys sound and for how long, and how far into its piece it is, with the piece's "
        "register and number of notes so far (pipeline/music/piano_state.py); with the texture input, the texture of "
        "the ten seconds of its piece it is in (pipeline/music/texture.py), which a sample draws from a train piece.",
        "",
        f"![loss by step](figures/{fig_steps})",
        f"![loss by tokens](figures/{fig_tokens})",
        "",
        "The validation NLL here is the train stage's running estimate over a few segments; the evaluation below "
        "scores every validation token. Wall time, tokens/s and hardware are in the last section, with the other "
        "figures that change from run to run.",
        "",
    ]


def data_checksum(inputs: Inputs, pieces: dict) -> str:
    """sha256 over the metadata-named MIDI files the report describes, in piece order (name, then bytes)."""
    digest = hashlib.sha256()
    for name in pieces["midi_filename"]:
        path = inputs.raw / str(name)
        if not path.is_file():
            raise PipelineError(f"{path}: a validated piece's MIDI file is missing (rerun the fetch stage)")
        digest.update(str(name).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def versions() -> str:
    """The versions of the libraries the pipeline's numbers depend on."""
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def evaluation_section(inputs: Inputs, out: Path, plots: Path) -> list[str]:
    """The NLL table with baselines, per composer, beside the published figures and their sources."""
    scored = read_json(inputs.metrics / "eval.json")
    order = load_section("evaluate", inputs.params).get("ngram_order", "?")
    lines = ["## Evaluation", ""]
    for split, m in scored.items():
        b = m["baselines"]
        given = ", no composer given" if "nll_labelled" in m else ""  # comparable with the published figures
        rows = [
            [
                f"Transformer-XL (this model{given})",
                f"**{m['nll']:.3f}**",
                f"{m['bits_per_token']:.3f}",
                f"{m['accuracy']:.3f}",
            ],
            [f"{order}-gram Kneser–Ney", f"{b['kneser_ney']:.3f}", f"{b['kneser_ney'] / np.log(2):.3f}", ""],
            ["unigram", f"{b['unigram']:.3f}", f"{b['unigram'] / np.log(2):.3f}", ""],
            ["uniform", f"{b['uniform']:.3f}", f"{b['uniform'] / np.log(2):.3f}", ""],
        ]
        start = m.get("piece_start_nll")
        opening = f" Each piece's first 64 tokens: {start:.3f} nats per token." if start is not None else ""
        lines += [
            f"**{split}**: {m['tokens']:,} tokens, {m['seconds'] / 3600:.1f} hours, {m['nats_per_second']:.1f} nats "
            f"per second of music.{opening}",
            "",
            *table(["model", "nats per token", "bits per token", "accuracy"], rows),
            "",
        ]
        composers = sorted(((c, v) for c, v in m["by_composer"].items() if np.isfinite(v)), key=lambda kv: kv[1])
        if not composers:
            continue
        name = figures.bars(out / f"nll_by_composer_{split}.png", [c for c, _ in composers],
                            [v for _, v in composers], f"NLL per composer ({split})", "nats per token",
                            reference=m["nll"], reference_label="all pieces")  # fmt: skip
        plot_data = [{"composer": c, "nll": v} for c, v in composers]
        atomic_write_text(plots / f"nll_by_composer_{split}.json", json.dumps(plot_data, indent=1) + "\n")
        lines += [f"![NLL per composer, {split}](figures/{name})", ""]
    lines += [
        "Published figures (nats per token) on the same encoding family. They come from other data (another MAESTRO "
        "version or split), other evaluation windows and far larger models and training budgets, so they place this "
        "model, they do not rank it:",
        "",
        *table(["model", "NLL", "data", "source"], [list(row) for row in LITERATURE], "lrll"),
        "",
    ]
    return lines


def reproducibility_section(inputs: Inputs, pieces: dict, source: str) -> list[str]:
    """Params, the data and its checksum, and library versions: what the same report needs again."""
    stages = [line for line in inputs.params.read_text().splitlines() if not line.lstrip().startswith("#")]
    return [
        "## Reproducibility",
        "",
        f"- Data: `{source}`; {len(pieces['piece_id'])} validated pieces, whose MIDI files hash to "
        f"sha256 `{data_checksum(inputs, pieces)}` (file names and bytes, in piece order).",
        f"- Libraries: {versions()}.",
        "- Rebuild: `dvc exp run` with the params below (or `dvc repro` when `params.yaml` holds them).",
        "",
        "<details><summary>params.yaml</summary>",
        "",
        "```yaml",
        *stages,
        "```",
        "",
        "</details>",
        "",
    ]


def measured_section(inputs: Inputs) -> list[str]:
    """The one place for what differs from run to run: the commit and the machine."""
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    # What a `dvc exp run -S` itself changes (params, lock, reports) is not a change to the code that ran.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!params.yaml",
                            ":!dvc.lock", ":!reports"], capture_output=True, text=True, check=False)  # fmt: skip
    revision = (commit.stdout.strip() or "not a git checkout") + (" with uncommitted changes" if dirty.stdout else "")
    lines = [
        "## Measured on this run",
        "",
        "<!-- Everything above is a function of the pipeline's inputs; what follows changes from run to run. -->",
        "",
        f"- Commit: {revision}.",
        f"- Machine that wrote this report: {platform.machine()}, {platform.system()}, {cpu_model()}.",
    ]
    run = inputs.train / "run.json"
    if run.is_file():
        r = json.loads(run.read_text())
        lines.append(
            f"- Training: {r['steps']:,} steps in {r['wall_seconds'] / 60:.1f} min, {r['tokens_per_second']:,.0f} "
            f"tokens/s, on {r['hardware']} ({r['processes']} process{'es' if r['processes'] > 1 else ''})."
        )
    return [*lines, ""]


def report(inputs: Inputs, out: Path = Path("reports")) -> Path:
    """Write out/README.md, out/figures/ and out/plots/ from the earlier stages' outputs; return the README's path."""
    from pipeline.atomic import atomic_dir

    source = str(load_section("data", inputs.params).get("source"))
    pieces, notes = load_pieces(inputs.validated, inputs.events)
    if len(pieces["piece_id"]) == 0:
        raise PipelineError(f"{inputs.validated / 'pieces.parquet'}: no validated pieces to report on")
    with atomic_dir(out / "figures") as fig_dir, atomic_dir(out / "plots") as plot_dir:
        sections = [
            data_section(inputs, fig_dir, pieces, notes),
            training_section(inputs, fig_dir),
            evaluation_section(inputs, fig_dir, plot_dir),
            samples_section(
                inputs.samples,
                read_json(inputs.samples / "samples.json"),
                fig_dir,
                plot_dir,
                pieces,
                notes,
                inputs.metrics / "samples.json",
                load_section("tokenize", inputs.params).get("stretch") or [1.0],
            ),
            composers_section(
                read_json(inputs.metrics / "eval.json"),
                read_json(inputs.samples / "samples.json"),
                inputs.samples,
                fig_dir,
                pieces,
                notes,
            ),  # fmt: skip
            reproducibility_section(inputs, pieces, source),
        ]
    head = [
        "# maestro-xl report",
        "",
        f"Built by the pipeline's report stage from `{source}` ({len(pieces['piece_id'])} validated pieces); every "
        "figure and number below comes from the earlier stages' outputs. The machine and commit are in the last "
        "section.",
        "",
    ]
    text = "\n".join(head + [line for section in sections for line in section] + measured_section(inputs))
    atomic_write_text(out / "README.md", text.rstrip() + "\n")
    return out / "README.md"


def _metric(summary: dict, group: str, name: str) -> str:
    """A DVCLive summary value to three decimals, or n/a (no validation split: no validation NLL)."""
    value = summary.get(group, {}).get(name)
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
