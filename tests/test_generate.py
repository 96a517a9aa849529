"""The generate stage and command: primers back unchanged, lengths, files read back by mido and pretty_midi, audio,
samples.json, and one-line errors for bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, note, write_midi, write_tokens

from model import AttnSpan, TransformerXL, TransformerXLConfig
from pipeline.errors import PipelineError
from pipeline.generate import MAX_SAMPLES, GenerateParams, check_params, generate, sample_flags, write_sample
from pipeline.generation.decoding import MAX_TOKENS_PER_SECOND, TOKEN_CAP_FLOOR, MusicClock, sample_batch
from pipeline.generation.primers import Primer, primer_from_midi, primer_from_piece, unconditional
from pipeline.model_folder import export_model, load_model
from pipeline.music.audio import synthesizer
from pipeline.music.performance_encoding import (
    PIECE_END,
    PIECE_START,
    SHIFT_STEPS,
    TIME_SHIFT,
    VOCAB_SIZE,
    decode,
    encode,
    velocity_bin,
)

# A primer at 120 bpm, 480 ticks per quarter (960 ticks a second), off the 10 ms grid. The third note is still held
# at the 2-second cut; the fourth starts after it.
PRIMER_NOTES = [(0.0503, 0.6109, 60, 80), (0.3021, 1.2, 64, 70), (1.0, 3.5, 67, 101), (2.5, 2.9, 72, 90)]
CUT = 2.0


def params(**overrides) -> GenerateParams:  # noqa: ANN003
    base = GenerateParams(samples=2, seconds=3.0, device="cpu", precision="float32", composers=[])  # no labels
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model that never ends a piece on its own, as data/model holds a trained one."""
    torch.manual_seed(0)
    cfg = TransformerXLConfig(
        VOCAB_SIZE, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16, mem_len=16
    )
    model = TransformerXL(cfg)
    with torch.no_grad():
        model.out_bias[PIECE_END] = -1e4
    folder = tmp_path_factory.mktemp("model")
    export_model(model, folder)
    return folder


@pytest.fixture
def primer_file(tmp_path: Path) -> Path:
    events = [e for on, off, p, v in PRIMER_NOTES for e in note(round(on * 960), round(off * 960), p, v)]
    return write_midi(tmp_path / "primer.mid", [events])


def notes_by_pretty_midi(path: Path) -> list[tuple[float, float, int, int]]:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(path))
    return sorted((n.start, n.end, n.pitch, n.velocity) for i in midi.instruments for n in i.notes)


def notes_by_mido(path: Path) -> list[tuple[float, float, int, int]]:
    """Notes paired by hand from mido's messages (seconds through the tempo map mido applies)."""
    import mido

    now, held, notes = 0.0, {}, []
    for msg in mido.MidiFile(path):
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            held.setdefault(msg.note, []).append((now, msg.velocity))
        elif msg.type in ("note_on", "note_off") and held.get(msg.note):
            start, velocity = held[msg.note].pop(0)
            notes.append((start, now, msg.note, velocity))
    return sorted(notes)


def test_the_primers_notes_come_back_unchanged_and_the_music_goes_on_for_the_seconds_asked(
    model_dir, primer_file, tmp_path
):
    summary = generate(model_dir, tmp_path / "out", params(primer_seconds=CUT, seconds=3.0), primer_file)
    expected = [(on, min(off, CUT), p, v) for on, off, p, v in notes_by_pretty_midi(primer_file) if on < CUT]
    assert len(expected) == 3
    import mido

    for record in summary["samples"]:
        path = tmp_path / "out" / record["midi"]
        got = notes_by_pretty_midi(path)
        primer = [n for n in got if n[0] < CUT]
        assert len(primer) == len(expected)
        for (on, off, pitch, vel), (on2, off2, pitch2, vel2) in zip(expected, primer, strict=True):
            assert pitch == pitch2 and abs(on - on2) <= 0.01 and abs(off - off2) <= 0.01
            assert velocity_bin(vel) == velocity_bin(vel2)
        assert all(n[0] >= CUT for n in got[len(primer) :])
        assert record["ended_by"] == "seconds" and record["seconds"] == 3.0
        assert mido.MidiFile(path).length == pytest.approx(CUT + 3.0, abs=1e-3)
        assert record["notes"] == len(got) - len(primer) and record["primer"]["seconds"] == CUT


