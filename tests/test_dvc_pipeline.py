"""End to end: `dvc repro` and `dvc exp run` in a temporary copy of the project, on a few real files."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import MAESTRO_ASAP, ROOT, note, require, tempo, write_metadata, write_midi

from pipeline.model_folder import read_weights
from pipeline.music.piano_state import PIANO_STATE_SIZE
from pipeline.music.texture import PIECE_TEXTURE_SIZE

pytestmark = pytest.mark.slow


def environment(**extra_env: str) -> dict[str, str]:
    """The environment of a command the tests run: this venv first on PATH, no analytics, a git identity."""
    return {
        **os.environ,
        **extra_env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }


def sh(args: list[str], cwd: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=environment(**extra_env), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository holding a copy of the project's files (as a fresh clone would)."""
    return copy_project(tmp_path / "project")


def copy_project(copy: Path) -> Path:
    """A git repository at COPY holding the project's files, as a fresh clone would."""
    files = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("tests/", "benchmarks/", "reports/")):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    sh(["git", "init", "-q"], copy)
    sh(["git", "add", "-A"], copy)
    sh(["git", "commit", "-qm", "copy"], copy)
    return copy


def set_params(project: Path, section: str, **values: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def few_real_pieces(tmp_path: Path) -> Path:
    """A MAESTRO-shaped folder of links to three real performances (two train, one validation) and their metadata."""
    data = require(MAESTRO_ASAP)
    with (data / "maestro-v3.0.0.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for r in rows if r["split"] == "train"][:2] + [r for r in rows if r["split"] == "validation"][:1]
    folder = tmp_path / "few"
    for row in chosen:
        (folder / row["midi_filename"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / row["midi_filename"]).symlink_to(data / row["midi_filename"])
    write_metadata(folder, chosen)
    return folder


def test_offline_repro_stops_at_the_download_with_advice(project):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/maestro-v3.0.0-midi.zip"
    set_params(project, "data", source=url)
    result = sh(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert f"Could not download {url}" in result.stderr and "dvc exp run -S data.source=" in result.stderr
    assert not (project / "data" / "raw" / "maestro-v3.0.0").exists()


TINY_CPU_LIMITS = dict(n_layer=3, d_model=32, n_head=2, d_inner=64, tgt_len=32, mem_len=32, steps=6, batch_size=2)


def synthetic_pieces(tmp_path: Path) -> Path:
    """A MAESTRO-shaped folder of three pieces made here (two train, one validation): 20 s of seeded random notes
    each, so that the tests which need only a pipeline to run do not need the real data."""
    rng, folder, rows = np.random.default_rng(0), tmp_path / "synthetic", []
    for i, split in enumerate(("train", "train", "validation")):
        onsets = np.cumsum(rng.integers(96, 288, size=100))  # ticks: 960 a second at 120 bpm and 480 per beat
        notes = [m for on in onsets for m in note(int(on), int(on + rng.integers(192, 960)), int(rng.integers(48, 85)),
                                                  int(rng.integers(40, 100)))]  # fmt: skip
        name = f"2018/piece-{i}.midi"
        write_midi(folder / name, [[tempo(0, 500_000)], sorted(notes, key=lambda m: m[0])])
        rows.append({"midi_filename": name, "split": split, "duration": float(onsets[-1] + 960) / 960})
    write_metadata(folder, rows)
    return folder


def tiny_run(project: Path, tmp_path: Path, source: Path | None = None) -> None:
    """params.yaml set for a pipeline of seconds: three pieces (real ones unless SOURCE is given), a model of three
    small layers, six steps."""
    source = source or few_real_pieces(tmp_path)
    set_params(project, "data", source=str(source), sha256="", size="")
    set_params(project, "train", cpu_limits=TINY_CPU_LIMITS, eval_interval=3, eval_segments=2, log_interval=1)
    set_params(project, "evaluate", cpu_limits={"tgt_len": 64, "mem_len": 64})
    set_params(project, "generate", samples=1, seconds=3.0, composers=["other composers", "none"])


def commit(project: Path, message: str) -> None:
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-qm", message], project)


def review(clone: Path, **env: str) -> subprocess.CompletedProcess:
    """.ci/review as the workflow runs it, with the tests' own environment as its venv (`make setup` then finds it up
    to date: a clone's files are newer than the venv, so they are dated back, and the stamp of the torch the venv
    has is there, dated back too)."""
    for name in ("pyproject.toml", "Makefile"):
        os.utime(clone / name, (0, 0))
    torch_stamp = sh(["make", "-s", "-p", "-n", "setup", f"VENV={sys.prefix}"], clone).stdout
    stamp = Path(re.search(r"^TORCH_STAMP := (.+)$", torch_stamp, re.M).group(1))
    stamp.touch()
    os.utime(stamp, (0, 0))
    return sh([str(clone / ".ci" / "review")], clone, VENV=sys.prefix, **env)


def test_a_pipeline_pushed_to_a_remote_is_pulled_up_to_date_into_a_fresh_clone(ran, tmp_path):
    project = ran
    unset = sh(["dvc", "push"], project, check=False)  # none is configured: the user chooses where data goes
    assert unset.returncode != 0 and "dvc remote add -d" in unset.stderr
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "--local", "-d", "store", str(remote)], project)  # .dvc/config.local: not committed
    sh(["dvc", "push"], project)
    # The checkpoint travels through DVC, never git: DVC ignores what it caches.
    assert sh(["git", "ls-files", "data"], project).stdout.split() == ["data/.gitignore", "data/raw/.gitignore"]
    assert "/shared" in (project / "data" / ".gitignore").read_text().split()
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    # The review script pulls from the remote that the workflow's secret names; the pipeline then has nothing to run.
    reviewed = review(clone, DVC_REMOTE_URL=str(remote), REVIEW_BASE="HEAD")
    assert "pulled from review:" in reviewed.stdout and "Running stage" not in reviewed.stdout, reviewed.stdout
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone).stdout
    comment = (clone / "reports" / "compare" / "comment.md").read_text()
    assert comment.count("_No changes._") == 2 and comment.count("_None._") == 2  # the same results on both sides
    assert (clone / "data" / "shared" / "last.pt").is_file() and not (clone / "data" / "checkpoints").exists()
    made = sh([sys.executable, "-m", "pipeline", "generate", "--out", "fresh", "--samples", "1", "--seconds", "2",
               "--composer", "none"], clone)  # fmt: skip
    assert "generate: sample-01" in made.stdout and (clone / "fresh" / "sample-01.mid").is_file()
    assert torch.equal(read_weights(clone / "data" / "model")["word_emb.weight"],
                       read_weights(project / "data" / "model")["word_emb.weight"])  # fmt: skip
    # A longer run trains on from the pulled checkpoint, as it would where it was trained.
    set_params(clone, "train", cpu_limits={**TINY_CPU_LIMITS, "steps": 8})
    resumed = sh(["dvc", "repro", "train"], clone)
    assert "the checkpoint of the finished run, at step 6" in resumed.stdout
    assert "resuming from data/checkpoints/last.pt at step 6" in resumed.stdout
    # Where it was trained, a run further along than the committed one (here one that ran to step 8 outside DVC, as a
    # stopped experiment would leave it) is what the next experiment resumes: DVC restores data/shared, not it.
    further = tmp_path / "further.yaml"
    further.write_text((clone / "params.yaml").read_text())
    sh([sys.executable, "-m", "pipeline", "train", "--params", str(further), "--shared", str(tmp_path / "aside")],
       project)  # fmt: skip
    experiment = sh(["dvc", "exp", "run", "train", "-S", "train.cpu_limits.steps=10"], project)
    assert "resuming from data/checkpoints/last.pt at step 8" in experiment.stdout, experiment.stdout
    # A clone whose remote lacks the files is told what to run.
    empty, lacking = tmp_path / "empty", tmp_path / "lacking"
    empty.mkdir()
    sh(["git", "clone", "-q", str(project), str(lacking)], tmp_path)
    sh(["dvc", "remote", "add", "--local", "-d", "store", str(empty)], lacking)
    failed = sh([sys.executable, "-m", "pipeline", "pull"], lacking, check=False)
    assert failed.returncode == 1 and "run `dvc push -r store` where they were made" in failed.stderr


def test_repro_then_nothing_to_do_then_an_experiment(project, tmp_path):
    tiny_run(project, tmp_path)
    first = sh(["dvc", "repro"], project)
    assert "the CPU profile (train.profile auto) sets n_layer 12 → 3" in first.stdout
    assert "evaluate: the data has no test split" in first.stdout
    pieces = pq.read_table(project / "data" / "events" / "pieces.parquet")
    assert pieces.num_rows == 3
    metrics = json.loads((project / "reports" / "metrics" / "parse.json").read_text())
    assert metrics["parsed"] == 3 and metrics["notes"] == sum(pieces["n_notes"].to_pylist())
    tokens = project / "data" / "tokens"
    assert len(json.loads((tokens / "train" / "index.json").read_text())["piece_id"]) == 2 * 5  # stretched copies
    assert json.loads((tokens / "validation" / "index.json").read_text())["stretch"] == [1.0]
    assert json.loads((tokens / "vocab.json").read_text())["vocab_size"] == 390
    assert "quarantined" in (project / "reports" / "validation.md").read_text()
    trained = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    assert trained["step"] == 6 and trained["tokens_seen"] == 6 * 2 * 32 and trained["val"]["nll"] > 0
    config = json.loads((project / "data" / "model" / "config.json").read_text())
    side = PIANO_STATE_SIZE + PIECE_TEXTURE_SIZE  # the piano state, then the texture track
    assert (config["n_layer"], config["d_model"], config["d_head"], config["side_size"]) == (3, 32, 16, side)
    assert (project / "data" / "checkpoints" / "last.pt").is_file()
    weights = read_weights(project / "data" / "trained")
    scored = json.loads((project / "reports" / "metrics" / "eval.json").read_text())
    # The package stage's folder: the trained weights as they are, and a card with eval.json's figure and the license.
    shared = project / "data" / "model"
    assert sorted(p.name for p in shared.iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.json"]
    assert all(torch.equal(read_weights(shared)[k], w) for k, w in weights.items())
    card = (shared / "README.md").read_text()
    assert f"| validation | {scored['validation']['nll']:.4f} |" in card and "license: cc-by-nc-sa-4.0" in card
    validation_tokens = sum(json.loads((tokens / "validation" / "index.json").read_text())["length"])
    assert list(scored) == ["validation"] and scored["validation"]["tokens"] == validation_tokens - 1
    assert set(scored["validation"]["baselines"]) == {"uniform", "unigram", "kneser_ney"}
    samples = project / "reports" / "samples"
    summary = json.loads((samples / "samples.json").read_text())
    assert [s["name"] for s in summary["samples"]] == ["sample-01", "sample-02"]
    assert [s["composer"] for s in summary["samples"]] == ["other composers", None]  # three pieces: one label
    assert all(s["seconds"] <= 3.0 and (samples / s["midi"]).is_file() and (samples / s["png"]).is_file()
               for s in summary["samples"])  # fmt: skip
    assert "generate: sample-02:" in first.stdout
    assert [s["name"] for s in summary["without_rule"]] == ["sample-01-without-rule", "sample-02-without-rule"]
    assert all((samples / s["midi"]).is_file() and s["png"] is None for s in summary["without_rule"])
    judged = json.loads((project / "reports" / "metrics" / "samples.json").read_text())
    assert judged["samples"] == 2 and judged["without_rule"]["samples"] == 2
    first_sample = (samples / "sample-01.mid").read_bytes()
    report = (project / "reports" / "README.md").read_text()
    for heading in ("## Data", "## Training", "## Evaluation", "## Samples", "## Composers", "## Reproducibility"):
        assert heading in report
    linked = re.findall(r"\]\(((?:figures|samples)/[^)]+)\)", report)
    assert len(linked) > 10 and all((project / "reports" / link).is_file() for link in linked)
    assert f"**{scored['validation']['nll']:.3f}**" in report
    run = json.loads((project / "reports" / "train" / "run.json").read_text())
    assert run["steps"] == 6 and run["device"] == "cpu" and "- Training: 6 steps in " in report
    figures_before = {p.name: p.read_bytes() for p in (project / "reports" / "figures").iterdir()}
    # `dvc exp show` lists the shape that was trained (reports/train/params.yaml) beside the one configured.
    workspace = json.loads(sh(["dvc", "exp", "show", "--json"], project).stdout)[0]
    assert workspace["rev"] == "workspace"
    configured = workspace["data"]["params"]["params.yaml"]["data"]
    as_trained = workspace["data"]["params"]["reports/train/params.yaml"]["data"]
    assert configured["model"]["n_layer"] == 12 and as_trained["model"]["n_layer"] == 3
    assert as_trained["profile"] == "cpu" and as_trained["train"]["steps"] == 6 and as_trained["device"] == "cpu"

    again = sh(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout
    sh(["dvc", "repro", "-f", "-s", "report"], project)  # the same inputs give the same bytes
    assert {p.name: p.read_bytes() for p in (project / "reports" / "figures").iterdir()} == figures_before
    measured = "## Measured on this run"
    assert (project / "reports" / "README.md").read_text().split(measured)[0] == report.split(measured)[0]
    # The checkpoint is a persistent output: a rerun (here forced) of a finished run with the same settings exports
    # its model as it is, without training again.
    forced = sh(["dvc", "repro", "-f", "-s", "train"], project)
    assert "at step 6 (a finished run of this code: its model is exported as it is" in forced.stdout
    assert json.loads((project / "reports" / "train" / "metrics.json").read_text()) == trained
    assert json.loads((project / "reports" / "train" / "run.json").read_text()) == run  # the training's, not 0 steps
    again_weights = read_weights(project / "data" / "trained")
    assert all(torch.equal(weights[k], again_weights[k]) for k in weights)

    commit(project, "pipeline run")
    sh(["dvc", "exp", "run", "-S", "parse.workers=1", "-S", "model.n_layer=1"], project)
    experiments = json.loads(sh(["dvc", "exp", "show", "--json"], project).stdout)
    text = json.dumps(experiments)
    assert '"workers": 1' in text and '"parsed": 3' in text and '"n_layer": 1' in text
    rescored = json.loads((project / "reports" / "metrics" / "eval.json").read_text())
    assert rescored["validation"]["nll"] != scored["validation"]["nll"] and '"kneser_ney"' in text
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert "validation.nll" in diff["reports/metrics/eval.json"]
    smaller = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    assert smaller["num_params"] < trained["num_params"] and f'"num_params": {smaller["num_params"]}' in text
    assert json.loads((project / "data" / "model" / "config.json").read_text())["n_layer"] == 1
    section = sh([sys.executable, "-m", "pipeline", "compare", "HEAD"], project).stdout
    assert re.search(r"validation\.nll\s*\|", section) and re.search(r"model\.n_layer\s*\|\s*12\s*\|\s*1\s*\|", section)
    assert "`nll_by_composer_validation.png`" in section and "`composers.png`" not in section  # the data is the same
    assert (project / "reports" / "compare").is_dir()  # no GitHub origin: the old figures are written out
    assert (samples / "sample-01.mid").read_bytes() != first_sample  # another model, other music
    # One process or several, the tables are the same.
    assert pq.read_table(project / "data" / "events" / "pieces.parquet").equals(pieces)


def experiments(project: Path, runs: dict[str, list[str]]) -> dict[str, tuple[Path, subprocess.Popen]]:
    """Start `dvc exp run -S ...` for each of RUNS in a copy of PROJECT of its own, all at once (each starts from the
    committed params, not from the last one's): each copy and its process, for `finish`."""
    started = {}
    for name, settings in runs.items():
        copy = Path(shutil.copytree(project, project.parent / name, symlinks=True))
        args = ["dvc", "exp", "run", *[arg for s in settings for arg in ("-S", s)]]
        started[name] = copy, subprocess.Popen(args, cwd=copy, env=environment(), stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    return started


def finish(started: dict) -> dict[str, tuple[Path, str]]:
    """Wait for the experiments that `experiments` started; each must succeed."""
    ended = {}
    for name, (copy, process) in started.items():
        output = process.communicate(timeout=900)[0]
        assert process.returncode == 0, f"{name}:\n{output}"
        ended[name] = copy, output
    return ended


def test_every_experiment_the_readme_names_runs_to_the_end_and_training_follows_its_code(ran):
    project = ran
    piece = json.loads((project / "data" / "tokens" / "validation" / "index.json").read_text())["piece_id"][0]
    # The settings the docs name, two experiments' worth: two processes beside the project's own runs on two cores
    # take half the time that five did, and each setting is still checked in the experiment that carries it.
    runs = {"unlabelled": ["model.composer_labels=false", "model.n_layer=2", "train.profile=cpu"],
            "plain": ["model.state_input=false", f"generate.primers=[{piece}]"]}  # fmt: skip
    started = experiments(project, runs)
    # Meanwhile, in the project itself: a change to the model's code retrains from scratch, the old run kept; one to
    # the report touches no training.
    with (project / "model" / "transformer_xl.py").open("a") as f:
        f.write("# a change to the model's code\n")
    retrained = sh(["dvc", "repro"], project)
    assert "finished under other code (model/transformer_xl.py); kept as last.prev.pt, training afresh" in \
        retrained.stdout, retrained.stdout  # fmt: skip
    assert (project / "data" / "checkpoints" / "last.prev.pt").is_file()
    code = json.loads((project / "reports" / "train" / "run.json").read_text())["code"]
    assert len(code) == 1 and code[0]["from_step"] == 0 and code[0]["to_step"] == 6
    with (project / "pipeline" / "report" / "stage.py").open("a") as f:
        f.write("# a change to the report's code\n")
    reported = sh(["dvc", "repro"], project)
    assert "Running stage 'report'" in reported.stdout and "Running stage 'train'" not in reported.stdout

    ended = finish(started)
    samples, config = Path("reports") / "samples" / "samples.json", Path("data") / "model" / "config.json"

    def read(name: str, path: Path) -> dict:
        return json.loads((ended[name][0] / path).read_text())

    assert "the model was trained without composer labels (model.composer_labels), so the samples have no " \
           "composer: other composers, none left aside" in ended["unlabelled"][1]  # fmt: skip
    assert [s["composer"] for s in read("unlabelled", samples)["samples"]] == [None]  # one group, not two
    scored = read("unlabelled", Path("reports") / "metrics" / "eval.json")["validation"]
    assert "nll_labelled" not in scored and read("unlabelled", config)["n_labels"] == 0
    assert read("plain", config)["side_size"] == 0 and read("unlabelled", config)["n_layer"] == 2
    assert read("unlabelled", config)["side_size"] > 0 and read("plain", config)["n_layer"] != 2
    assert "the CPU profile (train.profile cpu) sets" in ended["unlabelled"][1]
    assert {s["primer"]["source"] for s in read("plain", samples)["samples"]} == {f"validation piece {piece} (Test)"}
