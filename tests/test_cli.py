"""The command line: every `generate` option reaches the stage over params.yaml, the help's defaults are the stage's,
and a bad value is a one-line error; the app lists the stages in order and importing it runs no stage's code."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.params import GenerateParams

# Every value differs from GenerateParams()'s, so a value that reaches the stage shows where it came from.
FILE = {
    "samples": 3,
    "seconds": 5.0,
    "wav_samples": 1,
    "temperature": 0.8,
    "top_k": 10,
    "top_p": 0.9,
    "seed": 7,
    "primers": [11, 12],
    "primer_seconds": 4.0,
    "keep_primer": False,
    "stop_at_piece_end": True,
    "max_note_s": 5.0,
    "mem_len": 100,
    "precision": "bfloat16",
    "device": "cuda",
}
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # help lines unwrapped, one option a line


def write_params(folder: Path, section: dict) -> Path:
    """A params file with `section` as its generate: section."""
    path = folder / "p.yaml"
    path.write_text(yaml.safe_dump({"generate": section}))
    return path


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The arguments the generate stage is called with; the stage itself does nothing."""
    import pipeline.generate

    recorded: list[dict] = []

    def fake(model_dir: Path, out: Path, p: GenerateParams, primer_file: Path | None, tokens: Path) -> dict:
        recorded.append({"model": model_dir, "out": out, "params": p, "primer": primer_file, "tokens": tokens})
        return {"samples": []}

    monkeypatch.setattr(pipeline.generate, "generate", fake)
    return recorded


def run(*args: str) -> object:
    """`maestro-xl ARGS`, its output captured."""
    return CliRunner().invoke(app, list(args), env=WIDE)


def test_the_file_gives_every_value_no_option_sets(tmp_path, calls):
    path = write_params(tmp_path, FILE)
    result = run("generate", "--params", str(path), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["params"] == GenerateParams(**FILE)
    assert (calls[0]["out"], calls[0]["model"], calls[0]["primer"]) == (tmp_path / "out", tmp_path / "m", None)


def test_every_option_overrides_the_file(tmp_path, calls):
    path = write_params(tmp_path, FILE)
    options = {
        "--samples": "2",
        "--seconds": "12",
        "--wav-samples": "0",
        "--temperature": "1.1",
        "--top-k": "5",
        "--top-p": "0.5",
        "--seed": "9",
        "--primer-seconds": "3",
        "--max-note-s": "0",
        "--mem-len": "512",
        "--precision": "float32",
        "--device": "cpu",
    }
    args = [item for pair in options.items() for item in pair]
    result = run("generate", "--params", str(path), *args, "--keep-primer", "--play-to-length")
    assert result.exit_code == 0, result.output
    assert calls[0]["params"] == GenerateParams(
        samples=2,
        seconds=12.0,
        wav_samples=0,
        temperature=1.1,
        top_k=5,
        top_p=0.5,
        seed=9,
        primers=[11, 12],  # no option for it: the file's
        primer_seconds=3.0,
        keep_primer=True,
        stop_at_piece_end=False,
        max_note_s=0.0,
        mem_len=512,
        precision="float32",
        device="cpu",
    )


@pytest.mark.parametrize(
    ("in_file", "options", "expected"),
    [
        ({"keep_primer": True}, ["--drop-primer"], {"keep_primer": False}),
        ({"keep_primer": True}, ["--no-primer"], {"keep_primer": False}),  # the former name, hidden
        ({"keep_primer": False}, ["--keep-primer"], {"keep_primer": True}),
        ({"keep_primer": False}, [], {"keep_primer": False}),
        ({"stop_at_piece_end": False}, ["--stop-at-piece-end"], {"stop_at_piece_end": True}),
        ({"stop_at_piece_end": True}, ["--play-to-length"], {"stop_at_piece_end": False}),
        ({"stop_at_piece_end": True}, [], {"stop_at_piece_end": True}),
        ({"mem_len": 100}, ["--mem-len", "512"], {"mem_len": 512}),
        ({"device": "cuda"}, ["--device", "cpu"], {"device": "cpu"}),
        ({"precision": "bfloat16"}, ["--precision", "float32"], {"precision": "float32"}),
        ({"composers": ["Bach", "none"]}, ["--composer", "chopin"], {"composers": ["chopin"]}),
        ({"guidance": 1.0}, ["--guidance", "2.5"], {"guidance": 2.5}),
        ({"seconds": 5.0}, ["--top-k", "3"], {"seconds": 5.0, "top_k": 3}),
    ],
)
def test_each_option_sets_its_own_field_and_nothing_else(tmp_path, calls, in_file, options, expected):
    result = run("generate", "--params", str(write_params(tmp_path, in_file)), *options)
    assert result.exit_code == 0, result.output
    assert calls[0]["params"] == GenerateParams(**{**in_file, **expected})


def test_keep_primer_and_the_former_no_primer_together_are_refused(tmp_path, calls):
    result = run("generate", "--params", str(write_params(tmp_path, {})), "--keep-primer", "--no-primer")
    assert result.exit_code == 1 and not calls
    assert result.stderr.strip() == "error: --keep-primer and --no-primer contradict each other"


def bracketed(help_text: str, option: str) -> str:
    """The bracketed default at the end of `option`'s line in the help."""
    line = next(line for line in help_text.splitlines() if re.search(rf"(^|\s){re.escape(option)}\s", line))
    match = re.search(r"\[([^\[\]]*)\][\s│]*$", line)
    assert match, line
    return match.group(1)


def test_the_helps_defaults_are_the_stages():
    result = run("generate", "--help")
    assert result.exit_code == 0, result.output
    text, defaults = result.stdout, GenerateParams()
    for option, field in (
        ("--seconds", "seconds"),
        ("--top-p", "top_p"),
        ("--max-note-s", "max_note_s"),
        ("--primer-seconds", "primer_seconds"),
        ("--temperature", "temperature"),
    ):
        assert float(bracketed(text, option)) == getattr(defaults, field), option
    for option, field in (("--samples", "samples"), ("--top-k", "top_k"), ("--seed", "seed")):
        assert int(bracketed(text, option)) == getattr(defaults, field), option
    assert int(bracketed(text, "--wav-samples")) == defaults.wav_samples
    assert bracketed(text, "--device") == defaults.device and bracketed(text, "--precision") == defaults.precision
    assert bracketed(text, "--keep-primer") == ("--keep-primer" if defaults.keep_primer else "--drop-primer")
    flag = "--stop-at-piece-end" if defaults.stop_at_piece_end else "--play-to-length"
    assert bracketed(text, "--stop-at-piece-end") == flag
    assert "--drop-primer" in text and "--no-primer" not in text
    for name in ("--mem-len", "--wav-samples", "--device", "--precision", "--play-to-length"):
        assert name in text


def test_every_field_but_primers_has_an_option_and_composers_one_for_one_composer():
    result = run("generate", "--help")
    options = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    fields = {f.name for f in dataclasses.fields(GenerateParams)} - {"primers", "composers"}
    assert {"--" + name.replace("_", "-") for name in fields} | {"--composer"} <= options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--precision", "fp16"], ["precision must be", "not 'fp16'"]),
        (["--device", "tpu"], ["device must be", "not 'tpu'"]),
        (["--mem-len", "-1"], ["mem_len must be", "not -1"]),
        (["--wav-samples", "-1"], ["wav_samples must be", "not -1"]),
    ],
)
def test_a_bad_value_is_a_one_line_error_from_the_stage(tmp_path, options, message):
    # The stage checks its settings before it looks for the model, so the missing model is never reached.
    args = ["--params", str(write_params(tmp_path, {})), "--model", str(tmp_path / "no-model")]
    result = run("generate", *args, "--out", str(tmp_path / "out"), *options)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and all(part in result.stderr for part in message), result.stderr
    assert not (tmp_path / "out").exists()