def test_no_primer_leaves_out_exactly_the_primer(model_dir, primer_file, tmp_path):
    generate(model_dir, tmp_path / "with", params(primer_seconds=CUT), primer_file)
    generate(model_dir, tmp_path / "without", params(primer_seconds=CUT, keep_primer=False), primer_file)
    for name in ("sample-01.mid", "sample-02.mid"):
        kept = [(on - CUT, off - CUT, p, v) for on, off, p, v in notes_by_pretty_midi(tmp_path / "with" / name)]
        alone = notes_by_pretty_midi(tmp_path / "without" / name)
        assert alone and np.allclose(np.array(alone), np.array([n for n in kept if n[0] >= -1e-9]), atol=1e-6)


def test_the_midi_written_reads_back_the_same_in_mido_and_pretty_midi(tmp_path):
    rng = np.random.default_rng(0)
    body = rng.choice(np.r_[0:128, 256:300, 356:388], size=600)  # strikes, shifts and velocities, so notes overlap
    body = np.where(rng.random(600) < 0.3, rng.integers(128, 256, 600), body)  # and releases
    primer = unconditional()
    record = write_sample(tmp_path, "sample-01", primer, body, params(seconds=1e6), "no synthesizer here")
    decoded = decode(np.concatenate([primer.tokens, body]))
    on, off, pitch, vel = (decoded[k].tolist() for k in ("onset", "offset", "pitch", "velocity"))
    expected = []  # as a piano plays them: a strike of a key still sounding ends the note before it
    for i in range(len(on)):
        same_key = [j for j in range(len(on)) if pitch[j] == pitch[i]]
        if any(on[j] == on[i] for j in same_key if j > i):
            continue  # struck again at the same time: the later strike is the note
        end = min([off[i]] + [on[j] for j in same_key if on[j] > on[i]])
        expected.append((on[i], end, pitch[i], vel[i]))
    expected.sort()
    for read in (notes_by_pretty_midi, notes_by_mido):
        got = read(tmp_path / "sample-01.mid")
        assert len(got) == len(expected) == record["notes"] > 50
        assert np.allclose(np.array(got, float), np.array(expected, float), atol=1e-6)


def test_the_wav_has_the_midis_length_and_is_not_silent(model_dir, primer_file, tmp_path):
    if isinstance(synthesizer(), str):
        pytest.skip(f"{synthesizer()}; .ci/run installs both")
    import mido

    summary = generate(model_dir, tmp_path / "out", params(primer_seconds=CUT, samples=1), primer_file)
    record = summary["samples"][0]
    with wave.open(str(tmp_path / "out" / record["wav"])) as wav:
        frames, rate = wav.getnframes(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(frames), "<i2").astype(np.float64) / 32768
    assert frames / rate == pytest.approx(mido.MidiFile(tmp_path / "out" / record["midi"]).length, abs=1 / rate)
    assert np.sqrt(np.mean(pcm[: rate * 2] ** 2)) > 0.01  # the primer's notes sound in the first two seconds
    assert 0.5 < np.abs(pcm).max() < 1.0


