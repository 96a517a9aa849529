"""A piece's texture track as the model reads it: the texture of each window of its notes, moved with its
transposition, carried by every training token by the piece clock, drawn from the train pieces while sampling and fed
at every step, and a piece's own in evaluation; each against an independent computation (the texture of each window
cut from the notes, a loop over the clock, a full recompute of the side input)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_tokens

from model import TransformerXL, TransformerXLConfig
from pipeline.errors import PipelineError
from pipeline.evaluate import score_pieces
from pipeline.generation.decoding import draw_textures, sample_batch
from pipeline.generation.primers import unconditional
from pipeline.model_folder import TABLE_WINDOWS, load_model, reads_texture
from pipeline.music.performance_encoding import (
    NOTE_OFF,
    NOTE_ON,
    PIECE_END,
    PIECE_START,
    STEP_S,
    TIME_SHIFT,
    VOCAB_SIZE,
    decode,
    elapsed_steps,
    encode,
    time_steps,
)
from pipeline.music.piano_state import PIANO_STATE_SIZE, piano_state
from pipeline.music.piano_state_torch import PianoState
from pipeline.music.texture import (
    FIRST_TEXTURE,
    PIECE_TEXTURE,
    PIECE_TEXTURE_SIZE,
    TEXTURE_WINDOW_S,
    TEXTURE_WINDOW_STEPS,
    TRACK_COLUMNS,
    key_steps,
    padded_tracks,
    scaled_texture,
    texture,
    texture_track,
    token_windows,
    transposed,
    window,
)
from pipeline.params import GenerateParams
from pipeline.token_folder import PieceStore
from pipeline.training.batches import device_batches
from pipeline.training.segments import SegmentStream, pitch_ranges, transpose

SIDE = PIANO_STATE_SIZE + PIECE_TEXTURE_SIZE
CIRCLE = [0, 7, 2, 9, 4, 11, 6, 1, 8, 3, 10, 5]  # the pitch classes round the circle of fifths: C, G, D, A, E, B, F#...


def place(pitch: int) -> np.ndarray:
    """A pitch's place on the circle of fifths as a unit vector, found in CIRCLE."""
    angle = CIRCLE.index(pitch % 12) * np.pi / 6
    return np.array([np.cos(angle), np.sin(angle)])


def tokens_of(onset: list[float], offset: list[float], pitch: list[int]) -> np.ndarray:
    """A piece's tokens, PIECE_START to PIECE_END, from notes at velocity 80."""
    zeros = np.zeros(len(pitch), np.int64)
    return encode(zeros, np.array(onset), np.array(offset), np.array(pitch), zeros + 80)[0].astype(np.int64)


