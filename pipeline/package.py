"""package stage: the trained model as a folder anyone can share, as the ecosystem shares models.

`data/model/` gets the train stage's model.safetensors, config.json and vocab.json (the composer labels), and a
README.md model card: what the model is, how to run it, the data and its license, the params it was trained with
and the figures from eval.json. `maestro-xl generate --model DIR` and `maestro-xl demo --model DIR` need nothing
else. The folder is loaded once before it replaces the old one, so a folder whose weights do not load is never written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.errors import PipelineError
from pipeline.model_folder import CONFIG, VOCAB, WEIGHTS, load_model
from pipeline.music.piano_state import PIANO_STATE_SIZE

LICENSE = "cc-by-nc-sa-4.0"
MAESTRO = "https://magenta.tensorflow.org/datasets/maestro"
MAESTRO_LICENSE = "https://creativecommons.org/licenses/by-nc-sa/4.0/"


def read_json(path: Path) -> dict:
    """A JSON file another stage wrote; a missing or broken one names the stage to run."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise PipelineError(f"{path}: not found (run the stages before package: `dvc repro`)") from exc
    except ValueError as exc:
        raise PipelineError(f"{path}: not JSON ({exc})") from exc


def read_yaml(path: Path) -> dict:
    """The train stage's record of what it trained (reports/train/params.yaml)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise PipelineError(f"{path}: not found (run the train stage first)") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from exc


def package(trained: Path, out: Path, reports: Path, source: str) -> Path:
    """Write `out`: the model folder `trained` and a model card from the reports (train/params.yaml,
    train/run.json, train/metrics.json, metrics/eval.json, metrics/tokens.json), the data named by `source`."""
    trained, reports = Path(trained), Path(reports)
    for name in (WEIGHTS, CONFIG, VOCAB):
        if not (trained / name).is_file():
            raise PipelineError(f"{trained / name}: missing (run the train stage: `dvc repro train`)")
    facts = {
        "trained": read_yaml(reports / "train" / "params.yaml"),
        "run": read_json(reports / "train" / "run.json"),
        "progress": read_json(reports / "train" / "metrics.json"),
        "eval": read_json(reports / "metrics" / "eval.json"),
        "tokens": read_json(reports / "metrics" / "tokens.json"),
        "vocab": read_json(trained / VOCAB),
    }
    with atomic_dir(Path(out)) as tmp:
        for name in (WEIGHTS, CONFIG, VOCAB):
            shutil.copyfile(trained / name, tmp / name)
        model = load_model(tmp, "cpu", PIANO_STATE_SIZE)  # the folder must generate on its own
        parameters = sum(p.numel() for p in model.parameters())
        try:
            card = model_card(facts, parameters, source)
        except (KeyError, TypeError, AttributeError) as exc:
            raise PipelineError(
                f"{reports}: a report lacks what the model card needs ({exc!r}); rerun `dvc repro`"
            ) from exc
        (tmp / "README.md").write_text(card)
    return Path(out)


def model_card(facts: dict, parameters: int, source: str) -> str:
    """The model card: Hugging Face's front matter (license, tags), then use, files, data, training and figures."""
    cfg, composers = facts["trained"]["model"], [c["composer"] for c in facts["vocab"].get("labels", [])]
    state = "the piano's state after each token (which keys sound, for how long, and the piece so far) and "
    if cfg.get("side_size", 0) > PIANO_STATE_SIZE:
        state += "the texture of the piece's current 10 s (a train piece's, drawn, while it samples) and "
    side = state if cfg.get("side_size") else ""
    conditioning = f"a composer label ({', '.join(composers)})" if composers else "no composer label"
    lines = [
        "---",
        f"license: {LICENSE}",
        "library_name: maestro-xl",
        "tags: [music-generation, symbolic-music, midi, piano, transformer-xl]",
        "---",
        "",
        "# maestro-xl: a Transformer-XL that composes piano performances",
        "",
        f"A Transformer-XL of {cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['n_head']} heads, "
        f"{parameters / 1e6:.1f} M parameters, trained on MAESTRO v3's piano performances as Music Transformer's "
        f"performance events ({facts['vocab']['vocab_size']} tokens: note-on and note-off for 128 pitches, 100 time "
        "shifts of 10 ms, 32 velocity bins, piece start and end). Besides the tokens it reads "
        f"{side}{conditioning}.",
        "",
        "## Use",
        "",
        "```bash",
        f"maestro-xl generate --model THIS_FOLDER{f' --composer {composers[0]!r}' if composers else ''} --seconds 30",
        "maestro-xl demo --model THIS_FOLDER    # a page on http://127.0.0.1 to upload a primer and listen",
        "```",
        "",
        "| file | what |",
        "|---|---|",
        f"| `{WEIGHTS}` | the weights, in safetensors: loading them runs no code |",
        f"| `{CONFIG}` | the Transformer-XL's shape |",
        f"| `{VOCAB}` | the tokens and the composer labels |",
        "",
        *_data(facts, source),
        *_training(facts),
        *_figures(facts["eval"]),
        "## License",
        "",
        f"The weights are derived from the [MAESTRO dataset]({MAESTRO}) (Hawthorne et al., *Enabling Factorized Piano "
        "Music Modeling and Generation with the MAESTRO Dataset*, ICLR 2019), which is licensed under "
        f"[Creative Commons Attribution-NonCommercial-ShareAlike 4.0]({MAESTRO_LICENSE}) (CC BY-NC-SA 4.0). They are "
        "shared under the same license: credit MAESTRO, use them non-commercially, and share what you derive from "
        "them alike. The maestro-xl code is MIT-licensed.",
        "",
    ]
    return "\n".join(lines)