def test_without_fluidsynth_the_wav_is_skipped_with_how_to_install(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    summary = generate(model_dir, tmp_path / "out", params(samples=1))
    assert "apt-get install fluidsynth fluid-soundfont-gm" in capsys.readouterr().out
    assert summary["wav"].startswith("skipped") and summary["samples"][0]["wav"] is None
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert made == ["sample-01-without-rule.mid", "sample-01.mid", "sample-01.png", "samples.json"]


def test_a_seed_reproduces_the_files_and_each_sample_has_its_own(model_dir, tmp_path):
    for name in ("a", "b"):
        generate(model_dir, tmp_path / name, params(samples=3))
    generate(model_dir, tmp_path / "c", params(samples=1, seed=GenerateParams().seed + 2))
    mid = {name: [(tmp_path / name / f"sample-0{i}.mid").read_bytes() for i in (1, 2, 3)] for name in ("a", "b")}
    assert mid["a"] == mid["b"] and len(set(mid["a"])) == 3
    assert (tmp_path / "c" / "sample-01.mid").read_bytes() == mid["a"][2]  # sample 3 alone, from seed + 2
    for i in (1, 2, 3):
        assert (tmp_path / "a" / f"sample-0{i}.png").read_bytes() == (tmp_path / "b" / f"sample-0{i}.png").read_bytes()
    records = json.loads((tmp_path / "a" / "samples.json").read_text())["samples"]
    assert [r["seed"] for r in records] == [1234, 1235, 1236]


def test_validation_pieces_prime_the_stage_and_old_samples_go_but_nothing_else(model_dir, tmp_path):
    notes = {
        "onset": np.array([0.0, 0.5, 1.5]),
        "offset": np.array([0.4, 2.5, 1.7]),
        "pitch": np.array([60, 62, 64]),
        "velocity": np.array([64, 90, 30]),
    }
    body = encode(np.zeros(3, int), notes["onset"], notes["offset"], notes["pitch"], notes["velocity"])[0][1:-1]
    tokens = write_tokens(tmp_path / "tokens", {"train": [body], "validation": [body[::-1], body]})
    out = tmp_path / "out"
    generate(model_dir, out, params(samples=3))  # an earlier run, and a user's own files beside it
    (out / "notes.txt").write_text("mine")
    (out / "sample-9.wav").write_bytes(b"mine too")
    summary = generate(model_dir, out, params(primers=[1], primer_seconds=1.0, samples=1), tokens=tokens)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sample-9.wav").read_bytes() == b"mine too"
    wav = ["sample-01.wav"] if summary["samples"][0]["wav"] else []
    assert sorted(p.name for p in out.glob("sample-0*")) == ["sample-01-without-rule.mid", "sample-01.mid",
                                                             "sample-01.png", *wav]  # fmt: skip
    assert summary["samples"][0]["primer"]["source"] == "validation piece 1 (B)"
    got = notes_by_pretty_midi(out / "sample-01.mid")
    assert np.allclose([n[:3] for n in got[:2]], [(0.0, 0.4, 60), (0.5, 1.0, 62)])
    with pytest.raises(PipelineError, match="piece 7 is not in"):
        generate(model_dir, out, params(primers=[7]), tokens=tokens)


def test_flags_name_silence_one_pitch_and_a_note_held_over_ten_seconds():
    def notes(onset: list, offset: list, pitch: list) -> dict:
        return {"onset": np.array(onset, float), "offset": np.array(offset, float), "pitch": np.array(pitch)}

    assert sample_flags(notes([], [], [])) == ["silent"]
    assert sample_flags(notes([0, 1, 2], [0.5, 1.5, 2.5], [60, 60, 60])) == ["one_pitch_repeated"]
    assert sample_flags(notes([0, 1], [10.5, 1.5], [60, 62])) == ["note_held_over_10s"]
    assert sample_flags(notes([0, 1], [9.9, 1.5], [60, 62])) == []


def test_samples_run_their_full_length_unless_the_model_may_end_them(tmp_path):
    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=1, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=8, mem_len=8)
    model = TransformerXL(cfg)
    with torch.no_grad():
        model.out_bias[PIECE_END] = 4.0  # about one token in seven would end the piece
    export_model(model, tmp_path / "model")
    full = generate(tmp_path / "model", tmp_path / "a", params(samples=3, seconds=5.0))
    assert [s["ended_by"] for s in full["samples"]] == ["seconds"] * 3
    ended = generate(tmp_path / "model", tmp_path / "b", params(samples=3, seconds=5.0, stop_at_piece_end=True))
    assert [s["ended_by"] for s in ended["samples"]] == ["piece_end"] * 3
    assert all(s["seconds"] < 5.0 for s in ended["samples"])


def test_a_model_that_never_moves_time_on_is_cut_off_at_the_token_cap(tmp_path):
    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=1, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=8, mem_len=8)
    model = TransformerXL(cfg)
    with torch.no_grad():  # strikes, releases and velocities only: the music never gets past its first instant
        model.out_bias[TIME_SHIFT : TIME_SHIFT + SHIFT_STEPS] = -1e4
        model.out_bias[PIECE_END] = -1e4
    export_model(model, tmp_path / "model")
    seconds = 0.5
    cap = int(seconds * MAX_TOKENS_PER_SECOND) + TOKEN_CAP_FLOOR  # docs/generation.md: 300 tokens per second, plus 64

    def ran_on(signum: int, frame: object) -> None:
        raise TimeoutError("the sample ran on: no cap on its tokens")

    previous = signal.signal(signal.SIGALRM, ran_on)  # without a cap the model would sample for ever
    signal.alarm(120)
    try:
        summary = generate(tmp_path / "model", tmp_path / "out", params(samples=2, seconds=seconds))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    written = json.loads((tmp_path / "out" / "samples.json").read_text())["samples"]
    assert written == summary["samples"] and len(written) == 2
    for record in written:
        assert record["ended_by"] == "max_tokens" and record["seconds"] == 0.0, record
        assert record["tokens"] == cap, record  # every sample runs into the same cap, exactly
    assert len({r["tokens"] for r in written}) == 1


