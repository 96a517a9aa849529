"""params.yaml reading, with and without PyYAML, and a train path that needs nothing beyond torch and numpy."""

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
from pipeline.params import load_section, read_plain_yaml, typed
from pipeline.train import TrainParams

TRICKY = """
top:                       # a comment
  url: http://host/a#b     # '#' inside a word is not a comment
  empty: ''
  quoted: "x # y"
  title: Chopin's etude    # an apostrophe inside a word opens no quote
  flow: [0.95, 1.0, 1.05]
  words: [cuda, cpu]
  none: {}
  mapping: {n_layer: 4, d_model: 128}
  flag: true
  switches: [yes, off, TRUE]
  small: 0.00025
  half: .5
  big: 8_388_608
  negative: -1
  nothing:
  nested:
    deeper:
      value: 3
    block:
    - 0.95
    - 1.05
    indented:
      - a
      - b
  after: back
  folded:
    https://storage.example.org/a/very/long/path/that/was/folded/onto/the/next/line.zip
  continued: first half
    second half
second:
  key: word
"""


def test_the_plain_reader_agrees_with_pyyaml():
    assert read_plain_yaml(TRICKY) == yaml.safe_load(TRICKY)
    project = (ROOT / "params.yaml").read_text()
    assert read_plain_yaml(project) == yaml.safe_load(project)
    with pytest.raises(PipelineError, match=r"params:3: expected 'key: value', found 'just words'"):
        read_plain_yaml("a:\n  b: 1\njust words\n")
    with pytest.raises(PipelineError, match=r"params:2: a list item outside a list"):
        read_plain_yaml("a: 1\n- x\n")


def test_params_rewritten_by_dvc_exp_run_read_the_same_without_pyyaml(tmp_path):
    apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(path, ["train.lr=1e-5", "model.n_layer=2", "~train.cpu_limits", "tokenize.stretch=[1.0,1.1]"])
    text = path.read_text()
    plain, pyyaml = read_plain_yaml(text), yaml.safe_load(text)
    assert plain["data"] == pyyaml["data"] and plain["tokenize"]["stretch"] == [1.0, 1.1]
    # PyYAML reads 1e-05 as a string (YAML 1.1); typed() gives both readers' values the dataclass's types.
    assert typed(TrainParams, pyyaml["train"], "train") == typed(TrainParams, plain["train"], "train")
    assert typed(TrainParams, pyyaml["train"], "train")["lr"] == 1e-5 and "cpu_limits" not in plain["train"]
    assert plain["model"] == pyyaml["model"] and plain["model"]["n_layer"] == 2


def test_typed_converts_and_refuses():
    assert typed(TrainParams, {"lr": "1e-05", "steps": 10.0, "compile": "yes", "cpu_limits": None}, "train") == {
        "lr": 1e-5,
        "steps": 10,
        "compile": True,
        "cpu_limits": {},
    }
    with pytest.raises(PipelineError, match=r"train.steps: 2.5 is not a valid int"):
        typed(TrainParams, {"steps": 2.5}, "train")
    with pytest.raises(PipelineError, match=r"unknown train params: stepz"):
        typed(TrainParams, {"stepz": 1}, "train")


def test_load_section_without_pyyaml(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text(TRICKY)
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    assert load_section("top", tmp_path / "p.yaml")["nested"]["deeper"] == {"value": 3}
    with pytest.raises(PipelineError, match="no 'third:' section"):
        load_section("third", tmp_path / "p.yaml")


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


def test_training_evaluation_and_generation_need_only_torch_numpy_and_typer(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    stages = {"model": TINY_MODEL, "train": {**params(steps=3).__dict__}, "evaluate": {"device": "cpu"}}
    stages["generate"] = {"device": "cpu", "samples": 1, "seconds": 2.0}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(stages))
    blocked = {"yaml", "polars", "pyarrow", "symusic", "mido", "dvc", "dvclive", "great_expectations", "pandas"}
    blocked |= {"scipy", "matplotlib", "pretty_midi", "note_seq", "nltk"}
    common = ["--params", str(tmp_path / "p.yaml"), "--tokens", str(tokens)]
    train_args = ["train", *common]
    for option, name in (("--checkpoints", "ckpt"), ("--out", "model"), ("--live", "live")):
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
    assert (tmp_path / "model" / "model.pt").is_file() and not (tmp_path / "live" / "metrics.json").exists()
    assert json.loads((tmp_path / "live" / "run.json").read_text())["steps"] == 3  # measured without DVCLive too
    assert "validation" in json.loads((tmp_path / "e.json").read_text())
    assert json.loads((tmp_path / "samples" / "samples.json").read_text())["samples"][0]["seconds"] <= 2.0


@pytest.mark.parametrize("section", ["train", "evaluate", "generate"])
def test_a_stage_run_without_params_yaml_gets_params_yamls_values(section):
    """The dataclass defaults (what a stage called from Python gets) are params.yaml's values."""
    from pipeline.evaluate import EvaluateParams
    from pipeline.generate import GenerateParams

    cls = {"train": TrainParams, "evaluate": EvaluateParams, "generate": GenerateParams}[section]
    values = typed(cls, yaml.safe_load((ROOT / "params.yaml").read_text())[section], section)
    defaults = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(cls)
        if f.name != "cpu_limits"
    }
    assert {k: v for k, v in values.items() if k != "cpu_limits"} == defaults
