"""MIDI files written with mido, read by the parse stage's reader, against tables worked out by hand."""

from __future__ import annotations

import mido
import numpy as np
import pytest
from conftest import note, pedal, tempo, write_midi
from reference_midi import read_reference

from pipeline.music.midi import (
    TooLong,
    UnreadableMidi,
    cut_notes,
    pedal_intervals,
    read_performance,
    tick_seconds,
)


def notes_of(perf) -> list[tuple]:  # noqa: ANN001
    """(onset, offset, key_offset, pitch, velocity) rows, rounded to the microsecond."""
    return [
        (round(a, 6), round(b, 6), round(c, 6), int(p), int(v))
        for a, b, c, p, v in zip(perf.onset, perf.offset, perf.key_offset, perf.pitch, perf.velocity, strict=True)
    ]


def assert_matches_reference(path) -> None:  # noqa: ANN001
    """The symusic reader and the independent mido reader agree exactly on notes and pedals."""
    perf, ref = read_performance(path), read_reference(str(path))
    for key in ("onset", "offset", "key_offset", "pedal_onset", "pedal_offset"):
        np.testing.assert_allclose(getattr(perf, key), ref[key], rtol=0, atol=1e-9, err_msg=key)
    for key in ("pitch", "velocity", "pedal"):
        np.testing.assert_array_equal(getattr(perf, key), ref[key], err_msg=key)


def test_tempo_change_converts_ticks_to_seconds(tmp_path):
    # 960 ticks at 0.5 s per quarter, then 1 s per quarter from tick 960.
    path = write_midi(
        tmp_path / "t.mid",
        [
            [tempo(0, 500_000), tempo(960, 1_000_000)],
            note(0, 480, 60, 50) + note(960, 1440, 62, 70) + note(1200, 1920, 64, 90),
        ],
    )
    perf = read_performance(path)
    assert notes_of(perf) == [(0.0, 0.5, 0.5, 60, 50), (1.0, 2.0, 2.0, 62, 70), (1.5, 3.0, 3.0, 64, 90)]
    assert perf.duration == pytest.approx(3.0)
    assert_matches_reference(path)


def test_two_tracks_are_merged_in_onset_order(tmp_path):
    path = write_midi(
        tmp_path / "t.mid",
        [
            [tempo(0, 500_000)],
            note(0, 480, 72) + note(960, 1440, 74),
            note(480, 960, 48, 30) + note(960, 1200, 50, 31),
        ],
    )
    perf = read_performance(path)
    assert notes_of(perf) == [
        (0.0, 0.5, 0.5, 72, 64),
        (0.5, 1.0, 1.0, 48, 30),
        (1.0, 1.25, 1.25, 50, 31),
        (1.0, 1.5, 1.5, 74, 64),
    ]
    assert_matches_reference(path)


def test_overlapping_notes_of_one_pitch_pair_first_in_first_out(tmp_path):
    events = [
        (0, mido.Message("note_on", note=60, velocity=10)),
        (240, mido.Message("note_on", note=60, velocity=20)),
        (480, mido.Message("note_off", note=60)),
        (720, mido.Message("note_off", note=60)),
    ]
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], events])
    assert notes_of(read_performance(path)) == [(0.0, 0.5, 0.5, 60, 10), (0.25, 0.75, 0.75, 60, 20)]
    assert_matches_reference(path)


def test_sustain_pedal_holds_a_note_past_its_release(tmp_path):
    # Pedal down from tick 240 to 1440: the note released at 480 sounds on to 1440; the note released
    # after the pedal lifts keeps its own release; a note released before the pedal goes down is untouched.
    path = write_midi(
        tmp_path / "t.mid",
        [
            [tempo(0, 500_000)],
            [
                *note(0, 120, 55),
                pedal(240, 100),
                *note(240, 480, 60),
                *note(960, 1920, 64),
                pedal(1440, 0),
            ],
        ],
    )
    perf = read_performance(path)
    assert notes_of(perf) == [(0.0, 0.125, 0.125, 55, 64), (0.25, 1.5, 0.5, 60, 64), (1.0, 2.0, 2.0, 64, 64)]
    assert list(perf.pedal) == [64]
    assert (perf.pedal_onset[0], perf.pedal_offset[0]) == (0.25, 1.5)
    assert_matches_reference(path)