def _data(facts: dict, source: str) -> list[str]:
    splits = facts["tokens"]["splits"]
    rows = [f"| {name} | {s['pieces']:,} | {s['copies']:,} | {s['tokens']:,} |" for name, s in splits.items()]
    return [
        "## Data",
        "",
        f"MAESTRO v3 (`{source}`), split as MAESTRO splits it; the train split in time-stretched copies.",
        "",
        "| split | pieces | copies | tokens |",
        "|---|---:|---:|---:|",
        *rows,
        "",
    ]


def _training(facts: dict) -> list[str]:
    import yaml

    trained, run, progress = facts["trained"], facts["run"], facts["progress"]
    train, steps = trained["train"], progress["step"]
    # run.json times the last invocation: the whole training only when that invocation took every step.
    took = f" in {run['wall_seconds'] / 60:.1f} min" if run.get("steps") == steps else ""
    return [
        "## Training",
        "",
        f"{steps:,} steps ({progress['tokens_seen']:,} tokens) of {train['batch_size']} segments of "
        f"{trained['model']['tgt_len']} tokens (memory {trained['model']['mem_len']}), peak learning rate "
        f"{train['lr']:g}, seed {train['seed']}, on {run['hardware']} ({trained.get('device', '?')}, "
        f"{trained.get('precision', '?')}, {run['processes']} process{'es' if run['processes'] > 1 else ''}){took}.",
        "",
        "```yaml",
        *yaml.safe_dump({"model": trained["model"], "train": train}, sort_keys=False).splitlines(),
        "```",
        "",
    ]


def _figures(evaluation: dict) -> list[str]:
    head = "| split | NLL (nats/token) | bits/token | accuracy | Kneser–Ney n-gram | unigram | tokens |"
    rows = [
        f"| {split} | {m['nll']:.4f} | {m['bits_per_token']:.3f} | {m['accuracy']:.3f} | "
        f"{m['baselines']['kneser_ney']:.4f} | {m['baselines']['unigram']:.4f} | {m['tokens']:,} |"
        for split, m in evaluation.items()
    ]
    lines = ["## Evaluation", "", "Every held-out piece scored from its start (eval.json):", "", head,
             "|---|---:|---:|---:|---:|---:|---:|", *rows, ""]  # fmt: skip
    for split, m in evaluation.items():
        if "label_gain" in m:
            lines.append(
                f"- {split}: giving each piece's composer lowers the NLL by {m['label_gain']:.4f} nats/token "
                f"(to {m['nll_labelled']:.4f}) on each piece's opening, {m['labelled_share']:.0%} of its tokens; the "
                "table's NLL is with no composer given."
            )
        if "identification" in m:
            ident = m["identification"]
            lines.append(
                f"- {split}: from its first {ident['tokens']} tokens the model names a piece's composer first "
                f"{ident['top1']:.1%} of the time and among its three likeliest {ident['top3']:.1%} "
                f"({ident['pieces']} pieces; always guessing the commonest: {ident['majority']:.1%})."
            )
    return [*lines, ""]
