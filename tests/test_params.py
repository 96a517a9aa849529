"""params.yaml reading, with and without PyYAML, and a train path that needs nothing beyond torch and numpy."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from test_train import TINY_MODEL, params, repeating_corpus

from pipeline.errors import PipelineError
from pipeline.params import load_section, read_plain_yaml

TRICKY = """
top:                       # a comment
  url: http://host/a#b     # '#' inside a word is not a comment
  empty: ''
  quoted: "x # y"
  flow: [0.95, 1.0, 1.05]
  none: {}
  flag: true
  small: 0.00025
  negative: -1
  nested:
    deeper:
      value: 3
  after: back
second:
  key: word
"""


def test_the_plain_reader_agrees_with_pyyaml():
    assert read_plain_yaml(TRICKY) == yaml.safe_load(TRICKY)
    project = (ROOT / "params.yaml").read_text()
    assert read_plain_yaml(project) == yaml.safe_load(project)
    with pytest.raises(PipelineError, match=r"params:2: expected 'key: value'"):
        read_plain_yaml("a:\n  - item\n")


def test_load_section_without_pyyaml(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text(TRICKY)
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    assert load_section("top", tmp_path / "p.yaml")["nested"] == {"deeper": {"value": 3}}
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
        raise ImportError(f"{{spec.name}} is blocked: the train path must not need it")
sys.meta_path.insert(0, Block())
sys.argv = ["maestro-xl", *{args!r}]
from pipeline.cli import app
app()
"""


def test_training_needs_only_torch_numpy_and_typer(tmp_path):
    tokens = repeating_corpus(tmp_path / "tokens")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL, "train": {**params(steps=3).__dict__}}))
    blocked = {"yaml", "polars", "pyarrow", "symusic", "mido", "dvc", "dvclive", "great_expectations", "pandas"}
    args = ["train", "--params", str(tmp_path / "p.yaml"), "--tokens", str(tokens)]
    for option, name in (("--checkpoints", "ckpt"), ("--out", "model"), ("--live", "live")):
        args += [option, str(tmp_path / name)]
    script = BLOCKER.format(blocked=sorted(blocked), args=args)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dvclive is not installed; metrics are printed only" in result.stdout
    assert (tmp_path / "model" / "model.pt").is_file() and not (tmp_path / "live").exists()