def test_sustained_note_ends_when_its_pitch_strikes_again(tmp_path):
    path = write_midi(
        tmp_path / "t.mid",
        [
            [tempo(0, 500_000)],
            [
                pedal(0, 127),
                *note(0, 240, 60),
                *note(720, 960, 60, 80),
                pedal(1920, 0),
                *note(1920, 2400, 60, 90),
            ],
        ],
    )
    assert notes_of(read_performance(path)) == [
        (0.0, 0.75, 0.25, 60, 64),
        (0.75, 2.0, 1.0, 60, 80),
        (2.0, 2.5, 2.5, 60, 90),
    ]
    assert_matches_reference(path)


def test_soft_and_sostenuto_pedals_are_recorded(tmp_path):
    path = write_midi(
        tmp_path / "t.mid",
        [
            [tempo(0, 500_000)],
            [
                *note(0, 960, 60),
                pedal(0, 127, 67),
                pedal(480, 0, 67),
                pedal(240, 100, 66),
                pedal(720, 10, 66),
            ],
        ],
    )
    perf = read_performance(path)
    assert list(zip(perf.pedal.tolist(), perf.pedal_onset, perf.pedal_offset, strict=True)) == [
        (67, 0.0, 0.5),
        (66, 0.25, 0.75),
    ]
    assert notes_of(perf) == [(0.0, 1.0, 1.0, 60, 64)]  # only the sustain pedal lengthens notes


def test_velocity_zero_note_on_ends_a_note(tmp_path):
    events = [
        (0, mido.Message("note_on", note=60, velocity=40)),
        (480, mido.Message("note_on", note=60, velocity=0)),
        (480, mido.Message("note_on", note=62, velocity=50)),
        (960, mido.Message("note_on", note=62, velocity=0)),
    ]
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], events])
    assert notes_of(read_performance(path)) == [(0.0, 0.5, 0.5, 60, 40), (0.5, 1.0, 1.0, 62, 50)]
    assert_matches_reference(path)


def test_drums_are_left_out(tmp_path):
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], note(0, 480, 60) + note(0, 480, 36, channel=9)])
    assert [int(p) for p in read_performance(path).pitch] == [60]


def test_notes_hours_apart_are_refused(tmp_path):
    path = write_midi(
        tmp_path / "t.mid",
        [[tempo(0, 500_000)], note(0, 480, 60) + note(480 * 2 * 3 * 3600, 480 * 2 * 3 * 3600 + 480, 62)],
    )
    with pytest.raises(TooLong, match=r"^events span 10800 s, more than the 7200 s allowed$"):
        read_performance(path, max_duration=7200)
    assert len(read_performance(path, max_duration=10801).onset) == 2


def test_a_file_without_notes_is_refused(tmp_path):
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], [pedal(0, 127)]])
    with pytest.raises(UnreadableMidi, match="no notes"):
        read_performance(path)


