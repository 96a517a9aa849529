"""The report's parts: Markdown tables, figures that are the same bytes for the same data, sample notes read back, the
data checksum and the published figures' sources. The whole stage runs in the DVC end-to-end test."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.music.features import FEATURES, feature_values
from pipeline.music.midi import write_midi
from pipeline.report import figures
from pipeline.report.markdown import table
from pipeline.report.samples import new_notes, reference_draws
from pipeline.report.stage import LITERATURE, Inputs, data_checksum


def test_tables_are_github_markdown_with_numbers_right_aligned():
    assert table(["a", "b"], [[1, "x"], ["y", 2.5]]) == ["| a | b |", "| --- | ---: |", "| 1 | x |", "| y | 2.5 |"]
    assert table(["a", "b"], [], "ll")[1] == "| --- | --- |"


def test_each_figure_is_the_same_bytes_for_the_same_data_and_changes_with_it(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=500)
    notes = {"onset": np.array([0.0, 0.5, 1.0]), "offset": np.array([0.4, 1.2, 1.5]), "pitch": np.array([60, 64, 67]),
             "velocity": np.array([50, 70, 90])}  # fmt: skip
    pieces = [feature_values(notes, 2.0), feature_values({**notes, "pitch": notes["pitch"] + 2}, 2.0)]
    draw = {
        "bars": lambda data, path: figures.bars(path, ["a", "b"], list(data[:2]), "t", "x", reference=0.0),
        "hist": lambda data, path: figures.histograms(path, {"s": data}, np.linspace(-3, 3, 20), "t", "x"),
        "curve": lambda data, path: figures.curves(path, {"s": (np.arange(len(data)), data)}, "t", "x", "y"),
        "grid": lambda data, path: figures.feature_grid(
            path, {"a": pieces, "b": pieces[:1] if data[0] > 9 else pieces}, FEATURES, "t"
        ),  # fmt: skip
    }
    for name, drawing in draw.items():
        first, again, other = (tmp_path / f"{name}-{k}.png" for k in range(3))
        drawing(values, first)
        drawing(values, again)
        drawing(values + (10.0 if name == "grid" else 0.5), other)
        assert first.read_bytes() == again.read_bytes(), name
        assert first.read_bytes() != other.read_bytes(), name
        assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_samples_new_notes_start_after_its_primer_and_a_silent_one_has_none(tmp_path):
    notes = {"onset": np.array([0.5, 2.0, 2.5]), "offset": np.array([1.0, 2.4, 3.5]), "pitch": np.array([60, 62, 64]),
             "velocity": np.array([40, 50, 60])}  # fmt: skip
    got = new_notes(write_midi(notes, tmp_path / "s.mid", end=4.0), start=2.0)
    assert np.allclose(got["onset"], [0.0, 0.5]) and np.allclose(got["offset"], [0.4, 1.5])
    assert got["pitch"].tolist() == [62, 64]
    empty = {k: np.zeros(0) for k in ("onset", "offset", "pitch", "velocity")}
    silent = new_notes(write_midi(empty, tmp_path / "silent.mid", end=3.0), start=0.0)
    assert all(len(v) == 0 for v in silent.values())


def test_the_data_checksum_covers_every_byte_and_name(tmp_path):
    raw = tmp_path / "raw"
    (raw / "2004").mkdir(parents=True)
    (raw / "2004" / "a.midi").write_bytes(b"one")
    (raw / "2004" / "b.midi").write_bytes(b"two")
    pieces = {"midi_filename": np.array(["2004/a.midi", "2004/b.midi"])}
    first = data_checksum(Inputs(raw=raw), pieces)
    assert first == data_checksum(Inputs(raw=raw), pieces)
    (raw / "2004" / "b.midi").write_bytes(b"twO")
    assert data_checksum(Inputs(raw=raw), pieces) != first


def test_every_published_figure_names_its_data_and_its_source():
    for model, nll, data, source in LITERATURE:
        assert float(nll.strip("≈ ")) > 1 and "MAESTRO v" in data and "https://" in source, model


def test_a_missing_or_broken_sample_is_an_error_not_silence(tmp_path):
    with pytest.raises(PipelineError, match="missing"):
        new_notes(tmp_path / "gone.mid", 0.0)
    (tmp_path / "bad.mid").write_bytes(b"MThd garbage")
    with pytest.raises(PipelineError, match="unreadable sample"):
        new_notes(tmp_path / "bad.mid", 0.0)


def test_the_reference_puts_real_music_of_the_samples_size_in_their_place():
    rng = np.random.default_rng(0)

    def piece(shift: float) -> dict:
        onset = np.sort(rng.uniform(0, 20, 150))
        notes = {"onset": onset, "offset": onset + rng.uniform(0.1, 1.0, 150),
                 "pitch": rng.integers(40, 80, 150) + int(shift), "velocity": rng.integers(30, 100, 150)}  # fmt: skip
        return feature_values(notes, 20.0)

    reference = [piece(0) for _ in range(40)]
    alike = reference_draws(reference, [piece(0) for _ in range(40)], 4)
    apart = reference_draws(reference, [piece(30) for _ in range(40)], 4)
    assert alike["pitch_class_histogram"]["overlap"] > 0.5 and alike["pitch_range"]["overlap"] > 0.5
    assert apart["pitch_class_histogram"]["overlap"] < alike["pitch_class_histogram"]["overlap"]
    assert alike["pitch_range"]["overlap_p10"] <= alike["pitch_range"]["overlap"]
    assert all(np.isnan(v["overlap"]) for v in reference_draws(reference, reference, 0).values())
