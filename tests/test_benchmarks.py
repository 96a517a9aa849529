"""Smoke tests of benchmarks/: every script runs at a tiny size on the current params.yaml, so that a change that
breaks a benchmark fails here. Each checks the table a script prints (its rows there, their figures positive); speed
itself is never asserted. The inputs are made here (token shards, a tiny model shaped by params.yaml's model:, a
primer), except the real MIDI files that the parse and tokenize benchmarks read where they lie, when they are there.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MAESTRO_ASAP, ROOT, note, repeating_corpus, require, tempo, write_midi

BENCHMARKS = ROOT / "benchmarks"
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def run(command: list[str], timeout: float = 120, **env: str) -> str:
    """The output of a command run from the project root with `env` added; a non-zero exit fails the test with what
    it printed. One torch thread: on two cores that the rest of a test run shares, threads that wait on each other
    make a tiny benchmark several times slower."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, f"{command[1]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def script(name: str, *args: str | Path) -> str:
    """The output of benchmarks/NAME run with `args`."""
    return run([sys.executable, str(BENCHMARKS / name), *map(str, args)])


def numbers(text: str) -> list[float]:
    """The numbers in `text`, thousands separators and all."""
    return [float(x.replace(",", "")) for x in NUMBER.findall(text)]


def row(output: str, name: str) -> list[float]:
    """The figures on the line of `output` that starts with `name` (after the name itself)."""
    lines = [line for line in output.splitlines() if line.startswith(name)]
    assert len(lines) == 1, f"no single row {name!r} in:\n{output}"
    return numbers(lines[0][len(name) :])


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Token shards (the repeating corpus) and an untrained tiny model with params.yaml's model: switches (the piano
    state, composer labels), exported as the train stage exports one."""
    import torch

    from pipeline.model_folder import build_model, export_model, folder_vocab, model_section
    from pipeline.params import load_section
    from pipeline.token_folder import load_vocab

    folder = tmp_path_factory.mktemp("bench")
    tokens = repeating_corpus(folder / "tokens")
    vocab = load_vocab(tokens)
    shape = model_section(load_section("model", ROOT / "params.yaml"))
    tiny = dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, dropout=0.0, tgt_len=16, mem_len=16)
    torch.manual_seed(0)
    model = build_model(vocab, {**shape, **tiny})
    export_model(model, folder / "model", folder_vocab(model.cfg, tokens))
    return tokens, folder / "model"


def test_parse_benchmark_times_the_stage_and_its_peers_on_three_real_files():
    output = script("parse.py", "--data", require(MAESTRO_ASAP), "--limit", "3")
    assert output.startswith("3 files from")
    for name in ("parse stage", "raw symusic", "pretty_midi", "mido"):
        _, files, notes, ratio = row(output, name)  # the seconds, to two places, may round to 0.00
        assert min(files, notes, ratio) > 0


def test_encoding_benchmark_times_ours_and_the_stage_on_three_real_files():
    output = script("encoding.py", "--data", require(MAESTRO_ASAP), "--limit", "3")
    assert output.startswith("MidiTok is not installed") or "MidiTok MIDILike" in output
    for name in ("ours:", "tokenize stage"):
        assert min(row(output, name)[-2:]) > 0  # files/s, tokens/s


@pytest.mark.parametrize("name", ["parse.py", "encoding.py"])
def test_the_real_data_benchmarks_say_why_they_skip_without_the_data(name, tmp_path):
    missing = tmp_path / "maestro"
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), "--data", str(missing), "--limit", "3"],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert f"skipped: no MAESTRO folder at {missing}" in done.stderr
    assert "Traceback" not in done.stderr


def test_train_benchmark_times_each_setting_against_eager_float32(bench_inputs, tmp_path):
    tokens, _ = bench_inputs
    settings = ["eager float32", "eager bf16"]
    output = script("train.py", "--tokens", tokens, "--steps", "2", "--warmup", "1", "--batch-size", "2",
                    "--settings", *settings, "--json", tmp_path / "train.json", "--host-steps", "2",
                    "--host-batch", "16", "--ranks", "2")  # fmt: skip
    assert "failed" not in output
    assert re.search(r"^\| eager float32 \| [\d,]+ \| 1\.00× \|", output, re.M), output
    record = json.loads((tmp_path / "train.json").read_text())
    results, host = record["results"], record["host"]
    assert [r["setting"] for r in results] == settings
    assert re.search(r"^\| now, on the host: .* \| [\d.]+ \|$", output, re.M), output
    assert host["now_ms"] > 0 and host["before_ms"] > 0 and host["device_state_ms"] > 0 and host["h100_ms"] > 0
    for r in results:
        assert r["tokens_per_s"] > 0 and r["peak_memory_gib"] > 0 and math.isfinite(r["loss"])
        assert r["batch"].startswith("2 × ") and r["source"] == "token shards"


def test_generate_benchmark_times_every_decoding_for_the_default_and_the_trained_model(bench_inputs, tmp_path):
    tokens, model = bench_inputs
    script("generate.py", "--model", model, "--tokens", tokens, "--context", "32", "--batches", "1", "--steps", "3",
           "--json", tmp_path / "rows.json")  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    names = list(dict.fromkeys(r["model"] for r in rows))
    assert len(names) == 2 and names[0].startswith("default size, ") and names[1].startswith("trained (model), ")
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        contenders = [r["contender"] for r in mine]
        assert contenders[:3] == ["recompute the window", "plain incremental forward", "cached, float32"]
        assert mine[0]["vs_recompute"] == 1.0
        assert all(r["tokens_per_s"] > 0 and r["music_s_per_s"] > 0 for r in mine)


def test_evaluate_benchmark_times_the_ngram_fit_and_scoring_with_the_memory(bench_inputs):
    tokens, model = bench_inputs
    output = script("evaluate.py", "--tokens", tokens, "--model", model, "--train-tokens", "2000",
                    "--scored-tokens", "100", "--tgt-len", "16", "--mem-len", "32")  # fmt: skip
    nll, fit, scored = row(output, "ours: numpy modified KN, NLL")
    assert 0 < nll < math.log(390) and fit > 0 and scored > 0
    assert row(output, "ours: segments of 16 with a memory of 32")[0] > 0
    assert row(output, "recompute a window of 48 per token")[0] > 0
    assert row(output, "memory / recompute:")[0] > 0


def test_demo_benchmark_times_takes_on_the_page_and_the_command(bench_inputs, tmp_path):
    tokens, model = bench_inputs
    notes = [event for k in range(24) for event in note(480 * k, 480 * k + 400, 60 + k % 12)]
    primer = write_midi(tmp_path / "primer.mid", [[tempo(0, 500_000)], notes])  # 12 s at 120 bpm
    output = script("demo.py", "--model", model, "--tokens", tokens, "--primer", primer, "--seconds", "2",
                    "--takes", "1")  # fmt: skip
    startup, *takes, median = row(output, "page: start-up")
    assert len(takes) == 1 and min(startup, *takes, median) > 0
    assert row(output, "peer, `maestro-xl generate` for the same request:")[0] > 0
    assert "sooner" in output


def test_gpu_script_runs_every_step_in_its_cpu_mode(bench_inputs, tmp_path):
    tokens, _ = bench_inputs
    output = run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--cpu", "--tokens", str(tokens), str(tmp_path)], PYTHON=sys.executable
    )
    table = (tmp_path / "table.md").read_text()
    assert table.strip() in output
    lines = table.strip().splitlines()
    assert lines[:2] == ["| step | setting | result | wall time |", "| --- | --- | --- | ---: |"]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    steps = {}
    for name, setting, result, _ in cells:
        steps.setdefault(name, []).append((setting, result))
    assert steps["card"] == [(f"no GPU: the CPU mode, torch {__import__('torch').__version__}", "")]
    assert re.fullmatch(r"\d+ skipped in .*", steps["GPU tests"][0][1])  # tests/test_gpu.py needs CUDA
    for setting, result in steps["train step"]:
        assert setting.startswith("eager float32, 2 × ")
        assert numbers(result)[0] > 0
    [(what, result)] = steps["training"]
    assert re.fullmatch(r"2 layers, d_model 64; \d+ steps in a 8 s budget", what)
    nll, step = re.fullmatch(r"validation NLL ([\d.]+) at step (\d+)", result).groups()
    assert 0 < float(nll) < math.log(390) + 1 and f"; {step} steps" in what
    assert len(steps["generate"]) >= 6 and all(numbers(r)[0] > 0 for _, r in steps["generate"])
    [(host_batch, host)] = steps["host time"]
    assert host_batch.startswith("batch 16 × ") and numbers(host)[0] > 0 and "before: " in host
    assert [s for s, _ in steps["attention"]] == ["one layer, today's path, eager", "one layer, FlexAttention, eager"]
    assert all(numbers(r)[0] > 0 for _, r in steps["attention"])
    assert {"gpu.log", "train-bench.json", "generate.json"} <= {p.name for p in tmp_path.iterdir()}


def test_attention_benchmark_measures_flex_attention_against_todays_path():
    output = script("attention.py", "--batch", "1", "--tgt-len", "32", "--mem-len", "32", "--no-compile",
                    "--steps", "1", "--warmup", "1")  # fmt: skip
    row = r"^\| today's path, eager \| ([\d.,]+) \| 1\.00× \| ([\d.,]+) \| 1\.00× \| ([\d.,]+) \|"
    peer = re.search(row, output, re.M)
    flex = re.search(r"^\| FlexAttention, eager \| ([\d.,]+) \| ([\d.]+)× \|.*\| ([\d.e+-]+) \|$", output, re.M)
    assert peer and flex, output
    assert min(numbers(" ".join(peer.groups()))) > 0 and float(flex.group(1).replace(",", "")) > 0
    assert float(flex.group(3)) < 0.05  # the two paths agree (bf16 where native)


def test_pipeline_benchmark_times_each_stage_from_dvcs_lines_and_sets_it_beside_its_budget():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline_benchmark", BENCHMARKS / "pipeline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = [(0.0, "Stage 'fetch' didn't change, skipping"), (1.0, "Running stage 'train':"), (2.0, "step 1/2"),
             (31.0, "Running stage 'evaluate':"), (95.5, "Updating lock file 'dvc.lock'")]  # fmt: skip
    seconds = bench.stage_seconds(lines, end=100.0)
    assert seconds == {"train": 30.0, "evaluate": 69.0}  # from its line to the next stage's, the last to the end
    table = "\n".join(bench.budget_table(seconds, {"no-op dvc repro": 1.2}))
    budget = bench.BUDGET_S
    assert f"| train | 30.0 | {budget['train']} | yes |" in table
    assert f"| evaluate | 69.0 | {budget['evaluate']} | NO |" in table
    assert f"| fetch | skipped (unchanged) | {budget['fetch']} | |" in table
    assert f"| **all stages** | **99.0** | {bench.TOTAL_BUDGET_S} | yes |" in table
    assert "| no-op dvc repro | 1.20 | 1.5 | yes |" in table
    assert sum(bench.BUDGET_S.values()) <= bench.TOTAL_BUDGET_S  # the stages' budgets fit the whole one


def test_pipeline_budgets_cover_dvcs_stages_and_a_time_at_its_budget_is_within_it():
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("pipeline_benchmark", BENCHMARKS / "pipeline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(bench.BUDGET_S) == list(stages)  # one budget per stage, in the pipeline's order
    at_budget = {name: float(budget) for name, budget in bench.BUDGET_S.items()}
    fixed = {"maestro-xl --help": bench.FIXED_BUDGET_S, "no-op dvc repro": 2.0}
    table = "\n".join(bench.budget_table(at_budget, fixed))
    for name, budget in bench.BUDGET_S.items():
        assert f"| {name} | {float(budget):.1f} | {budget} | yes |" in table  # exactly at its budget is within it
    assert f"| maestro-xl --help | {bench.FIXED_BUDGET_S:.2f} | {bench.FIXED_BUDGET_S} | yes |" in table
    assert f"| no-op dvc repro | 2.00 | {bench.FIXED_BUDGET_S} | NO |" in table  # judged by its own budget
    over = "\n".join(bench.budget_table({"train": bench.TOTAL_BUDGET_S + 1.0}, {}))
    assert f"| **all stages** | **{bench.TOTAL_BUDGET_S + 1.0:.1f}** | {bench.TOTAL_BUDGET_S} | NO |" in over


def test_quality_benchmark_judges_each_seeds_samples_against_real_music(synthetic_run, tmp_path):
    data, trained = synthetic_run / "data", synthetic_run / "data" / "trained"
    output = script("quality.py", "--seeds", "5", "--model", f"5={trained}", "--data", data, "--work", tmp_path,
                    "--params", synthetic_run / "params.yaml", "--short", "2", "--long", "4", "--json",
                    tmp_path / "quality.json")  # fmt: skip
    lines = {line.split(" | ")[0]: line for line in output.splitlines() if line.startswith("| ")}
    assert {"| real validation music", "| seed 5, with rule", "| seed 5, without rule"} <= set(lines)
    assert re.search(r"\| \d+/9(:|\s\|)", lines["| real train pieces the samples draw"])  # the texture criteria
    assert "Sets of real pieces of the same sizes (" in output
    assert re.search(r"\| \d+/11(:|\s\|)", lines["| seed 5, with rule"])  # every criterion judged, with the rule
    assert re.search(r"\| \d+/13(:|\s\|)", lines["| seed 5, without rule"])  # and the model's own two besides
    short, long = (
        json.loads((tmp_path / "seed-5" / "samples" / n / "samples.json").read_text()) for n in ("short", "long")
    )
    assert len(short["samples"]) == len(short["without_rule"]) > 0  # as the generate stage makes them, rule off too
    assert len(long["samples"]) == len(long["without_rule"]) == 8 and all(s["seconds"] == 4.0 for s in long["samples"])
    assert all(not s.get("composer") for s in long["samples"])
    drawn = json.loads((tmp_path / "quality.json").read_text())["5"]["drawn"]
    assert drawn["short"] == pytest.approx(drawn_texture(trained, data / "tokens", short, 2.0), nan_ok=True)
    assert drawn["windows"][1] == pytest.approx(drawn_texture(trained, data / "tokens", long, 4.0, 2.0), nan_ok=True)


def test_real_sets_meet_the_texture_bar_as_often_as_their_pieces_allow():
    import importlib.util

    import numpy as np

    from pipeline.music.texture import set_texture

    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    rng = np.random.default_rng(0)

    def piece(notes: int, pitch: int) -> dict:  # `notes` notes of 0.5 s over 30 s
        onset = np.sort(rng.uniform(0, 29, notes))
        return {"onset": onset, "offset": onset + 0.5, "pitch": np.full(notes, pitch), "velocity": np.full(notes, 80)}

    like, unlike = piece(270, 62), piece(900, 62)  # 9 and 30 notes a second
    m = {"real": {**set_texture([like], 30.0), "mean_pitch_spread": 1.0}, "real_windows": [set_texture([like], 30.0)]}
    real = {"sets": {"train": ([like] * 3 + [unlike], [[like]] * 3 + [[unlike]]), "validation": ([like], [[like]])}}
    chance = quality.real_chance(real, m, (1, 1), 30.0, draws=400)
    assert set(chance["validation"].values()) == {1.0}  # every set is the real figures themselves
    train = chance["train"]
    assert 0.45 < train[quality.EVERY] < 0.65  # the sets that hold no 30-notes-a-second piece: 3/4 * 3/4 of them
    assert 0.65 < train["notes per second within 20%"] < 0.85  # an opening of 30 a second: 1/4 of the sets
    assert 0.65 < train["notes per second within 30% in every window"] < 0.85  # a long piece of 30: 1/4
    assert train["mean pitch within 2 semitones"] == 1.0  # every piece has the real register
    assert train[quality.EVERY_WINDOW] == train["notes per second within 30% in every window"]  # the only one missed


def drawn_texture(model: Path, tokens: Path, summary: dict, seconds: float, start: float = 0.0) -> dict:
    """The texture of the 2-s windows from `start` of the train pieces whose texture tracks the samples of a generate
    `summary` drew for `seconds` of music, each piece found by its track among every train piece's, stretched or
    not."""
    import numpy as np

    from pipeline.generation.decoding import draw_textures
    from pipeline.model_folder import TABLE_WINDOWS
    from pipeline.music.performance_encoding import decode
    from pipeline.music.texture import set_texture, texture_track, window
    from pipeline.token_folder import PieceStore

    vocab = json.loads((model / "vocab.json").read_text())
    labels = {entry["composer"]: entry["label"] for entry in vocab.get("labels", [])}
    store = PieceStore(tokens, "train")
    pieces = [store.piece(i) for i in range(len(store))]
    tracks = [np.round(texture_track(piece)[:TABLE_WINDOWS], 5) for piece in pieces]
    cut = []
    for record in summary["samples"]:
        drawn = draw_textures(vocab["textures"], labels.get(record["composer"], 0), [record["seed"]], seconds)[0]
        match = next(k for k, track in enumerate(tracks) if np.allclose(track, drawn[: len(track)], atol=1e-4))
        cut.append(window(decode(pieces[match]), start, 2.0))
    return set_texture(cut, 2.0)


def test_calibration_benchmark_adds_up_the_models_own_probabilities_and_recounts_the_events(bench_inputs, tmp_path):
    import numpy as np
    import torch

    from pipeline.model_folder import export_model, load_model
    from pipeline.music.piano_state import PIANO_STATE_SIZE
    from pipeline.music.piano_state_torch import PianoState
    from pipeline.music.texture import texture_track
    from pipeline.token_folder import PieceStore

    tokens, folder = bench_inputs
    model = load_model(folder, "cpu", PIANO_STATE_SIZE)
    torch.manual_seed(1)
    with torch.no_grad():  # every weight random, the labels' and the piano state's included: each one counts
        for weight in model.parameters():
            weight.normal_(0, 1.0)
    export_model(model, tmp_path / "random")
    output = script("calibration.py", tmp_path / "random", "--tokens", tokens, "--pieces", "1", "--length", "16")
    store = PieceStore(tokens, "validation")
    piece = torch.from_numpy(store.piece(0)[:17].astype(np.int64))[None]  # one segment of tgt_len 16: one forward
    labels = torch.full((1, 16), int(store.index["label"][0]))
    track = torch.from_numpy(texture_track(store.piece(0))[None])  # the script reads the whole piece's track
    side = PianoState(1, "cpu", track)(piece[:, :16])
    with torch.no_grad():
        probs = torch.softmax(model.eval()(piece[:, :16], side=side, labels=labels)[0][0].float(), -1).numpy()
    following = piece[0, 1:].numpy()
    kinds = {name: row(output, f"| {name} |") for name in ("NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY")}
    for name, (low, high) in {"NOTE_ON": (0, 128), "NOTE_OFF": (128, 256), "TIME_SHIFT": (256, 356),
                              "VELOCITY": (356, 388)}.items():  # fmt: skip
        predicted, actual = probs[:, low:high].sum(), np.sum((following >= low) & (following < high))
        assert abs(kinds[name][0] - predicted) <= 0.051 and kinds[name][1] == actual  # printed to a tenth, a unit
        assert abs(kinds[name][2] - predicted / max(actual, 1)) <= 0.0006  # and the ratio, to a thousandth
    spans = ("0-0.1", "0.1-0.25", "0.25-0.5", "0.5-1", "1-2", "2-4", "4-inf")
    held = [row(output, f"| {span} |") for span in spans]
    sounding = side[0, :, :128].numpy() > 0
    seconds = np.round(
        0.05 * np.expm1(side[0, :, 128:256].double().numpy() * math.log1p(200)), 2
    )  # the log scale undone
    bucket = np.digitize(seconds, [0.1, 0.25, 0.5, 1, 2, 4])
    assert [h[0] for h in held] == [np.sum(sounding & (bucket == b)) for b in range(len(spans))]
    for b, h in enumerate(held):
        assert abs(h[1] - probs[:, 128:256][sounding & (bucket == b)].sum()) <= 0.051
    assert sum(h[2] for h in held) == np.sum((following >= 128) & (following < 256))  # each release of a sounding key
