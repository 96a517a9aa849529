"""params.yaml reading and typing, its one-line errors, and a train path that needs nothing beyond torch, numpy,
typer and PyYAML."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from test_train import TINY_MODEL, params, repeating_corpus

from pipeline.errors import PipelineError
from pipeline.params import GenerateParams, TrainParams, load_section, typed


def test_load_section_returns_the_section_or_says_it_is_missing(tmp_path):
    (tmp_path / "p.yaml").write_text("top:\n  nested:\n    value: 3\n  flow: [0.95, 1.05]\nsecond: 1\n")
    assert load_section("top", tmp_path / "p.yaml") == {"nested": {"value": 3}, "flow": [0.95, 1.05]}
    with pytest.raises(PipelineError, match="no 'third:' section"):
        load_section("third", tmp_path / "p.yaml")
    with pytest.raises(PipelineError, match="no 'second:' section"):  # a scalar is not a section
        load_section("second", tmp_path / "p.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(PipelineError, match="no 'top:' section"):
        load_section("top", tmp_path / "empty.yaml")
    with pytest.raises(PipelineError, match="params file not found"):
        load_section("top", tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("generate:\n  seconds: 30\n top_k: 2\n", 3),  # a key indented less than its siblings
        ("generate:\n  seconds: 30\n  top_p: [0.9\n  samples: 2\n", 4),  # an unclosed flow list
        ("generate:\n\tseconds: 30\n", 2),  # a tab as indentation
    ],
)
def test_a_malformed_params_file_is_a_one_line_error_naming_file_and_line(tmp_path, text, line):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as caught:
        load_section("generate", path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:") and "not valid YAML" in message
    assert "\n" not in message


def test_a_missing_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text("generate:\n  seconds: 30\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    with pytest.raises(PipelineError, match=r"needs PyYAML \(pip install pyyaml\)") as caught:
        load_section("generate", tmp_path / "p.yaml")
    assert "\n" not in str(caught.value)


def test_params_rewritten_by_dvc_exp_run_read_as_written(tmp_path):
    apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(path, ["train.lr=1e-5", "model.n_layer=2", "~train.cpu_limits", "tokenize.stretch=[1.0,1.1]"])
    assert load_section("tokenize", path)["stretch"] == [1.0, 1.1]
    assert load_section("model", path)["n_layer"] == 2
    train = load_section("train", path)
    # PyYAML reads 1e-05 as a string (YAML 1.1); typed() gives it the dataclass's type.
    assert "cpu_limits" not in train and typed(TrainParams, train, "train")["lr"] == 1e-5


def test_typed_converts_and_refuses():
    assert typed(TrainParams, {"lr": "1e-05", "steps": 10.0, "cpu_limits": None, "cpu_lr": None}, "train") == {
        "lr": 1e-5,
        "steps": 10,
        "cpu_limits": {},
        "cpu_lr": None,
    }
    values = {"keep_primer": "yes", "stop_at_piece_end": "off", "mem_len": None, "seconds": "12"}
    assert typed(GenerateParams, values, "generate") == {
        "keep_primer": True,
        "stop_at_piece_end": False,
        "mem_len": None,
        "seconds": 12.0,
    }
    with pytest.raises(PipelineError, match=r"generate.keep_primer: 'maybe' is not a valid bool"):
        typed(GenerateParams, {"keep_primer": "maybe"}, "generate")
    with pytest.raises(PipelineError, match=r"train.steps: 2.5 is not a valid int"):
        typed(TrainParams, {"steps": 2.5}, "train")
    with pytest.raises(PipelineError, match=r"unknown train params: stepz"):
        typed(TrainParams, {"stepz": 1}, "train")


BLOCKER = """
import importlib.abc, importlib.machinery, sys
class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # A spec is found (torch probes with find_spec), but importing fails as if the package were missing.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ImportError(f"{{spec.name}} is blocked: the train and evaluate paths must not need it")
sys.meta_path.insert(0, Block())
sys.argv = ["maestro-xl", *{args!r}]
from pipeline.cli import app
app()
"""


def test_training_evaluation_and_generation_need_only_torch_numpy_typer_and_pyyaml(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    stages = {"model": {**TINY_MODEL, "composer_labels": True}, "train": {**params(steps=3).__dict__}}
    stages["evaluate"] = {"device": "cpu", "identify_tokens": 8}
    stages["generate"] = {"device": "cpu", "samples": 1, "seconds": 2.0, "composers": ["b", "none"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(stages))
    blocked = {"polars", "pyarrow", "symusic", "mido", "dvc", "dvclive", "great_expectations", "pandas"}
    blocked |= {"scipy", "matplotlib", "pretty_midi", "note_seq", "nltk"}
    common = ["--params", str(tmp_path / "p.yaml"), "--tokens", str(tokens)]
    train_args = ["train", *common]
    for option, name in (("--checkpoints", "ckpt"), ("--shared", "shared"), ("--out", "model"), ("--live", "live")):
        train_args += [option, str(tmp_path / name)]
    evaluate_args = ["evaluate", *common, "--model", str(tmp_path / "model"), "--metrics", str(tmp_path / "e.json")]
    generate_args = ["generate", *common, "--model", str(tmp_path / "model"), "--out", str(tmp_path / "samples")]
    outputs = []
    for args in (train_args, evaluate_args, generate_args):
        # Generation writes MIDI with mido and piano rolls with matplotlib; nothing else beyond torch and numpy.
        script = BLOCKER.format(
            blocked=sorted(blocked - {"mido", "matplotlib"} if args[0] == "generate" else blocked), args=args
        )
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    assert "dvclive is not installed; metrics are printed only" in outputs[0]
    assert (tmp_path / "model" / "model.safetensors").is_file() and not (tmp_path / "live" / "metrics.json").exists()
    assert json.loads((tmp_path / "live" / "run.json").read_text())["steps"] == 3  # measured without DVCLive too
    assert "validation" in json.loads((tmp_path / "e.json").read_text())
    assert json.loads((tmp_path / "samples" / "samples.json").read_text())["samples"][0]["seconds"] <= 2.0


@pytest.mark.parametrize("section", ["train", "evaluate", "generate"])
def test_a_stage_run_without_params_yaml_gets_params_yamls_values(section):
    """The dataclass defaults (what a stage called from Python gets) are params.yaml's values, but for two of generate:
    the pipeline's samples are for four composers and it adds two long samples, while a call that names none gives no
    composer and no long sample."""
    from pipeline.params import EvaluateParams

    cls = {"train": TrainParams, "evaluate": EvaluateParams, "generate": GenerateParams}[section]
    values = typed(cls, yaml.safe_load((ROOT / "params.yaml").read_text())[section], section)
    defaults = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(cls)
        if f.name != "cpu_limits"
    }
    if section == "generate":
        assert values.pop("composers") == ["Chopin", "Beethoven", "Bach", "none"] and defaults.pop("composers") == []
        assert values.pop("long_samples") == 2 and defaults.pop("long_samples") == 0
    assert {k: v for k, v in values.items() if k != "cpu_limits"} == defaults


def test_a_setting_that_is_a_boolean_or_a_word_reads_both():
    from pipeline.params import TrainParams

    for given, expected in ((True, True), ("yes", True), ("off", False), ("auto", "auto"), ("Auto", "Auto")):
        assert typed(TrainParams, {"compile": given}, "train") == {"compile": expected}
