"""The package stage: a model folder that generates alone, anywhere, with a card that carries eval.json's figures;
and the older folders (model.pt) that still load."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from test_generate import params

from model import TransformerXL, TransformerXLConfig
from pipeline.errors import PipelineError
from pipeline.generate import generate
from pipeline.model_folder import export_model, load_model, read_weights
from pipeline.music.performance_encoding import PIECE_END, VOCAB_SIZE
from pipeline.package import package

LABELS = [{"label": 1, "composer": "Chopin"}, {"label": 2, "composer": "Bach"}, {"label": 3, "composer": "others"}]


def tiny_labelled_model() -> TransformerXL:
    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16,
                              mem_len=16, n_labels=len(LABELS))  # fmt: skip
    model = TransformerXL(cfg)
    with torch.no_grad():
        model.out_bias[PIECE_END] = -1e4
        model.label_emb.weight[1:] = torch.randn(len(LABELS), cfg.d_model)  # as if trained: each label tells
    return model


def fake_reports(folder: Path, model: TransformerXL) -> dict:
    """What train and evaluate write, with figures the card must carry over."""
    evaluation = {
        "validation": {
            "nll": 2.71828, "bits_per_token": 3.9217, "accuracy": 0.2871, "tokens": 12345,
            "baselines": {"kneser_ney": 3.8, "unigram": 4.9, "uniform": 5.97},
            "nll_labelled": 2.70656, "label_gain": 0.01172, "labelled_tokens": 2000, "labelled_share": 0.162,
            "identification": {"tokens": 512, "pieces": 9, "top1": 0.4444, "top3": 0.8889, "majority": 0.3333},
        }
    }  # fmt: skip
    tokens = {"splits": {"train": {"pieces": 5, "copies": 25, "tokens": 999}, "validation": {"pieces": 2,
              "copies": 2, "tokens": 77}}}  # fmt: skip
    trained = {"model": asdict(model.cfg), "train": {"steps": 6, "batch_size": 2, "lr": 0.001, "seed": 7},
               "device": "cpu", "precision": "float32"}  # fmt: skip
    run = {"wall_seconds": 90.0, "steps": 6, "hardware": "a test machine", "processes": 1}
    progress = {"step": 6, "tokens_seen": 192, "num_params": 1}
    (folder / "train").mkdir(parents=True)
    (folder / "metrics").mkdir()
    (folder / "train" / "params.yaml").write_text(yaml.safe_dump(trained))
    (folder / "train" / "run.json").write_text(json.dumps(run))
    (folder / "train" / "metrics.json").write_text(json.dumps(progress))
    (folder / "metrics" / "eval.json").write_text(json.dumps(evaluation))
    (folder / "metrics" / "tokens.json").write_text(json.dumps(tokens))
    return evaluation


@pytest.fixture
def packaged(tmp_path: Path) -> tuple[Path, dict, TransformerXL]:
    model = tiny_labelled_model()
    export_model(model, tmp_path / "trained", {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    evaluation = fake_reports(tmp_path / "reports", model)
    return package(tmp_path / "trained", tmp_path / "model", tmp_path / "reports", "a/source"), evaluation, model


def test_the_folder_holds_the_weights_as_trained_and_a_card_with_the_figures(packaged):
    folder, evaluation, model = packaged
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.json"]
    weights = read_weights(folder)
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-nc-sa-4.0" and "piano" in front["tags"]
    v = evaluation["validation"]
    assert f"| validation | {v['nll']:.4f} | {v['bits_per_token']:.3f} | {v['accuracy']:.3f} |" in card
    assert "on each piece's opening, 16% of its tokens" in card
    assert f"{v['label_gain']:.4f} nats/token" in card and f"{v['identification']['top1']:.1%}" in card
    parameters = sum(p.numel() for p in model.parameters())
    assert f"{parameters / 1e6:.1f} M parameters" in card and "Chopin, Bach, others" in card
    assert "CC BY-NC-SA 4.0" in card and "`a/source`" in card
    assert (
        "6 steps (192 tokens) of 2 segments" in card
        and "on a test machine (cpu, float32, 1 process) in 1.5 min" in card
    )
    trained = yaml.safe_load(card.split("```yaml")[1].split("```")[0])
    assert trained["model"]["n_labels"] == len(LABELS) and trained["train"]["seed"] == 7


def test_a_folder_copied_alone_generates_for_a_composer(packaged, tmp_path, monkeypatch):
    folder, _, _ = packaged
    elsewhere = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(folder, elsewhere)
    shutil.rmtree(folder)
    monkeypatch.chdir(tmp_path / "elsewhere")  # no data/tokens here, nor anywhere the command looks
    summary = generate(elsewhere, Path("out"), params(samples=1, composers=["Bach"]), tokens=Path("nowhere"))
    assert summary["samples"][0]["composer"] == "Bach" and (Path("out") / "sample-01.mid").is_file()
    with pytest.raises(PipelineError, match="run the tokenize stage"):  # only a validation primer needs the tokens
        generate(elsewhere, Path("out"), params(samples=1, primers=[3]), tokens=Path("nowhere"))


def test_a_resumed_run_is_not_timed_by_its_last_invocation(tmp_path):
    model = tiny_labelled_model()
    export_model(model, tmp_path / "trained", {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    fake_reports(tmp_path / "reports", model)
    last = {"wall_seconds": 0.0, "steps": 0, "hardware": "a test machine", "processes": 1}  # a finished run re-exported
    (tmp_path / "reports" / "train" / "run.json").write_text(json.dumps(last))
    card = (package(tmp_path / "trained", tmp_path / "model", tmp_path / "reports", "s") / "README.md").read_text()
    assert "6 steps (192 tokens)" in card and "process)." in card and " min" not in card.split("## Training")[1][:400]


def test_an_older_folder_of_model_pt_still_loads_with_a_note(tmp_path, capsys):
    model = tiny_labelled_model()
    (tmp_path / "old").mkdir()
    torch.save(model.state_dict(), tmp_path / "old" / "model.pt")
    (tmp_path / "old" / "config.json").write_text(json.dumps(asdict(model.cfg)))
    loaded = load_model(tmp_path / "old")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    note = capsys.readouterr().out.strip()
    assert note.count("\n") == 0 and "model.pt, the older format" in note
    # Its labels come from the token folder, as they used to.
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "vocab.json").write_text(json.dumps({"vocab_size": VOCAB_SIZE, "labels": LABELS}))
    summary = generate(tmp_path / "old", tmp_path / "out", params(samples=1, composers=["Chopin"]), tokens=tokens)
    assert summary["samples"][0]["composer"] == "Chopin"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """What the package stage reads: a trained model folder in TMP/trained and the reports in TMP/reports."""
    model = tiny_labelled_model()
    export_model(model, tmp_path / "trained", {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    fake_reports(tmp_path / "reports", model)
    return tmp_path


def test_missing_inputs_name_the_stage_and_leave_no_folder(inputs, tmp_path):
    (tmp_path / "reports" / "metrics" / "eval.json").unlink()
    with pytest.raises(PipelineError, match=r"eval.json: not found \(run the stages before package"):
        package(tmp_path / "trained", tmp_path / "model", tmp_path / "reports", "s")
    (tmp_path / "trained" / "vocab.json").unlink()
    with pytest.raises(PipelineError, match=r"vocab.json: missing \(run the train stage"):
        package(tmp_path / "trained", tmp_path / "model", tmp_path / "reports", "s")
    assert not (tmp_path / "model").exists()


def test_a_report_that_lacks_a_figure_is_a_one_line_error(inputs, tmp_path):
    (tmp_path / "reports" / "metrics" / "eval.json").write_text(json.dumps({"validation": {"nll": 2.5}}))
    with pytest.raises(PipelineError, match=r"a report lacks what the model card needs \(KeyError\('bits_per_token'"):
        package(tmp_path / "trained", tmp_path / "model", tmp_path / "reports", "s")
    assert not (tmp_path / "model").exists()


def test_weights_that_do_not_fit_the_config_are_never_packaged(inputs, tmp_path):
    config = json.loads((tmp_path / "trained" / "config.json").read_text())
    (tmp_path / "trained" / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(PipelineError, match="not a model that the train stage wrote"):
        package(tmp_path / "trained", tmp_path / "model", tmp_path / "reports", "s")
    assert not (tmp_path / "model").exists()


def test_a_config_far_larger_than_its_weights_is_refused_without_allocating_it(tmp_path):
    model = tiny_labelled_model()
    export_model(model, tmp_path / "model", {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    huge = {**config, "n_layer": 200, "d_model": 8192, "d_head": 1024, "n_head": 8, "d_inner": 32768}  # ~200 GB
    (tmp_path / "model" / "config.json").write_text(json.dumps(huge))
    # In a process allowed 8 GB of address space, so that a loader that allocates first fails fast, not the machine.
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from pipeline.model_folder import load_model\n"
        "from pipeline.errors import PipelineError\n"
        "try:\n    load_model(sys.argv[1])\nexcept PipelineError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert "the weights do not have the shapes config.json gives" in result.stdout, result.stdout + result.stderr


def test_a_malformed_weights_file_is_a_one_line_error_naming_it_that_allocates_nothing(tmp_path):
    export_model(tiny_labelled_model(), tmp_path / "model", {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    good = (tmp_path / "model" / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", good[:8])
    claim = json.dumps({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}).encode()
    uncovered = "incomplete metadata, file not fully covered"  # bytes claimed that the file does not hold
    files = {
        "truncated": (good[: len(good) // 2], uncovered),
        "cut in its header": (good[: size // 2], "invalid header length"),
        "a header length past the end": (struct.pack("<Q", len(good)) + good[8:], "invalid header length"),
        "a header length of 2**40": (struct.pack("<Q", 2**40) + good[8:], "header too large"),
        "garbage": (bytes(range(256)) * 64, "header too large"),
        "a tensor of 4 TiB": (struct.pack("<Q", len(claim)) + claim + b"\0" * 64, uncovered),
    }
    for name, (data, _) in files.items():
        shutil.copytree(tmp_path / "model", tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(data)
    # In a process allowed 8 GB of address space, so that a loader that allocates what a header claims fails fast.
    script = (
        "import json, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from pipeline.model_folder import load_model\n"
        "from pipeline.errors import PipelineError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for folder in sys.argv[1:]:\n"
        "    try:\n        load_model(folder)\n        print(json.dumps('loaded'))\n"
        "    except PipelineError as exc:\n        print(json.dumps(str(exc)))\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    folders = [str(tmp_path / name) for name in files]
    result = subprocess.run([sys.executable, "-c", script, *folders], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    *messages, grown_mib = result.stdout.splitlines() or [result.stderr]
    assert len(messages) == len(files), result.stdout + result.stderr
    for (name, (_, reason)), message in zip(files.items(), map(json.loads, messages), strict=True):
        path = tmp_path / name / "model.safetensors"
        assert message == f"{path}: not a readable weights file (Error while deserializing header: {reason})", name
    assert int(grown_mib) < 256, f"loading the malformed files grew the process by {grown_mib} MiB"


@pytest.mark.parametrize("reach", ["all", "all_relative_release", "relative", "release", "none"])
def test_state_logits_reach_what_it_says_and_survive_the_model_folder(reach, tmp_path):
    from pipeline.model_folder import build_model, model_section
    from pipeline.music.performance_encoding import NOTE_OFF, vocab
    from pipeline.music.piano_state import PIANO_STATE_SIZE

    shape = dict(n_layer=1, d_model=16, n_head=2, d_head=8, d_inner=32, tgt_len=8, mem_len=8, dropout=0.0)
    model = build_model(vocab(), model_section({**shape, "state_input": True, "state_logits": reach}))
    with torch.no_grad():
        model.side_logits.weight.normal_()
        if model.side_bands is not None:
            model.side_bands.normal_()
    export_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", torch.device("cpu"), PIANO_STATE_SIZE)
    core, side = torch.randn(1, 1, 16), torch.rand(1, 1, PIANO_STATE_SIZE)
    direct = loaded._logits(core, side) - loaded._logits(core, None)
    reached = set(torch.nonzero(direct[0, 0].abs() > 0).flatten().tolist())
    every, keys, releases = set(range(VOCAB_SIZE)), set(range(NOTE_OFF + 128)), set(range(NOTE_OFF, NOTE_OFF + 128))
    expected = {"all": every, "all_relative_release": every, "relative": keys, "release": releases}.get(reach, set())
    assert reached == expected
    assert torch.equal(direct, model._logits(core, side) - model._logits(core, None))  # as trained, once loaded