def test_the_samples_limit_is_checked_at_its_edge():
    assert MAX_SAMPLES == 256  # the limit docs/generation.md gives
    check_params(GenerateParams(samples=256))
    check_params(GenerateParams(samples=1))
    for samples in (0, 257):
        with pytest.raises(PipelineError, match=rf"^samples must be from 1 to 256, not {samples}$"):
            check_params(GenerateParams(samples=samples))


def test_the_music_clock_counts_each_rows_time_shifts():
    clock = MusicClock(1.0, rows=2, device=torch.device("cpu"))
    assert clock(torch.tensor([256 + 49, 60])).tolist() == [False, False]  # 50 steps, and a note
    assert clock(torch.tensor([256 + 49, 256 + 99])).tolist() == [True, True]  # 100 steps each: one second


def test_a_primer_that_is_not_what_it_should_be_is_a_clear_error(tmp_path):
    (tmp_path / "empty.mid").write_bytes(b"")
    (tmp_path / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    late = write_midi(tmp_path / "late.mid", [note(5 * 960, 6 * 960, 60)])
    for path, message in (
        (tmp_path / "missing.mid", "primer file not found"),
        (tmp_path / "empty.mid", "primer file is empty"),
        (tmp_path / "corrupt.mid", "not a readable MIDI primer"),
        (late, r"no note starts in the first 2 s \(see --primer-seconds\)"),
    ):
        with pytest.raises(PipelineError, match=message):
            primer_from_midi(path, 2.0)
    assert isinstance(primer_from_midi(late, 5.5), Primer)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--primer", "{tmp}/missing.mid"], "missing.mid: primer file not found"),
        (["--model", "{tmp}"], "no trained model there"),
        (["--temperature", "0"], "temperature must be above 0, not 0.0"),
        (["--top-p", "0"], "top-p must be in (0, 1], not 0.0"),
        (["--top-p", "1.5"], "top-p must be in (0, 1], not 1.5"),
        (["--seconds", "-1"], "seconds must be above 0 and at most 3600.0, not -1.0"),
        (["--temperature", "inf"], "temperature must be a finite number, not inf"),
        (["--samples", "257"], "samples must be from 1 to 256, not 257"),
    ],
)
def test_the_command_gives_one_line_errors_and_writes_nothing(model_dir, tmp_path, options, message):
    args = [a.format(tmp=tmp_path) for a in options]
    if "--model" not in args:
        args += ["--model", str(model_dir)]
    out = tmp_path / "out"
    (tmp_path / "p.yaml").write_text("generate:\n  device: cpu\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "generate", *args, "--out", str(out), "--params", str(tmp_path / "p.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not out.exists()


def test_the_command_runs_with_the_options_named_in_the_readme(model_dir, primer_file, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "generate", "--model", str(model_dir), "--primer", str(primer_file),
         "--primer-seconds", "2", "--seconds", "1.5", "--temperature", "0.9", "--top-k", "40", "--top-p", "0.9",
         "--seed", "3", "--samples", "2", "--out", str(tmp_path / "out"), "--no-primer", "--composer", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "samples.json").read_text())
    settings = summary["settings"]
    assert (settings["temperature"], settings["top_k"], settings["top_p"], settings["seconds"]) == (0.9, 40, 0.9, 1.5)
    assert [s["seed"] for s in summary["samples"]] == [3, 4] and not settings["keep_primer"]
    assert result.stdout.count("generate: sample-0") == 2
    import mido

    assert mido.MidiFile(tmp_path / "out" / "sample-01.mid").length == pytest.approx(1.5, abs=1e-3)


def test_an_unconditional_sample_starts_from_piece_start():
    assert unconditional().tokens.tolist() == [PIECE_START] and unconditional().seconds == 0.0


