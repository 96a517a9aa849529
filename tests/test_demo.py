"""The listening page's studio without the page: a take is the generate stage's sample, progress comes as the music
is written, and every bad input is one line in the page; the live piano roll against matplotlib's colours."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, note, write_midi, write_tokens
from test_generate import PRIMER_NOTES, notes_by_mido, notes_by_pretty_midi, params
from test_package import LABELS, tiny_labelled_model

from pipeline.demo import RANGES
from pipeline.demo.page import composing, generate_take, start, summary
from pipeline.demo.studio import Request, Studio
from pipeline.errors import PipelineError
from pipeline.generate import generate
from pipeline.model_folder import export_model
from pipeline.music.performance_encoding import VOCAB_SIZE
from pipeline.music.pianoroll import HIGHEST_KEY, ROLL_BACKGROUND, ROLL_PRIMER, roll_image
from pipeline.params import DemoParams


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    export_model(tiny_labelled_model(), folder, {"vocab_size": VOCAB_SIZE, "labels": LABELS})
    return folder


@pytest.fixture
def studio(model_dir, tmp_path) -> Studio:
    made = Studio(model_dir, tmp_path / "no-tokens", params(samples=1, max_note_s=8.0), DemoParams(max_upload_mb=0.01))
    yield made
    made.close()


@pytest.fixture
def primer_file(tmp_path: Path) -> Path:
    events = [e for on, off, p, v in PRIMER_NOTES for e in note(round(on * 960), round(off * 960), p, v)]
    return write_midi(tmp_path / "primer.mid", [events])


def test_a_take_is_the_generate_stages_sample_with_the_same_settings(studio, model_dir, primer_file, tmp_path):
    shares = []
    request = Request(upload=primer_file, primer_seconds=2.0, composer="Bach", seconds=3.0, seed=11)
    take = studio.compose(request, lambda share, notes, primer_end: shares.append((share, len(notes["pitch"]))))
    assert take.record["composer"] == "Bach" and take.primer_seconds == 2.0
    assert take.midi.is_file() and take.png.is_file() and (take.wav is None or take.wav.is_file())
    # The command line, asked the same, writes the same notes: the page copies nothing of it.
    p = params(samples=1, composers=["Bach"], seed=11, seconds=3.0, primer_seconds=2.0, max_note_s=8.0)
    generate(model_dir, tmp_path / "cli", p, primer_file, tokens=tmp_path / "no-tokens")
    assert notes_by_mido(take.midi) == notes_by_mido(tmp_path / "cli" / "sample-01.mid")
    primer = [(on, min(off, 2.0), p, v) for on, off, p, v in notes_by_pretty_midi(primer_file) if on < 2.0]
    kept = [n for n in notes_by_pretty_midi(take.midi) if n[0] < 2.0]
    assert np.allclose(np.array(kept)[:, :3], np.array(primer)[:, :3], atol=0.011)  # on the 10 ms grid
    assert np.abs(np.array(kept)[:, 3] - np.array(primer)[:, 3]).max() < 4  # in its velocity bin
    assert shares and all(0 <= s <= 1 for s, _ in shares) and shares == sorted(shares)  # it only grows
    assert shares[-1][1] >= len(primer)  # the primer's notes are drawn from the start


def test_the_composer_is_heard_and_the_take_is_named_in_its_summary(studio):
    bach, anyone = (studio.compose(Request(seconds=2.0, seed=5, composer=c)) for c in ("Bach", "any"))
    assert notes_by_mido(bach.midi) != notes_by_mido(anyone.midi)  # the label changes what is played
    assert summary(bach).startswith(f"Take {bach.record['take']}: **2.0 s as Bach**")
    assert summary(anyone).startswith(f"Take {bach.record['take'] + 1}: **2.0 s**")


def test_an_unexpected_failure_is_a_message_and_the_page_does_not_hang(studio, monkeypatch):
    def broken(request, on_progress=None):  # noqa: ANN001, ANN202
        raise RuntimeError("boom")

    monkeypatch.setattr(studio, "compose", broken)
    result = []
    worker = threading.Thread(target=lambda: result.extend(generate_take(studio, Request())), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert result == [("error", "generation failed: RuntimeError: boom")]


def test_two_takes_of_one_request_are_the_same_and_another_seed_differs(studio):
    first, again = (studio.compose(Request(seconds=2.0, seed=3)) for _ in range(2))
    other = studio.compose(Request(seconds=2.0, seed=4))
    assert first.midi != again.midi and notes_by_mido(first.midi) == notes_by_mido(again.midi)
    assert notes_by_mido(other.midi) != notes_by_mido(first.midi)


def test_bad_uploads_and_settings_are_one_line_messages_without_the_servers_paths(studio, tmp_path):
    empty, corrupt, big, silent = (tmp_path / n for n in ("empty.mid", "corrupt.mid", "big.mid", "silent.mid"))
    empty.write_bytes(b"")
    corrupt.write_bytes(b"MThd\0\0\0\6garbage")
    big.write_bytes(b"MThd" + bytes(20_000))
    write_midi(silent, [[(0, __import__("mido").MetaMessage("text", text="no notes"))]])
    cases = [
        (Request(upload=empty), "empty.mid: primer file is empty"),
        (Request(upload=corrupt), "corrupt.mid: not a readable MIDI primer"),
        (Request(upload=big), "big.mid: 0.02 MB, over the 0.01 MB an upload may be"),
        (Request(upload=silent), "silent.mid: not a readable MIDI primer (contains no notes)"),
        (Request(composer="Mozart"), "unknown composer 'Mozart': the model knows Chopin, Bach, others"),
        (Request(seconds=0), "seconds to generate must be from 1 to 120, not 0"),
        (Request(seconds=3600.0), "seconds to generate must be from 1 to 120, not 3600.0"),  # demo.max_seconds
        (Request(seconds=float("nan")), "seconds to generate must be from 1 to 120, not nan"),
        (Request(primer_seconds=61.0), "seconds of the primer must be from 1 to 60, not 61.0"),
        (Request(temperature=0.1), "temperature must be from 0.5 to 1.5, not 0.1"),
        (Request(temperature=2.0), "temperature must be from 0.5 to 1.5, not 2.0"),
        (Request(top_p=1.5), "top-p must be from 0.5 to 1, not 1.5"),
        (Request(top_p=0.2), "top-p must be from 0.5 to 1, not 0.2"),
        (Request(guidance=-1.0), "guidance must be from 0 to 4, not -1.0"),
        (Request(guidance=4.5), "guidance must be from 0 to 4, not 4.5"),
        (Request(seconds="20"), "seconds to generate must be from 1 to 120, not '20'"),
        (Request(piece=3), "validation piece 3: not among the pieces this page offers"),
    ]
    for request, message in cases:
        with pytest.raises(PipelineError) as caught:
            studio.compose(request)
        text = str(caught.value)
        assert message in text and "\n" not in text and str(tmp_path) not in text, text
    assert studio.compose(Request(seconds=1.0)).midi.is_file()  # and the studio still works


def test_the_page_runs_a_take_in_a_thread_and_reports_errors_as_messages(studio, tmp_path):
    updates = list(generate_take(studio, Request(seconds=3.0)))
    kinds = [kind for kind, _ in updates]
    assert kinds[-1] == "take" and set(kinds[:-1]) <= {"progress"} and "progress" in kinds
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    ((kind, message),) = generate_take(studio, Request(upload=tmp_path / "bad.mid"))
    assert kind == "error" and message.startswith("bad.mid: not a readable MIDI primer (")


def test_validation_pieces_are_offered_when_the_tokens_are_there(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    tokens = write_tokens(tmp_path / "tokens", {"train": [rng.integers(0, 256, 40)], "validation": [
        np.array([60, 356 + 20, 300, 60 + 128], dtype=np.int64)]})  # fmt: skip
    index_path = tokens / "validation" / "index.json"
    index = json.loads(index_path.read_text())
    stretched = {key: values + values for key, values in index.items()}  # the same piece again, time-stretched
    stretched["piece_id"][1], stretched["stretch"][1] = index["piece_id"][0] + 1, 1.05
    index_path.write_text(json.dumps(stretched))
    studio = Studio(model_dir, tokens, params(samples=1), DemoParams(max_upload_mb=1))
    ((choice, piece),) = studio.pieces().items()  # the stretched copy is no piece to start from
    assert choice.startswith(f"piece {piece} · ")
    take = studio.compose(Request(piece=piece, seconds=1.0))
    assert take.record["primer"]["source"].startswith(f"validation piece {piece}")
    studio.close()
    assert not studio.folder.exists()


def test_every_limit_admits_its_own_edges(studio):
    edges = {**RANGES, "seconds": (1.0, studio.limits.max_seconds)}
    for name, (low, high) in edges.items():
        for value in (low, high):
            studio.check(Request(**{name: value}))  # no error at either edge of the slider


def test_the_status_bar_fills_with_the_share_done():
    assert composing(0.0, 20) == f"composing `{'░' * 24}` 0%, 0 of 20 s"
    assert composing(0.5, 20) == f"composing `{'█' * 12}{'░' * 12}` 50%, 10 of 20 s"
    assert composing(1.0, 20) == f"composing `{'█' * 24}` 100%, 20 of 20 s"


def test_a_missing_model_names_the_command_that_makes_one(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--model", str(tmp_path / "none")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'none'}: no trained model there (`dvc repro` trains and " \
        "packages one)"  # fmt: skip


def test_without_gradio_the_demo_says_how_to_install_it(model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    with pytest.raises(PipelineError, match=r"the demo needs Gradio: pip install -e '\.\[demo\]'"):
        start(model_dir, tmp_path, tmp_path / "no-params.yaml", "127.0.0.1", None)


def test_the_live_roll_draws_each_note_where_it_sounds():
    notes = {"onset": np.array([0.5, 1.0]), "offset": np.array([1.5, 1.25]), "pitch": np.array([108, 60]),
             "velocity": np.array([127, 0])}  # fmt: skip
    image = roll_image(notes, end=2.0, primer_end=0.25, width=200, key_px=3)
    assert image.shape == (88 * 3, 200, 3)
    assert (image[:, :25] == ROLL_PRIMER).all(axis=-1)[200:].all()  # the primer's quarter second, on empty keys
    assert (image[:, 25:] == ROLL_BACKGROUND).all(axis=-1).sum() == image[:, 25:].shape[0] * 175 - 2 * 100 - 2 * 25
    import matplotlib

    for pitch, x0, x1, shade in ((108, 50, 150, 1.0), (60, 100, 125, 0.35)):
        row = (HIGHEST_KEY - pitch) * 3
        expected = np.round(255 * np.array(matplotlib.colormaps["Blues"](shade)[:3]))
        block = image[row : row + 2, x0:x1].reshape(-1, 3)
        assert np.abs(block.astype(int) - expected).max() <= 1, pitch
        assert (image[row + 2, x0:x1] != block[0]).any()  # a gap of a pixel below each key
        assert (image[row, x1] != block[0]).any() and (image[row, x0 - 1] != block[0]).any()  # the bar's ends


def test_takes_never_run_side_by_side_and_only_the_latest_folders_are_kept(studio, monkeypatch):
    import pipeline.demo.studio as studio_module

    spans, sample = [], studio_module.sample_batch

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.monotonic()
        time.sleep(0.3)
        rows = sample(*args, **kwargs)
        spans.append((started, time.monotonic()))
        return rows

    monkeypatch.setattr(studio_module, "sample_batch", slow)
    monkeypatch.setattr(studio_module, "KEEP_TAKES", 2)
    takes = []
    threads = [threading.Thread(target=lambda s=s: takes.append(studio.compose(Request(seconds=1.0, seed=s))))
               for s in (1, 2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    (first_start, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start  # one at a time, though two visitors asked at once
    assert len({t.record["take"] for t in takes}) == 2
    studio.compose(Request(seconds=1.0, seed=3))
    assert len(list(studio.folder.iterdir())) == 2  # the oldest take's folder is gone
    studio.takes = 9998  # past take 9999, names no longer sort as numbers do: the newest are kept all the same
    for seed in (4, 5, 6):
        studio.compose(Request(seconds=1.0, seed=seed))
    assert sorted(p.name for p in studio.folder.iterdir()) == ["take-10000", "take-10001"]
