"""An independent, deliberately plain reference reader: mido's pure-Python parser and an event loop.

It shares no code with pipeline.music.midi, so agreement between the two is evidence that both follow the
documented rules: notes paired first-in first-out per track, channel and pitch; drums (channel 10) left out; notes
of zero length dropped before the pedal is applied; note-seq's sustain rule, with events at one tick taken as pedal
presses, pedal lifts, note-ons, key releases; a sustain pedal never lifted lifted at the last key release or sustain
event; tick to seconds as pretty_midi computes it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from dataclasses import dataclass

import mido

PEDALS = {64: "sustain", 66: "sostenuto", 67: "soft"}


@dataclass
class RefNote:
    start: int
    pitch: int
    velocity: int
    key_end: int = -1
    end: int = -1
    released: bool = False


def _pedal_states(changes: list[tuple[int, int]]) -> list[tuple[int, bool]]:
    """(tick, down after it) per tick of a pedal's changes: a tick with any value below 64 leaves it up."""
    down: dict[int, bool] = {}
    for tick, value in changes:
        down[tick] = down.get(tick, True) and value >= 64
    return sorted(down.items())


def _seconds(tick: int, tempo_ticks: list[int], tempo_start: list[float], tempo_spt: list[float]) -> float:
    k = bisect.bisect_right(tempo_ticks, tick) - 1
    return tempo_start[k] + (tick - tempo_ticks[k]) * tempo_spt[k]


def read_reference(path: str) -> dict:
    """Parse a MIDI file with mido and return notes and pedal intervals in seconds, sorted as the pipeline sorts."""
    midi = mido.MidiFile(path)
    tempos: list[tuple[int, int, int]] = []  # (tick, order, microseconds per quarter)
    voices: dict[tuple[int, int], dict] = defaultdict(lambda: {"events": [], "cc": defaultdict(list)})
    order = 0
    end = 0
    for track_index, track in enumerate(midi.tracks):
        tick = 0
        for msg in track:
            tick += msg.time
            order += 1
            if msg.type == "set_tempo":
                tempos.append((tick, order, msg.tempo))
            if not hasattr(msg, "channel") or msg.channel == 9:
                continue
            voice = voices[(track_index, msg.channel)]
            if msg.type == "note_on" and msg.velocity > 0:
                voice["events"].append((tick, "on", msg.note, msg.velocity))
            elif msg.type in ("note_off", "note_on"):
                voice["events"].append((tick, "off", msg.note, 0))
            elif msg.type == "control_change":
                end = max(end, tick)
                if msg.control in PEDALS:
                    voice["cc"][msg.control].append((tick, msg.value))

    notes: list[RefNote] = []
    pedals: list[tuple[int, int, int]] = []  # (number, start, stop)
    per_voice = []
    for voice in voices.values():
        open_notes: dict[int, deque[RefNote]] = defaultdict(deque)
        voice_notes = []
        for tick, kind, pitch, velocity in voice["events"]:
            if kind == "on":
                note = RefNote(tick, pitch, velocity)
                open_notes[pitch].append(note)
                voice_notes.append(note)
            elif open_notes[pitch]:
                note = open_notes[pitch].popleft()
                note.key_end = tick
                end = max(end, tick)
        # A note never released is dropped; so is one released at the tick it was struck, before any pedal.
        voice_notes = [n for n in voice_notes if n.key_end > n.start]
        per_voice.append((voice, voice_notes))

    releases = [n.key_end for _, voice_notes in per_voice for n in voice_notes]
    sustain_end = max(releases + [tick for voice, _ in per_voice for tick, _ in voice["cc"][64]], default=0)
    for voice, voice_notes in per_voice:
        for number, changes in voice["cc"].items():
            down_since = None
            for tick, down in _pedal_states(changes):
                if down and down_since is None:
                    down_since = tick
                elif not down and down_since is not None:
                    pedals.append((number, down_since, tick))
                    down_since = None
            if down_since is not None:
                pedals.append((number, down_since, max(sustain_end if number == 64 else end, down_since)))

        # note-seq's order of events at one tick: pedal presses, pedal lifts, note-ons, key releases.
        events = [(tick, 0 if value >= 64 else 1, None) for tick, value in voice["cc"][64]]
        events += [(n.start, 2, n) for n in voice_notes] + [(n.key_end, 3, n) for n in voice_notes]
        events.sort(key=lambda e: (e[0], e[1]))
        sustain, active, removed = False, [], []
        for tick, kind, item in events:
            if kind == 0:
                sustain = True
            elif kind == 1:
                sustain = False
                for n in [n for n in active if n.key_end < tick]:
                    n.end = tick
                    active.remove(n)
            elif kind == 2:
                if sustain:
                    for n in [n for n in active if n.pitch == item.pitch]:
                        n.end = tick
                        active.remove(n)
                        if n.start == tick:
                            removed.append(n)
                active.append(item)
            elif not sustain and item in active:
                item.end = tick
                active.remove(item)
        for n in active:
            n.end = sustain_end
        notes.extend(n for n in voice_notes if not any(n is r for r in removed))

    # pretty_midi's tempo map: 120 bpm until set, a change to the same rate dropped, times accumulated per segment.
    tempos.sort()
    tempo_ticks, tempo_spt = [0], [60.0 / (120.0 * midi.ticks_per_beat)]
    for tick, _, mspq in tempos:
        spt = 60.0 / ((6e7 / mspq) * midi.ticks_per_beat)
        if tick == 0:
            tempo_spt = [spt]
        elif spt != tempo_spt[-1]:
            tempo_ticks.append(tick)
            tempo_spt.append(spt)
    tempo_start = [0.0]
    for i in range(1, len(tempo_ticks)):
        tempo_start.append(tempo_start[-1] + (tempo_ticks[i] - tempo_ticks[i - 1]) * tempo_spt[i - 1])

    def sec(tick: int) -> float:
        return _seconds(tick, tempo_ticks, tempo_start, tempo_spt)

    notes = sorted(notes, key=lambda n: (n.start, n.pitch))
    pedals.sort(key=lambda p: (p[1], p[0]))
    return {
        "onset": [sec(n.start) for n in notes],
        "offset": [sec(n.end) for n in notes],
        "key_offset": [sec(n.key_end) for n in notes],
        "pitch": [n.pitch for n in notes],
        "velocity": [n.velocity for n in notes],
        "pedal": [p[0] for p in pedals],
        "pedal_onset": [sec(p[1]) for p in pedals],
        "pedal_offset": [sec(p[2]) for p in pedals],
        "duration": sec(end),
    }