def test_bf16_is_chosen_where_it_pays_and_when_asked(monkeypatch):
    import pipeline.generation.decoding as stage

    cpu = torch.device("cpu")
    small = TransformerXL(TransformerXLConfig(VOCAB_SIZE, n_layer=1, d_model=32, n_head=2, d_head=16, d_inner=64))
    assert stage.decode_dtype("float32", cpu, small, 4) is None
    assert stage.decode_dtype("bfloat16", cpu, small, 4) is torch.bfloat16
    timed = []
    for native in (True, False):
        for faster in (True, False):
            monkeypatch.setattr("model.device.cpu_has_bf16", lambda native=native: native)
            monkeypatch.setattr(stage, "bf16_decodes_faster", lambda m, rows, f=faster: timed.append(rows) or f)
            assert stage.decode_dtype("auto", cpu, small, 4) is (torch.bfloat16 if native and faster else None)
    assert timed == [4, 4]  # timed at the batch's size, and only where the CPU has bf16 at all


def test_a_primer_keeps_its_silence_up_to_the_cut(model_dir, tmp_path):
    events = note(0, round(1.2 * 960), 60) + note(5 * 960, 6 * 960, 64)  # silent from 1.2 s to 5 s
    primer = primer_from_midi(write_midi(tmp_path / "p.mid", [events]), 2.0)
    assert primer.steps == 200 and primer.tokens[-1] == 256 + 79  # 1.2 s to 2 s: a shift of 80 steps
    early = primer_from_midi(write_midi(tmp_path / "q.mid", [note(0, 480, 60)]), 2.0)
    assert early.steps == 50  # a file that ends before the cut ends the primer
    summary = generate(model_dir, tmp_path / "out", params(primer_seconds=2.0, samples=1), tmp_path / "p.mid")
    got = notes_by_pretty_midi(tmp_path / "out" / "sample-01.mid")
    assert got[0][:3] == pytest.approx((0.0, 1.2, 60)) and all(n[0] >= 2.0 for n in got[1:])
    assert summary["samples"][0]["primer"]["seconds"] == 2.0


def test_a_note_struck_on_the_last_step_is_left_out_not_left_hanging(tmp_path):
    import mido

    primer = Primer(np.array([PIECE_START, 50, 256, 128 + 50]), 1, "one note")  # a 10 ms note, then the cut
    new = np.array([256 + 4, 60, PIECE_END])  # 50 ms on, then a strike as the piece ends
    record = write_sample(tmp_path, "sample-01", primer, new, params(stop_at_piece_end=True), "none")
    messages = [m for m in mido.MidiFile(tmp_path / "sample-01.mid") if m.type in ("note_on", "note_off")]
    assert [(m.type, m.note) for m in messages] == [("note_on", 50), ("note_off", 50)]
    assert record["notes"] == 0 and record["ended_by"] == "piece_end" and record["seconds"] == 0.05


def test_more_settings_and_inputs_that_make_no_sense(model_dir, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not weights")
    (tmp_path / "a-file").write_text("")
    for call, message in (
        (lambda: generate(model_dir, tmp_path / "o", params(temperature=float("inf"))), "temperature must be a finite"),
        (lambda: generate(model_dir, tmp_path / "o", params(seconds=float("inf"))), "seconds must be above 0 and at"),
        (lambda: generate(model_dir, tmp_path / "o", params(seed=2**70)), "seed must be from 0"),
        (lambda: generate(model_dir, tmp_path / "o", params(mem_len=10**8)), "mem_len must be from 0 to"),
        (lambda: generate(model_dir, tmp_path / "o", params(primers=["abc"])), "must list validation piece ids"),
        (lambda: generate(model_dir, tmp_path / "o", params(primers=[1.5])), "must list validation piece ids"),
        (lambda: generate(tmp_path / "broken", tmp_path / "o", params()), "not a readable weights file"),
        (lambda: generate(model_dir, tmp_path / "a-file", params()), "exists and is not a folder"),
    ):
        with pytest.raises(PipelineError, match=message):
            call()
    assert not (tmp_path / "o").exists()


def test_a_tiny_temperature_is_greedy_decoding(model_dir, tmp_path):
    cold = generate(model_dir, tmp_path / "cold", params(samples=2, temperature=1e-30))
    greedy = generate(model_dir, tmp_path / "greedy", params(samples=2, top_k=1, seed=99))
    assert [s["tokens"] for s in cold["samples"]] == [s["tokens"] for s in greedy["samples"]]
    midi = [(tmp_path / d / "sample-02.mid").read_bytes() for d in ("cold", "greedy")]
    assert midi[0] == midi[1]


def test_a_primer_too_long_to_read_is_a_one_line_error(tmp_path):
    path = write_midi(tmp_path / "long.mid", [note(0, 480, 60) + note(960 * 7300, 960 * 7301, 62)])
    with pytest.raises(PipelineError, match=r"^\S+long.mid: not a readable MIDI primer \(events span 7301 s, more"):
        primer_from_midi(path, 10.0)


def test_a_validation_primer_is_the_piece_as_played_not_a_stretched_copy(tmp_path):
    played = np.array([356 + 15, 60, 256 + 49, 128 + 60, 64, 256 + 99, 128 + 64])  # 0.5 s and 1 s notes
    stretched = np.array([356 + 15, 60, 256 + 52, 128 + 60, 64, 256 + 99, 256 + 4, 128 + 64])
    tokens = write_tokens(tmp_path / "tokens", {"validation": [stretched, played]})
    index = json.loads((tokens / "validation" / "index.json").read_text())
    index.update(piece_id=[7, 7], stretch=[1.05, 1.0])  # the stretched copy first, as a source may list it
    (tokens / "validation" / "index.json").write_text(json.dumps(index))
    primer = primer_from_piece(tokens, 7, 10.0)
    want = decode(np.concatenate([[PIECE_START], played, [PIECE_END]]))
    got = decode(np.append(primer.tokens, PIECE_END))
    assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in want.items()}
    assert primer.steps == 150 and primer.source.startswith("validation piece 7")
    with pytest.raises(PipelineError, match="piece 8 is not in"):
        primer_from_piece(tokens, 8, 10.0)


