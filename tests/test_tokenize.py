"""The tokenize stage: shards, piece index, vocabulary, augmentation and statistics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import note, tempo, write_metadata, write_midi

from pipeline.errors import PipelineError
from pipeline.music.performance_encoding import PIECE_END, PIECE_START, VOCAB_SIZE, decode
from pipeline.parse import parse
from pipeline.tokenize import tokenize


def parse_pieces(tmp_path, splits: list[str], composers: list[str] | None = None):  # noqa: ANN001, ANN201
    """Parse output of small pieces of these splits (and composers), every piece marked valid."""
    raw = tmp_path / "raw"
    rows = []
    for i, split in enumerate(splits):
        name = f"2018/p{i}.mid"
        notes = [e for k in range(10 + 5 * i) for e in note(k * 240, k * 240 + 200, 40 + (k * 7 + i) % 40, 30 + k)]
        write_midi(raw / name, [[tempo(0, 500_000)], notes])
        rows.append(
            {"midi_filename": name, "split": split, **({"canonical_composer": composers[i]} if composers else {})}
        )
    write_metadata(raw, rows)
    events = tmp_path / "events"
    parse(raw, events, tmp_path / "parse.json", workers=1, progress=False)
    validated = tmp_path / "validated"
    validated.mkdir()
    shutil.copy(events / "pieces.parquet", validated / "pieces.parquet")
    return events, validated


@pytest.fixture
def parsed(tmp_path):
    """Parse output of six small pieces (four train, one validation, one test), every piece marked valid."""
    return parse_pieces(tmp_path, ["train", "train", "train", "train", "validation", "test"])


def test_composers_get_labels_that_round_trip_through_vocab_and_index(tmp_path):
    splits = ["train", "train", "train", "train", "train", "validation", "validation", "test"]
    composers = ["Chopin", "Bach", "Chopin", "Schubert / Liszt", "Ravel", "Chopin", "Ravel", "Bach"]
    events, validated = parse_pieces(tmp_path, splits, composers)
    tokenize(events, validated, tmp_path / "tokens", tmp_path / "m.json", stretch=[1.0, 1.05], workers=1,
             min_composer_pieces=1)  # fmt: skip
    labels = json.loads((tmp_path / "tokens" / "vocab.json").read_text())["labels"]
    # Chopin has two train pieces, Bach and Ravel one each (alphabetical among equals); the joint credit shares.
    assert labels == [
        {"label": 1, "composer": "Chopin", "pieces": {"train": 2, "validation": 1}},
        {"label": 2, "composer": "Bach", "pieces": {"test": 1, "train": 1}},
        {"label": 3, "composer": "Ravel", "pieces": {"train": 1, "validation": 1}},
        {"label": 4, "composer": "other composers", "pieces": {"train": 1}},
    ]
    by_name = {"Chopin": 1, "Bach": 2, "Ravel": 3, "Schubert / Liszt": 4}
    for split in ("train", "validation", "test"):
        index, _ = load_split(tmp_path / "tokens" / split)
        assert index["label"] == [by_name[c] for c in index["composer"]] and index["label"]
    tokenize(events, validated, tmp_path / "fewer", tmp_path / "m2.json", workers=1, min_composer_pieces=2)
    fewer = json.loads((tmp_path / "fewer" / "vocab.json").read_text())["labels"]
    assert [entry["composer"] for entry in fewer] == ["Chopin", "other composers"]
    assert fewer[1]["pieces"] == {"test": 1, "train": 3, "validation": 1}
    index, _ = load_split(tmp_path / "fewer" / "validation")
    assert index["label"] == [1, 2]


def load_split(folder):  # noqa: ANN001
    index = json.loads((folder / "index.json").read_text())
    shards = {int(p.stem.split("-")[1]): np.load(p, mmap_mode="r") for p in folder.glob("shard-*.npy")}
    return index, shards


def test_shards_index_and_vocab(parsed, tmp_path):
    events, validated = parsed
    out = tmp_path / "tokens"
    stats = tokenize(
        events, validated, out, tmp_path / "tokens.json", shard_tokens=400, stretch=[0.95, 1.0, 1.05], workers=2
    )
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["vocab_size"] == VOCAB_SIZE == 390
    assert [e["first_id"] for e in vocab["events"]] == [0, 128, 256, 356]

    index, shards = load_split(out / "train")
    assert len(index["piece_id"]) == 4 * 3  # each train piece in three tempos
    assert sorted(set(index["stretch"])) == [0.95, 1.0, 1.05]
    assert len(shards) > 1 and all(s.dtype == np.uint16 and len(s) <= 400 for s in shards.values())
    import pyarrow.parquet as pq

    pieces = pq.read_table(validated / "pieces.parquet").to_pandas().set_index("piece_id")
    columns = ("piece_id", "stretch", "shard", "start", "length", "composer", "seconds")
    assert sorted(index) == sorted((*columns, "label"))
    for piece_id, stretch, shard, start, length, composer, seconds in zip(*map(index.get, columns), strict=True):
        assert composer == pieces.loc[piece_id, "composer"]
        assert seconds == pytest.approx(pieces.loc[piece_id, "file_duration"] * stretch)
        tokens = np.asarray(shards[shard][start : start + length])
        assert tokens[0] == PIECE_START and tokens[-1] == PIECE_END
        notes = decode(tokens)
        assert len(notes["onset"]) == 10 + 5 * piece_id
        # The k-th note starts at k * 0.25 s, times the stretch, give or take a step.
        np.testing.assert_allclose(notes["onset"][1], 0.25 * stretch, atol=0.0101)
    # Every token of every shard belongs to exactly one piece.
    assert sum(index["length"]) == sum(len(s) for s in shards.values()) == stats["splits"]["train"]["tokens"]

    for split in ("validation", "test"):
        index, _ = load_split(out / split)
        assert index["stretch"] == [1.0]
    metrics = json.loads((tmp_path / "tokens.json").read_text())
    assert metrics == stats
    frequency = metrics["splits"]["train"]["event_frequency"]
    assert frequency["note_on"] == frequency["note_off"] > 0 and abs(sum(frequency.values()) - 1) < 1e-3


def test_every_onset_and_offset_of_a_stretched_copy_is_stretched(parsed, tmp_path):
    import pyarrow.parquet as pq

    events, validated = parsed
    factors = [0.9, 0.95, 1.0, 1.05, 1.1]
    tokenize(events, validated, tmp_path / "tokens", tmp_path / "tokens.json", stretch=factors, workers=1)
    notes = pq.read_table(events / "notes", columns=["piece_id", "onset", "offset", "pitch"]).to_pandas()
    seen = []
    for split in ("train", "validation", "test"):
        index, shards = load_split(tmp_path / "tokens" / split)
        for piece_id, stretch, shard, start, length in zip(
            *map(index.get, ("piece_id", "stretch", "shard", "start", "length")), strict=True
        ):
            parsed_notes = notes[notes["piece_id"] == piece_id].sort_values(["onset", "pitch"])
            onset, offset = parsed_notes["onset"].to_numpy(), parsed_notes["offset"].to_numpy()
            # Notes that never overlap and last far more than a step: each decodes as itself, no step is forced.
            assert len(onset) > 5 and (offset[:-1] < onset[1:]).all() and (offset - onset > 0.1).all()
            decoded = decode(np.asarray(shards[shard][start : start + length]))
            assert decoded["pitch"].tolist() == parsed_notes["pitch"].tolist()
            # Times are rounded to the nearest 10 ms step: off by half a step at most.
            np.testing.assert_allclose(decoded["onset"], onset * stretch, rtol=0, atol=0.005 + 1e-9)
            np.testing.assert_allclose(decoded["offset"], offset * stretch, rtol=0, atol=0.005 + 1e-9)
            seen.append((split, stretch))
    assert sorted({s for split, s in seen if split == "train"}) == factors and len(seen) == 4 * len(factors) + 2


def test_only_validated_pieces_are_tokenized(parsed, tmp_path):
    import pyarrow.parquet as pq

    events, validated = parsed
    pieces = pq.read_table(validated / "pieces.parquet")
    pq.write_table(pieces.filter(pieces["piece_id"].to_numpy() != 1), validated / "pieces.parquet")
    tokenize(events, validated, tmp_path / "tokens", tmp_path / "tokens.json", stretch=[1.0], workers=1)
    index, _ = load_split(tmp_path / "tokens" / "train")
    assert index["piece_id"] == [0, 2, 3]


def test_a_piece_longer_than_a_shard_is_a_clear_error_and_writes_nothing(parsed, tmp_path):
    events, validated = parsed
    with pytest.raises(PipelineError, match="tokenize.shard_tokens=50"):
        tokenize(events, validated, tmp_path / "tokens", tmp_path / "tokens.json", shard_tokens=50, workers=1)
    assert not (tmp_path / "tokens").exists()


def test_missing_inputs_are_clear_errors(parsed, tmp_path):
    events, validated = parsed
    with pytest.raises(PipelineError, match="run the validate stage first"):
        tokenize(events, tmp_path / "nowhere", tmp_path / "tokens", tmp_path / "t.json")
    shutil.rmtree(events / "notes")
    with pytest.raises(PipelineError, match="run the parse stage first"):
        tokenize(events, validated, tmp_path / "tokens", tmp_path / "t.json")
