"""The report's parts: Markdown tables, figures that are the same bytes for the same data, sample notes read back, the
data checksum and the published figures' sources. The whole stage runs in the DVC end-to-end test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.music.features import FEATURES, feature_values
from pipeline.music.midi import write_midi
from pipeline.report import figures
from pipeline.report.markdown import table
from pipeline.report.notes import new_notes
from pipeline.report.samples import reference_draws, samples_section
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


def test_the_data_checksum_changes_with_a_files_name_and_the_pieces_order(tmp_path):
    raw = tmp_path / "raw"
    (raw / "2004").mkdir(parents=True)
    for name, data in (("a.midi", b"one"), ("b.midi", b"two"), ("c.midi", b"one")):  # c holds a's bytes
        (raw / "2004" / name).write_bytes(data)
    inputs = Inputs(raw=raw)

    def checksum(*names: str) -> str:
        return data_checksum(inputs, {"midi_filename": np.array([f"2004/{n}" for n in names])})

    first = checksum("a.midi", "b.midi")
    assert checksum("c.midi", "b.midi") != first  # the same bytes under another name is other data
    assert checksum("b.midi", "a.midi") != first  # a hash "in piece order": the order is part of it
    assert first == checksum("a.midi", "b.midi")
    (raw / "2004" / "a.midi").write_bytes(b"onf")  # one byte of one file
    assert checksum("a.midi", "b.midi") != first


def test_samples_that_ended_early_are_left_out_of_the_comparison_with_real_music(tmp_path):
    rng = np.random.default_rng(0)
    seconds = 4.0

    def notes(count: int, length: float, velocity: tuple[int, int], pitch: tuple[int, int]) -> dict:
        onset = np.sort(rng.uniform(0, length - 0.5, count)).round(3)
        return {"onset": onset, "offset": onset + rng.uniform(0.1, 0.4, count).round(3),
                "pitch": rng.integers(*pitch, count), "velocity": rng.integers(*velocity, count)}  # fmt: skip

    # Real music: eight pieces of 12 s per split, as the parse stage's tables hold them.
    real = [notes(60, 12.0, (40, 90), (40, 80)) for _ in range(16)]
    pieces = {"piece_id": np.arange(16), "split": np.array(["train"] * 8 + ["validation"] * 8)}
    table_of_notes = {k: np.concatenate([p[k] for p in real]) for k in ("onset", "offset", "pitch", "velocity")}
    table_of_notes["piece"] = np.repeat(np.arange(16), 60)

    # Three samples that ran their full length, then two that ended early, loud and high (and so easy to tell apart).
    samples_dir, records, full = tmp_path / "samples", [], []
    samples_dir.mkdir()
    for i, ended_by in enumerate(["seconds", "seconds", "seconds", "piece_end", "max_tokens"]):
        early = ended_by != "seconds"
        length = seconds / 2 if early else seconds
        if early:
            made = notes(12, length, velocity=(118, 127), pitch=(90, 100))
        else:
            made = notes(12, length, velocity=(30 + 20 * i, 50 + 20 * i), pitch=(50, 60 + 5 * i))
            full.append(made)
        name = f"sample-0{i + 1}"
        write_midi(made, samples_dir / f"{name}.mid", end=length)
        records.append(
            {"name": name, "midi": f"{name}.mid", "png": f"{name}.png", "wav": None, "seed": i, "seconds": length,
             "primer": {"source": "none", "seconds": 0.0, "kept": True}, "notes": 12, "ended_by": ended_by,
             "flags": []}
        )  # fmt: skip
    summary = {"settings": {"seconds": seconds}, "wav": "skipped", "samples": records}
    (tmp_path / "figures").mkdir()
    (tmp_path / "plots").mkdir()
    lines = samples_section(samples_dir, summary, tmp_path / "figures", tmp_path / "plots", pieces, table_of_notes)

    assert any(line.startswith(f"### Generated against real music ({len(full)} samples, ") for line in lines), lines
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in lines if line.startswith("| ")}
    # The generated column, computed here from the notes written into the full-length samples alone.
    for feature, per_sample in (
        ("velocity", [np.mean(n["velocity"]) for n in full]),
        ("pitch range", [float(n["pitch"].max() - n["pitch"].min()) for n in full]),
    ):
        assert rows[feature][2] == f"{np.mean(per_sample):.3g} ± {np.std(per_sample):.2g}", rows[feature]
    assert len(json.loads((tmp_path / "plots" / "feature_overlap.json").read_text())) == len(FEATURES)
    assert all(r["name"] in "\n".join(lines) for r in records)  # every sample is still shown, early or not


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


def test_the_reference_test_asks_each_feature_for_its_share_and_the_mean_for_more():
    from pipeline.report.samples import MIN_FEATURE_RATIO, MIN_MEAN_RATIO, reference_test

    reference = {"a": {"overlap": 0.9}, "b": {"overlap": 0.8}, "c": {"overlap": 0.7}}

    def verdict(a: float, b: float, c: float) -> dict:
        return reference_test({"a": {"overlap": a}, "b": {"overlap": b}, "c": {"overlap": c}}, reference)

    passing = verdict(0.9, 0.8, 0.7)
    assert passing["passed"] and passing["mean_ratio"] == pytest.approx(1.0)
    low = verdict(0.9, 0.8, 0.7 * MIN_FEATURE_RATIO - 0.01)  # one feature below its share fails the whole
    assert not low["passed"] and low["lowest"] == "c"
    assert low["ratios"]["c"] == pytest.approx(MIN_FEATURE_RATIO - 0.01 / 0.7)
    edge = verdict(0.9 * 0.85, 0.8 * 0.85, 0.7 * 0.85)  # every feature above 0.8, but the mean below 0.9
    assert not edge["passed"] and edge["mean_ratio"] == pytest.approx(0.85) and MIN_MEAN_RATIO > 0.85
    assert not verdict(0.9, 0.8, float("nan"))["passed"]  # a feature the samples do not define fails


def test_two_way_overlap_takes_the_lower_direction_and_openings_start_at_zero():
    from pipeline.music.features import compare_sets
    from pipeline.report.notes import openings
    from pipeline.report.samples import two_way_overlap

    rng = np.random.default_rng(3)

    def piece(spread: float) -> dict:
        onset = np.sort(rng.uniform(0, 12, 40))
        return {"onset": onset, "offset": onset + rng.uniform(0.1, spread, 40), "pitch": rng.integers(40, 90, 40),
                "velocity": rng.integers(20, 120, 40)}  # fmt: skip

    a = [feature_values(piece(1.0), 12.0) for _ in range(12)]
    b = [feature_values(piece(4.0), 12.0) for _ in range(6)]
    both = two_way_overlap(a, b)
    forward, backward = compare_sets(a, b), compare_sets(b, a)
    for name in FEATURES:
        assert both[name]["overlap"] == pytest.approx(min(forward[name]["overlap"], backward[name]["overlap"]))
    assert any(forward[n]["overlap"] != backward[n]["overlap"] for n in FEATURES)  # the two ways do differ
    short, long = piece(1.0), piece(1.0)
    short["offset"] = np.minimum(short["offset"], 5.0)
    (opening,) = openings([short, long], 6.0)  # the piece that ends before 6 s is left out
    assert opening["onset"].tolist() == long["onset"][long["onset"] < 6.0].tolist()
    assert opening["offset"].max() <= 6.0 and len(opening["pitch"]) == len(opening["onset"])


def test_the_samples_metrics_count_what_the_samples_show():
    from pipeline.report.samples import sample_metrics

    records = [{"flags": ["silent"]}, {"flags": ["note_held_over_10s"]}, {"flags": []}, {"flags": []}]
    durations = [np.zeros(0), np.array([11.0, 0.5]), np.array([6.0, 1.0, 1.0]), np.array([0.2])]
    verdict = {"ratios": {"a": 0.7, "b": 0.95}, "lowest": "a", "mean_ratio": 0.85, "passed": False}
    m = sample_metrics(records, durations, [0.4, 1.0, 3.0], verdict)
    assert (m["samples"], m["silent"], m["note_held_over_10s"]) == (4, 1, 1)
    assert m["first_note_median_s"] == 1.0 and m["notes_over_5s"] == pytest.approx(2 / 6, abs=1e-4)
    assert (m["overlap_ratio_lowest"], m["overlap_ratio_mean"], m["reference_test_passed"]) == (0.7, 0.85, False)


def test_the_composers_section_shows_the_gain_and_who_was_named_and_nothing_without_labels(tmp_path):
    from pipeline.report.attribution import composers_section

    named = {"tokens": 512, "pieces": 5, "top1": 0.6, "top3": 1.0, "majority": 0.4, "labels": ["Bach", "Chopin"],
             "confusion": [[2, 1], [1, 1]]}  # fmt: skip
    scores = {"validation": {"nll": 2.9, "nll_labelled": 2.5, "label_gain": 0.06, "by_composer": {"Bach": 2.8},
                             "labelled_tokens": 1234, "labelled_share": 0.25, "by_composer_labelled": {"Bach": 2.4},
                             "by_composer_gain": {"Bach": 0.1}, "identification": named}}  # fmt: skip
    summary = {"settings": {"seconds": 30.0}, "samples": []}
    lines = "\n".join(composers_section(scores, summary, tmp_path, tmp_path, {}, {}))
    assert (
        "| validation | 2.500 | 2.560 | +0.0600 | 1,234 (25%) |" in lines  # on the same tokens: not `nll` (2.9)
        and "| validation | Bach | 2.400 | 2.500 | +0.1000 |" in lines
    )
    assert "| validation | 5 | 512 | 0.600 | 1.000 | 0.400 |" in lines
    assert "(figures/composer_confusion_validation.png)" in lines
    assert (tmp_path / "composer_confusion_validation.png").stat().st_size > 1000
    assert composers_section({"validation": {"nll": 2.5}}, summary, tmp_path, tmp_path, {}, {}) == []


def test_the_evaluation_table_says_its_nll_is_with_no_composer_given_for_a_model_with_labels(tmp_path):
    from pipeline.report.stage import Inputs, evaluation_section

    (tmp_path / "metrics").mkdir()
    (tmp_path / "p.yaml").write_text("evaluate:\n  ngram_order: 4\n")
    base = {"nll": 2.6, "bits_per_token": 3.75, "accuracy": 0.3, "tokens": 10, "seconds": 3600.0,
            "nats_per_second": 100.0, "by_composer": {"Bach": 2.5},
            "baselines": {"kneser_ney": 3.8, "unigram": 4.9, "uniform": 5.97}}  # fmt: skip
    inputs = Inputs(metrics=tmp_path / "metrics", params=tmp_path / "p.yaml")
    for labelled, row in ((False, "| Transformer-XL (this model) | **2.600** |"),
                          (True, "| Transformer-XL (this model, no composer given) | **2.600** |")):  # fmt: skip
        scored = {**base, "nll_labelled": 2.55} if labelled else base
        (tmp_path / "metrics" / "eval.json").write_text(json.dumps({"validation": scored}))
        lines = evaluation_section(inputs, tmp_path / "figures", tmp_path / "plots")
        assert any(line.startswith(row) for line in lines), lines