def test_a_state_input_model_samples_what_a_full_recompute_with_the_piano_state_would(tmp_path):
    """The stage's incremental piano state, fed one token at a time, against the state of the whole sequence so far
    recomputed at every step with a plain forward over it (greedy, so the tokens must be the same)."""
    from pipeline.generation.decoding import sample_batch
    from pipeline.music.piano_state import PIANO_STATE_SIZE, piano_state

    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16,
                              mem_len=256, side_size=PIANO_STATE_SIZE)  # fmt: skip
    model = TransformerXL(cfg).double().eval()
    with torch.no_grad():  # a few keys and shifts are likely; the state keeps a sounding key from being struck and
        # pushes it toward its release the longer it sounds, so what is sampled depends on the state at every step
        model.out_bias[[60, 64, 67]] += 9.0
        model.out_bias[TIME_SHIFT + 9] += 8.0
        model.side_logits.weight.zero_()
        for pitch in range(128):
            model.side_logits.weight[pitch, pitch] = -30.0
            model.side_logits.weight[128 + pitch, pitch] = 4.0
            model.side_logits.weight[128 + pitch, 128 + pitch] = 400.0
        model.side_net.weight.normal_(0, 0.5)
    p = params(seconds=1.0, top_k=1, top_p=1.0)
    (new,), released = sample_batch(model, unconditional(), p, [0], None, rule=False)
    seq = [PIECE_START]
    for _ in range(len(new)):
        tokens = torch.tensor([seq])
        side = torch.from_numpy(piano_state(np.array(seq))[None]).double()
        with torch.no_grad():
            logits = model(tokens, side=side)[0][0, -1]
        logits[[PIECE_START, PIECE_END]] = -torch.inf
        seq.append(int(logits.argmax()))
    assert new.tolist() == seq[1:] and released.tolist() == [0]
    seq = np.array(seq)
    assert set(seq[seq < 128].tolist()) == {60, 64, 67} and set(seq[(seq >= 128) & (seq < 256)].tolist()) == {
        188,
        192,
        195,
    }


def test_a_samples_record_has_its_first_note_and_its_share_of_long_notes(tmp_path):
    notes = {"onset": np.array([0.5, 1.0, 2.0]), "offset": np.array([7.0, 1.5, 2.2]), "pitch": np.array([60, 64, 67]),
             "velocity": np.array([80, 80, 80])}  # fmt: skip
    tokens, _ = encode(np.zeros(3, np.int64), notes["onset"], notes["offset"], notes["pitch"], notes["velocity"])
    body = tokens[1:-1].astype(np.int64)
    record = write_sample(tmp_path, "sample-01", unconditional(), body, params(seconds=8.0), "no synthesizer here")
    assert record["first_note_s"] == 0.5 and record["held_over_5s"] == pytest.approx(1 / 3, abs=1e-4)