def test_the_help_says_where_the_composers_come_from_and_what_samples_counts():
    text = run("generate", "--help").stdout
    assert bracketed(text, "--composer") == "none" and GenerateParams().composers == []
    composer = next(line for line in text.splitlines() if "--composer" in line)
    assert "generate.composers" in composer and "per primer and composer" in text
    assert "generate: section of --params" in " ".join(text.split())


def test_outside_a_project_folder_the_samples_have_no_composer_and_samples_means_samples(tmp_path, calls, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the built-in defaults, as the help gives them
    assert run("generate", "--samples", "2").exit_code == 0
    assert calls[0]["params"].composers == [] and calls[0]["params"].samples == 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"generate": {"composers": ["Bach", "none"]}}))
    assert run("generate", "--samples", "2").exit_code == 0  # a project folder: its generate.composers
    assert calls[1]["params"].composers == ["Bach", "none"]


def test_the_app_lists_every_command_in_the_pipelines_order():
    result = run("--help")
    assert result.exit_code == 0, result.output
    assert re.findall(r"^│ ([a-z]+) ", result.stdout, flags=re.MULTILINE) == [
        *("fetch", "parse", "validate", "tokenize", "train", "evaluate", "package", "generate"),  # dvc.yaml's stages
        *("demo", "report", "compare", "pull"),
    ]


def test_importing_the_cli_imports_no_stage_and_no_heavy_library():
    # Each command imports its stage's code inside its body: `maestro-xl --help` starts at once, and a stage loads
    # only the libraries its own code needs.
    code = "import json, sys, pipeline.cli; print(json.dumps(sorted(sys.modules)))"
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = set(json.loads(found.stdout))
    heavy = {"torch", "numpy", "polars", "pyarrow", "pandas", "symusic", "mido", "dvc", "dvclive", "matplotlib"}
    heavy |= {"great_expectations", "gradio", "model"}
    assert not {m.split(".")[0] for m in modules} & heavy
    ours = {m for m in modules if m.split(".")[0] == "pipeline" and not m.startswith("pipeline.cli")}
    assert ours == {"pipeline", "pipeline.errors", "pipeline.params"}, "a stage's code is imported with the CLI"


def test_each_samples_line_names_its_flags_and_its_rule_releases(tmp_path, monkeypatch):
    import pipeline.generate

    flagged = {"name": "sample-01", "composer": "Bach", "seconds": 2.0, "notes": 7, "tokens": 40, "seed": 3,
               "ended_by": "length", "rule_releases": 2, "flags": ["one_pitch_repeated", "note_held_over_10s"],
               "midi": "sample-01.mid", "png": "sample-01.png", "wav": None}  # fmt: skip
    plain = {**flagged, "name": "sample-02", "composer": None, "seed": 4, "rule_releases": 0, "flags": [],
             "midi": "sample-02.mid", "png": "sample-02.png", "wav": "sample-02.wav"}  # fmt: skip
    monkeypatch.setattr(pipeline.generate, "generate", lambda *args: {"samples": [flagged, plain]})
    result = run("generate", "--params", str(write_params(tmp_path, {})), "--out", "out")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "generate: sample-01 as Bach: 2.0 s, 7 notes, 40 tokens, seed 3, ended by length, 2 released by the rule "
        "[one_pitch_repeated, note_held_over_10s] -> out/ (sample-01.mid, sample-01.png)",
        "generate: sample-02: 2.0 s, 7 notes, 40 tokens, seed 4, ended by length "
        "-> out/ (sample-02.mid, sample-02.png, sample-02.wav)",
    ]