@pytest.mark.parametrize(
    "content", [b"", b"MThd", b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0" + bytes(range(256)) * 4]
)
def test_corrupt_bytes_raise_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.mid"
    path.write_bytes(content)
    with pytest.raises(UnreadableMidi) as info:
        read_performance(path)
    assert str(info.value)


def test_tick_seconds_against_a_hand_computed_tempo_map():
    # 480 tpq; 0.5 s/quarter to tick 480, 0.25 s/quarter to 1440, then 1 s/quarter.
    seconds = tick_seconds(np.array([0, 240, 480, 960, 1440, 1920]), [0, 480, 1440], [500_000, 250_000, 1_000_000], 480)
    np.testing.assert_allclose(seconds, [0.0, 0.25, 0.5, 0.75, 1.0, 2.0])


def test_pedal_intervals_a_lift_at_a_tick_wins_and_an_unlifted_pedal_ends_at_the_given_end():
    # note-seq applies the presses at a tick before its lifts, whatever order the file has them in.
    ticks = np.array([0, 10, 10, 20, 30, 30, 40, 40, 50])
    values = np.array([100, 0, 90, 0, 10, 127, 64, 127, 100])
    starts, stops = pedal_intervals(ticks, values, end=99)
    assert starts.tolist() == [0, 40] and stops.tolist() == [10, 99]


@pytest.mark.parametrize(
    "tempos", [[tempo(0, 512_820)], [tempo(0, 437_500), tempo(1000, 512_819), tempo(2500, 437_500)]]
)
def test_seconds_are_the_very_floats_pretty_midi_gives(tmp_path, tempos):
    # Magenta reads MIDI with pretty_midi; a time one ulp away can round to the other 10 ms step at a half step.
    import pretty_midi

    events = [m for k in range(60) for m in note(k * 61, k * 61 + 700 + k, 40 + k)]
    path = write_midi(tmp_path / "t.mid", [tempos, events], tpq=480)
    perf = read_performance(path)
    theirs = sorted((n.start, n.pitch, n.end) for n in pretty_midi.PrettyMIDI(str(path)).instruments[0].notes)
    assert perf.onset.tolist() == [n[0] for n in theirs]  # exactly, not approximately
    assert perf.key_offset.tolist() == [n[2] for n in theirs]
    assert not np.array_equal(perf.onset, np.arange(60) * 61 * (tempos[0][1].tempo / 480e6))  # the other formula


def test_a_key_struck_and_released_at_one_tick_is_dropped_even_under_the_pedal(tmp_path):
    events = [pedal(0, 127), (96, mido.Message("note_on", note=60)), (96, mido.Message("note_off", note=60))]
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], events + note(200, 400, 62) + [pedal(960, 0)]])
    assert notes_of(read_performance(path)) == [(0.208333, 1.0, 0.416667, 62, 64)]
    assert_matches_reference(path)


def test_strikes_of_one_pitch_at_one_tick_under_the_pedal_leave_the_last(tmp_path):
    events = [pedal(0, 100), (100, mido.Message("note_on", note=64, velocity=20))]
    events += [(100, mido.Message("note_on", note=64, velocity=100)), *note(200, 300, 60), pedal(600, 0)]
    events += [(300, mido.Message("note_off", note=64)), (310, mido.Message("note_off", note=64))]
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], events])
    assert notes_of(read_performance(path)) == [(0.104167, 0.625, 0.322917, 64, 100), (0.208333, 0.625, 0.3125, 60, 64)]
    assert_matches_reference(path)


def test_an_unlifted_sustain_pedal_ends_at_the_last_release_or_sustain_event(tmp_path):
    # The soft pedal's event at tick 2000 comes later, but only notes and sustain events count, as in note-seq.
    events = [pedal(0, 127), *note(10, 200, 60), *note(250, 300, 64), pedal(500, 127), pedal(2000, 127, 67)]
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], events], tpq=500)
    perf = read_performance(path)
    assert perf.offset.tolist() == [0.5, 0.5]
    assert perf.duration == 2.0
    assert_matches_reference(path)


def test_a_cut_keeps_the_notes_struck_before_it_and_ends_them_there():
    notes = {
        "onset": np.array([0.0, 1.0, 1.5, 2.0, 2.5]),
        "offset": np.array([0.5, 3.0, 1.9, 2.2, 3.0]),
        "pitch": np.array([60, 62, 64, 65, 67]),
        "velocity": np.array([10, 20, 30, 40, 50]),
    }
    cut = cut_notes(notes, 2.0)
    assert cut["pitch"].tolist() == [60, 62, 64]  # a note struck exactly at the cut belongs to what follows
    assert cut["onset"].tolist() == [0.0, 1.0, 1.5] and cut["velocity"].tolist() == [10, 20, 30]
    assert cut["offset"].tolist() == [0.5, 2.0, 1.9]
    assert notes["offset"].tolist() == [0.5, 3.0, 1.9, 2.2, 3.0]  # the input is left as it was


def test_too_long_is_an_unreadable_file(tmp_path):
    # Every reader of MIDI files (parse, a primer, the report's samples) turns UnreadableMidi into a one-line error.
    path = write_midi(tmp_path / "t.mid", [[tempo(0, 500_000)], note(0, 480, 60) + note(960 * 8000, 960 * 8001, 62)])
    with pytest.raises(UnreadableMidi, match="more than the 7200 s allowed"):
        read_performance(path)