def test_only_the_first_wav_samples_get_audio(model_dir, tmp_path):
    if isinstance(synthesizer(), str):
        pytest.skip(f"no synthesizer: {synthesizer()}")
    summary = generate(model_dir, tmp_path / "out", params(samples=3, seconds=1.0, wav_samples=2))
    assert [s["wav"] for s in summary["samples"]] == ["sample-01.wav", "sample-02.wav", None]
    assert not (tmp_path / "out" / "sample-03.wav").exists() and "first 2 samples" in summary["wav"]


def test_the_note_length_rule_releases_the_longest_held_key_once_it_has_sounded_long_enough():
    from pipeline.generation.decoding import NoteLimit

    opening = torch.tensor([[PIECE_START, 60, TIME_SHIFT + 99, 64], [PIECE_START, 62, 65, TIME_SHIFT + 49]])
    rule = NoteLimit(opening, seconds=1.5)  # row 0: key 60 has sounded 1 s; row 1: keys 62 and 65 0.5 s
    assert rule(None).tolist() == [-1, -1]
    assert rule(torch.tensor([TIME_SHIFT + 48, TIME_SHIFT + 99])).tolist() == [-1, 128 + 62]  # 1.49 s; 1.5 s (a tie)
    assert rule(torch.tensor([TIME_SHIFT, 128 + 62])).tolist() == [128 + 60, 128 + 65]  # 60 at 1.5 s, not 64 (0.5 s)
    assert rule(torch.tensor([128 + 60, 128 + 65])).tolist() == [-1, -1]


def key_holder(wait: int) -> TransformerXL:
    """A state-input model that strikes key 60 or waits (the shift `wait`), and never strikes 60 while it sounds nor
    releases it."""
    from pipeline.music.piano_state import PIANO_STATE_SIZE

    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=1, d_model=16, n_head=2, d_head=8, d_inner=32, tgt_len=8, mem_len=8,
                              side_size=PIANO_STATE_SIZE)  # fmt: skip
    model = TransformerXL(cfg)
    with torch.no_grad():
        model.out_bias[:] = -30.0
        model.out_bias[60] = model.out_bias[wait] = 0.0
        model.side_logits.weight[60, 60] = -60.0  # never while it sounds
    return model


def test_a_rows_count_of_imposed_releases_stops_where_the_row_ends():
    """A model that strikes key 60, never releases it and may end the piece: every release in a sample is the rule's,
    so each row's count is its own releases, none counted after it ended while the others went on."""
    model = key_holder(wait=TIME_SHIFT + 9)
    with torch.no_grad():
        model.out_bias[PIECE_END] = -3.0  # now and then, the piece ends
    p = params(seconds=20.0, max_note_s=0.2, stop_at_piece_end=True)
    rows, imposed = sample_batch(model, unconditional(), p, list(range(8)), None)
    lengths = [len(row) for row in rows]
    assert min(lengths) < max(lengths)  # rows end at different steps: the rule went on for the longer ones
    assert imposed.tolist() == [int((row == 128 + 60).sum()) for row in rows]
    assert imposed.sum() > 20  # the rule does fire


def test_the_stage_applies_the_rule_and_counts_what_it_changed(tmp_path):
    """A model that strikes one key and never releases it: with the rule each sample's key is released on time,
    and the samples made again without it (listed beside them) hold it to the end."""
    model = key_holder(wait=TIME_SHIFT + 99)
    export_model(model, tmp_path / "model")
    summary = generate(tmp_path / "model", tmp_path / "out", params(samples=2, seconds=20.0, max_note_s=3.0))
    assert sum(s["rule_releases"] for s in summary["samples"]) >= 3
    for ruled, free in zip(summary["samples"], summary["without_rule"], strict=True):
        assert ruled["rule_releases"] >= 1 and "note_held_over_10s" not in ruled["flags"]
        assert "note_held_over_10s" in free["flags"] and "rule_releases" not in free
        longest = max(n[1] - n[0] for n in notes_by_pretty_midi(tmp_path / "out" / ruled["midi"]))
        assert 3.0 <= longest <= 4.0  # released at the first event after 3 s (a shift of at most 1 s)
    assert generate(tmp_path / "model", tmp_path / "off", params(samples=1, max_note_s=0.0))["without_rule"] == []