def test_a_windows_texture_is_its_density_register_polyphony_and_durations_and_the_notes_by_its_end():
    # Window 0: 60 over [0, 1) and 64 over [0.5, 1.5), two keys at once for half a second; window 1: a chord of three
    # from 12 s to 15 s; window 2, 5 s long as the piece ends at 25 s, a note of pitch 0 over its last 0.1 s.
    track = texture_track(tokens_of([0.0, 0.5, 12.0, 12.0, 12.0, 24.9], [1.0, 1.5, 15.0, 15.0, 15.0, 25.0],
                                    [60, 64, 48, 52, 55, 0]))  # fmt: skip
    assert track.shape == (3, 5 + len(PIECE_TEXTURE))
    # notes, pitch sum and key-steps (steps times keys sounding) by each window's end
    assert track[:, :3].tolist() == [[2, 124, 200], [5, 279, 1100], [6, 279, 1110]]
    c, e, g = (np.array([np.cos(np.radians(a)), np.sin(np.radians(a))]) for a in (0, 120, 30))  # places on the circle
    np.testing.assert_allclose(track[:, 3:5], [c + e, 2 * c + 2 * e + g, 3 * c + 2 * e + g], atol=1e-6)
    density, polyphony = np.log1p(2 / 10) / np.log1p(40), np.log2(2.0 / 1.5) / 4
    np.testing.assert_allclose(track[0, 5:], [density, 2 / 12, polyphony, np.log1p(1) / np.log1p(10)], rtol=1e-6)
    want = [np.log1p(0.3) / np.log1p(40), (155 / 3 - 60) / 12, np.log2(3) / 4, np.log1p(3) / np.log1p(10)]
    np.testing.assert_allclose(track[1, 5:], want, rtol=1e-6)
    np.testing.assert_allclose(track[2, 5:], [np.log1p(1 / 5) / np.log1p(40), -5, 0, np.log1p(0.1) / np.log1p(10)],
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    assert texture_track(np.array([PIECE_START, TIME_SHIFT + 99, PIECE_END])).tolist() == [[0.0] * 9]


def test_a_track_is_the_texture_of_each_window_cut_from_the_notes():
    rng = np.random.default_rng(3)
    onset = np.sort(rng.uniform(0, 47, 300)).round(2)
    piece = tokens_of(onset.tolist(), (onset + rng.exponential(0.8, 300) + 0.01).tolist(), rng.integers(30, 100, 300))
    notes, seconds = decode(piece), elapsed_steps(piece) * STEP_S
    starts = np.arange(0, seconds, TEXTURE_WINDOW_S)
    want = [scaled_texture(texture(window(notes, a, min(TEXTURE_WINDOW_S, seconds - a)), min(TEXTURE_WINDOW_S,
            seconds - a))) for a in starts]  # fmt: skip
    track = texture_track(piece)
    np.testing.assert_allclose(track[:, 5:], want, rtol=1e-5, atol=1e-6)
    by_end = [[np.sum(notes["onset"] < a + TEXTURE_WINDOW_S - 1e-6), notes["pitch"][notes["onset"] < a + 9.999].sum()]
              for a in starts]  # fmt: skip
    np.testing.assert_array_equal(track[:, :2], by_end)
    circle = [sum((place(p) for p in notes["pitch"][notes["onset"] < a + 9.999]), np.zeros(2)) for a in starts]
    np.testing.assert_allclose(track[:, 3:5], circle, atol=1e-4)
    ends = np.minimum(np.arange(1, len(want) + 1) * TEXTURE_WINDOW_STEPS, elapsed_steps(piece))
    np.testing.assert_array_equal(track[:, 2], key_steps(piece)[ends])
    clock = 0
    for token, w in zip(piece, token_windows(piece, len(want)), strict=True):  # a plain loop over the clock
        clock += int(time_steps(np.int64(token)))
        assert w == min(clock // TEXTURE_WINDOW_STEPS, len(want) - 1)


def test_key_steps_add_up_the_keys_sounding_through_each_step_as_a_loop_over_the_tokens_does():
    rng = np.random.default_rng(5)
    events = np.r_[NOTE_ON : NOTE_ON + 4, NOTE_OFF : NOTE_OFF + 4, TIME_SHIFT : TIME_SHIFT + 40]
    for _ in range(200):  # strikes of a held key, releases of a silent one, keys held to the end
        seq = rng.choice(events, rng.integers(0, 60))
        held, want = np.zeros(128, np.int64), [0]
        for token in seq.tolist():
            want += [want[-1] + int(np.sum(held > 0)) * (k + 1) for k in range(int(time_steps(np.int64(token))))]
            if token < NOTE_OFF:
                held[token] += 1
            elif token < TIME_SHIFT:
                held[token - NOTE_OFF] = max(held[token - NOTE_OFF] - 1, 0)
        assert key_steps(seq).tolist() == want


def test_a_transposed_piece_has_the_track_that_transposed_moves_it_to():
    rng = np.random.default_rng(3)
    onset = np.concatenate([np.sort(rng.uniform(0, 8, 40)), [25.0]]).round(2)  # window 1 is empty
    piece = tokens_of(onset.tolist(), (onset + rng.uniform(0.1, 2, 41)).tolist(), rng.integers(40, 90, 41).tolist())
    ranges = pitch_ranges({"events": [{"first_id": NOTE_ON, "count": 128, "meaning": "pitch"},
                                      {"first_id": 128, "count": 128, "meaning": "pitch"}]})  # fmt: skip
    track = texture_track(piece)
    assert track[1, 5:].tolist() == [0.0] * len(PIECE_TEXTURE) and track[1, 0] == track[0, 0]
    for semitones in (-3, 2, 12):
        moved = texture_track(transpose(piece, semitones, ranges))
        np.testing.assert_allclose(transposed(track[None], np.array([semitones]))[0], moved, rtol=1e-6, atol=1e-5)
        assert moved[0, 6] != track[0, 6] and moved[0, 1] == track[0, 1] + semitones * track[0, 0]
        assert moved[:, 2].tolist() == track[:, 2].tolist()  # as many keys sound, wherever they are
        np.testing.assert_allclose(np.hypot(moved[:, 3], moved[:, 4]), np.hypot(track[:, 3], track[:, 4]), rtol=1e-5)
        assert np.allclose(moved[:, 3:5], track[:, 3:5], atol=1e-4) == (semitones == 12)  # an octave: the same key


def test_a_padded_track_carries_on_with_its_last_windows_texture_and_pace():
    track = np.array([[2, 120, 900, 1, -2, 0.1, 0.2, 0.3, 0.4], [5, 300, 1500, 3, -1, 0.5, 0.6, 0.7, 0.8]], np.float32)
    single = np.array([[4, 250, 700, 2, 1, 0.9, 0.9, 0.9, 0.9]], np.float32)
    padded = padded_tracks([track, single], windows=4)
    carried = [[8, 480, 2100, 5, 0, 0.5, 0.6, 0.7, 0.8], [11, 660, 2700, 7, 1, 0.5, 0.6, 0.7, 0.8]]
    np.testing.assert_array_equal(padded[0], np.array([*track, *carried], np.float32))
    assert padded[1, :, :5].tolist() == [[4, 250, 700, 2, 1], [8, 500, 1400, 4, 2], [12, 750, 2100, 6, 3],
                                         [16, 1000, 2800, 8, 4]]  # fmt: skip
    assert padded_tracks([track]).tolist() == [track.tolist()]


def read_track(seq: list[int] | np.ndarray, track: np.ndarray) -> np.ndarray:
    """What a model reads of a piece's track after each token of it, by a plain loop over the tokens: the texture of
    the window its clock is in, the notes still to come by that window's end, their mean pitch and their mean place
    on the circle of fifths, the keys sounding on average over the rest of the window, and the window left."""
    out, clock, notes, pitches, keys, held, circle = [], 0, 0, 0, 0, np.zeros(128, np.int64), np.zeros(2)
    for token in np.asarray(seq, np.int64).tolist():
        if token == PIECE_START:
            clock, notes, pitches, keys, held, circle = 0, 0, 0, 0, np.zeros(128, np.int64), np.zeros(2)
        shift = int(time_steps(np.int64(token)))
        clock, keys = clock + shift, keys + shift * int(np.sum(held > 0))  # the keys that sounded through the shift
        if NOTE_ON <= token < NOTE_ON + 128:
            notes, pitches, held[token - NOTE_ON] = notes + 1, pitches + token, held[token - NOTE_ON] + 1
            circle = circle + place(token - NOTE_ON)
        elif NOTE_OFF <= token < NOTE_OFF + 128:
            held[token - NOTE_OFF] = max(held[token - NOTE_OFF] - 1, 0)
        row = track[min(clock // TEXTURE_WINDOW_STEPS, len(track) - 1)]
        to_come = min(max(row[0] - notes, 0), 400)
        octaves = (min(max((row[1] - pitches) / to_come, 0), 127) - 60) / 12 if to_come else 0
        fifths = np.clip((row[3:5] - circle) / to_come, -1, 1) if to_come else np.zeros(2)
        steps_left = TEXTURE_WINDOW_STEPS - clock % TEXTURE_WINDOW_STEPS
        sounding = min(max((row[2] - keys) / steps_left, 0), 31)
        out.append([*row[5:], np.log1p(to_come) / np.log1p(400), octaves, *fifths, np.log2(1 + sounding) / 5,
                    steps_left / TEXTURE_WINDOW_STEPS])  # fmt: skip
    return np.array(out)


@pytest.fixture
def stream(tmp_path) -> SegmentStream:
    rng = np.random.default_rng(0)
    events = [50, 60, 64, 67, 178, 188, 192, 195, 340, 350, 355]  # shifts of about a second: pieces of many windows
    pieces = [rng.choice(events, int(n)) for n in rng.integers(3, 120, 30)]
    pieces += [np.array([0, 355, 127, 355, 128, 255] * 4)] * 4  # keys 0 and 127: no transposition moves these
    store = PieceStore(write_tokens(tmp_path / "tokens", {"train": pieces}), "train")
    ranges = pitch_ranges({"events": [{"first_id": 0, "count": 128, "meaning": "pitch"},
                                      {"first_id": 128, "count": 128, "meaning": "pitch"}]})  # fmt: skip
    return SegmentStream(store, 3, 16, seed=5, max_transpose=3, ranges=tuple(ranges), state_input=True,
                         texture_input=True)  # fmt: skip


def test_every_training_token_carries_its_windows_texture_as_transposed(stream):
    rows = stream.rows(0)
    side = torch.cat([batch["side"] for _, batch in device_batches(stream, torch.device("cpu"))], dim=1).numpy()
    assert side.shape[2] == SIDE
    checked = 0
    for r, row in enumerate(rows[:, : side.shape[1]]):
        np.testing.assert_array_equal(side[r, :, :PIANO_STATE_SIZE], piano_state(row))
        starts = np.flatnonzero(row == PIECE_START).tolist() + [len(row)]
        for a, b in zip(starts, starts[1:], strict=False):
            if row[b - 1] != PIECE_END:  # cut by the row's end: its texture is that of the whole piece
                continue
            track = texture_track(row[a:b])
            np.testing.assert_allclose(side[r, a:b, PIANO_STATE_SIZE:], read_track(row[a:b], track), atol=1e-5)
            checked += len(track) > 1
    assert checked > 5  # pieces of several windows
    unmoved = [row for row in rows if (row == 127).any()]
    assert unmoved and all(set(np.unique(row[row < 128])) >= {0, 127} for row in unmoved)
    assert len(np.unique(side[:, :, PIANO_STATE_SIZE + 1])) > 10  # the pieces differ, transposed or not


def test_the_exported_model_reads_the_texture_and_lists_each_unstretched_train_pieces_track(tmp_path):
    from test_train import TINY_MODEL, params

    from pipeline.train import train

    phrase = np.tile([60, 300, 188, 64, 300, 192, 67, 300, 195], 12)
    long = np.tile([60, 355, 355, 188], 200)  # 400 s: more windows than the table keeps
    tokens = write_tokens(tmp_path / "tokens", {"train": [phrase] * 19 + [long], "validation": [phrase] * 4})
    index = json.loads((tokens / "train" / "index.json").read_text())
    index["stretch"][:5] = [1.05] * 5  # these copies stay out of the table
    (tokens / "train" / "index.json").write_text(json.dumps(index))
    train(tokens, tmp_path / "c", tmp_path / "model", None, {**TINY_MODEL, "state_input": True,
          "texture_input": True}, params(steps=3))  # fmt: skip
    model = load_model(tmp_path / "model", side_size=PIANO_STATE_SIZE)
    assert model.cfg.side_size == SIDE and reads_texture(model.cfg)
    table = json.loads((tmp_path / "model" / "vocab.json").read_text())["textures"]
    store = PieceStore(tokens, "train")
    assert table["label"] == index["label"][5:] and len(table["track"]) == len(store) - 5
    assert len(table["columns"]) == TRACK_COLUMNS == len(table["track"][0][0])  # a name for each column
    for i, track in enumerate(table["track"], 5):
        np.testing.assert_allclose(track, texture_track(store.piece(i))[:TABLE_WINDOWS], atol=1e-5)
    assert len(table["track"][-1]) == TABLE_WINDOWS < len(texture_track(store.piece(len(store) - 1)))


def flat(notes: int, texture: float) -> list[float]:
    return [notes, 60.0 * notes, 300.0 * notes, notes / 2, -notes / 3, *[texture] * 4]


TABLE = {"label": [1, 2, 2, 1], "track": [[flat(5, 0.1), flat(9, 0.5)], [flat(3, 0.2)], [flat(4, 0.3), flat(6, 0.7)],
                                          [flat(7, 0.4)]]}  # fmt: skip


def firsts(tracks: np.ndarray) -> set[tuple[float, ...]]:
    """Each track's first texture feature, window by window, rounded."""
    return {tuple(round(float(x), 3) for x in t[:, FIRST_TEXTURE]) for t in tracks}


def test_a_drawn_track_is_one_of_the_composers_pieces_long_enough_and_depends_on_the_seed_only():
    seeds = list(range(40))
    drawn = draw_textures(TABLE, 2, seeds, seconds=10.0)
    assert drawn.shape == (40, 2, TRACK_COLUMNS)  # one window more than the seconds need
    assert firsts(drawn) == {(0.2, 0.2), (0.3, 0.7)}  # a short track carries on with its last window
    assert {tuple(t[:, 0]) for t in drawn} == {(3, 6), (4, 6)}  # and its notes by the end: as many again
    anyone = {(0.1, 0.5), (0.2, 0.2), (0.3, 0.7), (0.4, 0.4)}
    assert firsts(draw_textures(TABLE, 0, seeds, 10.0)) == anyone  # no composer: any piece
    assert firsts(draw_textures(TABLE, 7, seeds, 10.0)) == anyone  # a label without pieces: any piece
    assert firsts(draw_textures(TABLE, 2, seeds, 20.0)) == {(0.3, 0.7, 0.7)}  # only one is long enough
    assert firsts(draw_textures(TABLE, 2, seeds, 30.0)) == {(0.2, 0.2, 0.2, 0.2), (0.3, 0.7, 0.7, 0.7)}  # none is
    np.testing.assert_array_equal(draw_textures(TABLE, 2, seeds[5:9], 10.0), drawn[5:9])
    with pytest.raises(PipelineError, match="reads a texture, but its vocab.json lists no texture tracks"):
        draw_textures(None, 0, [1], 10.0)


def texture_model() -> TransformerXL:
    torch.manual_seed(0)
    cfg = TransformerXLConfig(VOCAB_SIZE, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16,
                              mem_len=256, side_size=SIDE, n_labels=2)  # fmt: skip
    model = TransformerXL(cfg).double().eval()
    with torch.no_grad():  # a few keys and shifts are likely, the state plays them in turn (see test_generate.py),
        # and the texture's first and third numbers favour a key each, so what is sampled depends on the texture
        model.out_bias[[60, 64, 67]] += 9.0
        model.out_bias[TIME_SHIFT + 9] += 8.0
        model.side_net.weight.normal_(0, 0.5)
        model.side_logits.weight.zero_()
        for pitch in range(128):
            model.side_logits.weight[pitch, pitch] = -30.0
            model.side_logits.weight[128 + pitch, pitch] = 4.0
            model.side_logits.weight[128 + pitch, 128 + pitch] = 400.0
        model.side_logits.weight[60, PIANO_STATE_SIZE] = 10.0
        model.side_logits.weight[67, PIANO_STATE_SIZE + 2] = 20.0
    return model


def windows_side(seq: list[int] | np.ndarray, track: np.ndarray) -> torch.Tensor:
    """The side input of a piece alone, recomputed: the numpy piano state, then what the loop reads of the track."""
    return torch.from_numpy(np.concatenate([piano_state(np.asarray(seq)), read_track(seq, track)], axis=1)[None])


def test_sampling_feeds_the_drawn_track_at_every_step_as_a_full_recompute_would():
    model = texture_model()
    p = GenerateParams(seconds=12.0, top_k=1, top_p=1.0, max_note_s=0.0, device="cpu", precision="float32")
    table = {"label": [2], "track": [[[30, 1900, 3000, 9, 2, 0.3, 0.5, 0.3, 0.3], [45, 2800, 5000, 12, 1, 0.9, 0.5, 0.1,
                                                                                0.6]]]}  # fmt: skip
    (new,), _ = sample_batch(model, unconditional(), p, [3], None, rule=False, label=2, textures=table)
    seq = [PIECE_START]
    for _ in range(len(new)):
        side = windows_side(seq, draw_textures(table, 2, [3], p.seconds)[0]).double()
        with torch.no_grad():
            logits = model(torch.tensor([seq]), side=side, labels=torch.full((1, len(seq)), 2))[0][0, -1]
        logits[[PIECE_START, PIECE_END]] = -torch.inf
        seq.append(int(logits.argmax()))
    assert new.tolist() == seq[1:] and elapsed_steps(new) >= 12 * 100  # past the first window's ten seconds
    other = {"label": [2], "track": [[[30, 1900, 3000, 9, 2, 0.3, 0.5, 0.3, 0.3], [45, 2800, 9000, 12, 1, 0.3, 0.5, 0.3,
                                                                                0.3]]]}  # fmt: skip
    (elsewhere,), _ = sample_batch(model, unconditional(), p, [3], None, rule=False, label=2, textures=other)
    assert elsewhere[: len(new) // 3].tolist() == new[: len(new) // 3].tolist()  # the same first window
    assert elsewhere.tolist() != new.tolist()  # but not the same second
    with pytest.raises(PipelineError, match="lists no texture tracks"):
        sample_batch(model, unconditional(), p, [3], None, rule=False)


def test_evaluation_scores_each_piece_with_its_own_track():
    model = texture_model()
    rng = np.random.default_rng(4)
    pieces = [np.concatenate([[PIECE_START], rng.choice([60, 62, 188, 190, 300, 350, 355], n), [PIECE_END]])
              for n in (140, 9, 70, 23)]  # fmt: skip
    scores = score_pieces(model, pieces, tgt_len=8, batch_size=3)
    assert len(texture_track(pieces[0])) > 2
    for piece, nll in zip(pieces, scores.nll, strict=True):
        with torch.no_grad():
            side = windows_side(piece[:-1], texture_track(piece)).double()
            logits, _, _ = model(torch.from_numpy(piece[None, :-1]), side=side)
        expected = -torch.log_softmax(logits, -1)[0].gather(-1, torch.from_numpy(piece[1:])[:, None])[:, 0]
        np.testing.assert_allclose(nll, expected.numpy(), rtol=1e-5, atol=1e-4)  # float32 log-softmax of logits ~250


def test_the_plan_stops_at_its_caps_and_a_piece_ahead_of_its_plan_has_nothing_to_come():
    seq = np.array([PIECE_START, 60, TIME_SHIFT + 9, 64, 188, TIME_SHIFT + 99, 67, 192])
    for row in ([1000.0, 65000.0, 1e6, 900, -900, 0.1, 0.2, 0.3, 0.4], [1.0, 500.0, 50.0, 1, 0, 0.1, 0.2, 0.3, 0.4]):
        track = np.array([row, row], np.float32)
        got = PianoState(1, "cpu", torch.from_numpy(track[None]))(torch.from_numpy(seq[None]))[0, :, PIANO_STATE_SIZE:]
        np.testing.assert_allclose(got.numpy(), read_track(seq, track), atol=1e-5)
        if row[0] == 1000.0:  # behind: the notes and keys to come read 1 at their caps, the place on the circle 1, -1
            assert got[:, 4].tolist() == [1.0] * len(seq) and got[:, 8].tolist() == [1.0] * len(seq)
            assert got[:, 6].tolist() == [1.0] * len(seq) and got[:, 7].tolist() == [-1.0] * len(seq)
    assert got[2:, 4:8].tolist() == [[0.0] * 4] * (len(seq) - 2)  # ahead: no notes to come, nor a pitch or place
    assert got[0, 8] > 0 and got[-3:, 8].tolist() == [0.0] * 3  # 50 key-steps: spent 10 steps into two keys


def test_keeping_the_first_rows_keeps_their_tracks():
    state = PianoState(3, "cpu", torch.arange(3 * 2 * 9, dtype=torch.float32).reshape(3, 2, 9))
    state(torch.tensor([[60, TIME_SHIFT + 9], [61, TIME_SHIFT + 4], [62, 63]]))
    state.keep(2)
    assert state.texture.tolist() == torch.arange(2 * 2 * 9, dtype=torch.float32).reshape(2, 2, 9).tolist()
    assert state.keys.tolist() == [10, 5]  # and their key-steps
    np.testing.assert_allclose(state.fifths.numpy(), [place(60), place(61)], atol=1e-6)  # and places on the circle


def test_one_token_at_a_time_reads_the_track_as_the_loop_does_across_a_piece_start():
    seq = np.array([PIECE_START, 60, TIME_SHIFT + 9, 64, 188, 67, PIECE_START, 62, TIME_SHIFT + 50, 66, 190])
    track = np.array([[10, 650, 400, 3, -2, 0.1, 0.2, 0.3, 0.4]] * 2, np.float32)
    state = PianoState(1, "cpu", torch.from_numpy(track[None]))
    got = torch.cat([state(torch.tensor([[t]])) for t in seq.tolist()], dim=1)[0, :, PIANO_STATE_SIZE:]
    np.testing.assert_allclose(got.numpy(), read_track(seq, track), atol=1e-5)


def test_a_state_without_a_track_keeps_no_plan_sums():
    state = PianoState(1, "cpu")
    state(torch.tensor([[60, TIME_SHIFT + 9]]))  # the chunk path
    state(torch.tensor([[64]]))  # the one-token path
    assert state.keys.tolist() == [0] and state.fifths.tolist() == [[0.0, 0.0]]