def test_sampling_remembers_twice_the_training_memory_unless_told(model_dir, tmp_path):
    assert generate(model_dir, tmp_path / "a", params(samples=1, seconds=0.5))["settings"]["mem_len"] == 2 * 16
    assert generate(model_dir, tmp_path / "b", params(samples=1, seconds=0.5, mem_len=5))["settings"]["mem_len"] == 5
    # 0 is a memory of nothing (each step sees only the segment so far), not "unset".
    assert generate(model_dir, tmp_path / "z", params(samples=1, seconds=0.5, mem_len=0))["settings"]["mem_len"] == 0
    # And the samples are those of that memory: the same seeds sampled directly with it, not with the model's own.
    model = load_model(model_dir)
    for mem_len, out in ((None, "c"), (5, "d")):
        p = params(samples=2, seconds=2.0, mem_len=mem_len, max_note_s=0.0)
        made = generate(model_dir, tmp_path / out, p)["samples"]
        span = AttnSpan(mem_len or 2 * 16)
        rows, _ = sample_batch(model, unconditional(), p, [p.seed, p.seed + 1], None, span)
        assert [s["tokens"] for s in made] == [len(r) for r in rows]
        for record, row in zip(made, rows, strict=True):
            write_sample(tmp_path, "direct", unconditional(), row, p, None, figures=False)
            assert (tmp_path / "direct.mid").read_bytes() == (tmp_path / out / record["midi"]).read_bytes()
    assert (tmp_path / "c" / "sample-01.mid").read_bytes() != (tmp_path / "d" / "sample-01.mid").read_bytes()


def test_composers_given_to_a_model_without_labels_make_unlabelled_samples_and_say_so(model_dir, tmp_path, capsys):
    summary = generate(
        model_dir, tmp_path / "out", params(samples=2, seconds=1.0, composers=["Chopin", "Bach", "none"])
    )
    line = "generate: the model was trained without composer labels (model.composer_labels), so the samples have no "
    assert line + "composer: Chopin, Bach, none left aside" in capsys.readouterr().out
    assert [(s["name"], s["composer"]) for s in summary["samples"]] == [("sample-01", None), ("sample-02", None)]
    plain = generate(model_dir, tmp_path / "plain", params(samples=2, seconds=1.0))
    assert [s["tokens"] for s in plain["samples"]] == [s["tokens"] for s in summary["samples"]]  # the same seeds


def test_long_samples_come_after_the_others_from_nothing_with_their_own_seeds(model_dir, tmp_path):
    out = tmp_path / "out"
    summary = generate(model_dir, out, params(samples=2, long_samples=2, long_seconds=5.0, max_note_s=1.0))
    long = summary["long"]
    assert [r["name"] for r in long] == ["long-01", "long-02"] and [r["seed"] for r in long] == [1236, 1237]
    assert all(r["seconds"] == pytest.approx(5.0, abs=0.01) and r["primer"]["source"] == "none" for r in long)
    assert all(r["ended_by"] == "seconds" and "rule_releases" in r for r in long)
    assert summary["settings"]["long_samples"] == 2 and summary["settings"]["long_seconds"] == 5.0
    # the same draw as an ordinary sample of that seed and length, from nothing: the long ones are that and no more
    generate(model_dir, tmp_path / "alone", params(samples=1, seed=1237, seconds=5.0, max_note_s=1.0))
    assert (out / "long-02.mid").read_bytes() == (tmp_path / "alone" / "sample-01.mid").read_bytes()
    assert (out / "long-01.png").is_file() and notes_by_pretty_midi(out / "long-01.mid")
    generate(model_dir, out, params(samples=1))  # a run without them removes the earlier run's long files
    assert not list(out.glob("long-*"))
    with pytest.raises(PipelineError, match="long_seconds must be above 0"):
        check_params(params(long_samples=1, long_seconds=0.0))
    with pytest.raises(PipelineError, match="long_samples must be from 0"):
        check_params(params(long_samples=-1))


def test_a_model_that_reads_no_texture_track_needs_no_token_folder(model_dir, tmp_path):
    """Only a model that reads a texture track needs the tracks (the model folder's vocab.json, or the token
    folder's): a fresh clone has no data/tokens."""
    summary = generate(model_dir, tmp_path / "out", params(samples=1, seconds=1.0), tokens=tmp_path / "no-tokens")
    assert len(summary["samples"]) == 1 and (tmp_path / "out" / "sample-01.mid").is_file()
