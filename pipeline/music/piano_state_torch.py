"""The piano state of pipeline/music/piano_state.py in torch, on the device that trains, evaluates or samples.

The same features, equal to the numpy reference bit for bit in float32, computed where the tokens already are: no
host round trip and no host sync (nothing reads a tensor's value on the host), and a fixed number of torch operations
per call, whatever its length up to CHUNK positions. The numpy module stays the reference that tests compare to, and
the music library used alone still loads no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import torch

from pipeline.music.performance_encoding import NOTE_OFF, NOTE_ON, PIECE_START, TIME_SHIFT, VOCAB_SIZE, time_steps
from pipeline.music.piano_state import (
    CHUNK,
    CLOCK_S,
    CLOCK_TABLE,
    HELD_STEPS,
    HELD_TABLE,
    NOTES_CAP,
    NOTES_TABLE,
    PIANO_STATE_SIZE,
    PITCHES,
    REGISTER_TABLE,
    STEPS_PER_S,
)
from pipeline.music.texture import (
    FIFTHS_X_BY_END,
    FIFTHS_Y_BY_END,
    FIRST_TEXTURE,
    KEYS_BY_END,
    MIDDLE_C,
    NOTES_BY_END,
    PIECE_TEXTURE_SIZE,
    PITCH_BY_END,
    PLAN_KEYS,
    PLAN_NOTES,
    TEXTURE_WINDOW_STEPS,
    fifths,
)


def _along_time(x: torch.Tensor, scan: Callable) -> torch.Tensor:
    """`scan` (torch.cummax or torch.cummin) of x [rows, time, keys] over time, run with time as the innermost
    dimension: on a CPU a scan along a strided dimension takes about four times as long."""
    return scan(x.transpose(1, 2).contiguous(), dim=2).values.transpose(1, 2)


class Tables(NamedTuple):
    """Per token id: its change to each key's open strikes [VOCAB_SIZE, 128] (+1 a strike, -1 a release), the time
    steps it moves the clock, whether it silences every key, whether it strikes, the pitch it strikes and its place
    on the circle of fifths (0 for the rest): a lookup each, so that a step is a handful of kernels. Then the numpy
    module's feature tables, so that the device looks the values up rather than computing them, the same bits as the
    reference everywhere."""

    delta: torch.Tensor
    shift: torch.Tensor
    reset: torch.Tensor
    strike: torch.Tensor
    pitch: torch.Tensor
    fifths: torch.Tensor
    held: torch.Tensor
    clock: torch.Tensor
    register: torch.Tensor
    notes: torch.Tensor


@cache
def _tables(device: torch.device) -> Tables:
    """The lookup tables on `device`."""
    ids = torch.arange(VOCAB_SIZE)
    delta = torch.zeros(VOCAB_SIZE, PITCHES, dtype=torch.long)
    delta[ids[:NOTE_OFF], ids[:NOTE_OFF]] = 1
    delta[ids[NOTE_OFF:TIME_SHIFT], ids[NOTE_OFF:TIME_SHIFT] - NOTE_OFF] = -1
    strike = ids < NOTE_OFF
    features = (torch.from_numpy(t) for t in (HELD_TABLE, CLOCK_TABLE, REGISTER_TABLE, NOTES_TABLE))
    circle = torch.where(strike[:, None], torch.from_numpy(fifths(ids - NOTE_ON)).float(), 0.0)
    pitch = torch.where(strike, ids - NOTE_ON, 0)
    tables = delta, time_steps(ids), ids == PIECE_START, strike.long(), pitch, circle, *features
    return Tables(*(table.to(device) for table in tables))


class PianoState:
    """The state of `rows` pianos on `device`, each starting silent; call it with successive tokens [rows, time].
    Given `texture`, each row's texture track [rows, windows, TRACK_COLUMNS] (pipeline/music/texture.py), the
    features end with the window of it that the row's piece clock is in (the last from its start on): what evaluation
    and sampling give a model that reads a texture, one piece per row."""

    def __init__(self, rows: int, device: torch.device | str = "cpu", texture: torch.Tensor | None = None) -> None:
        self.held = torch.zeros(rows, PITCHES, dtype=torch.long, device=device)  # open strikes per key
        self.onset = torch.zeros(rows, PITCHES, dtype=torch.long, device=device)  # the step of each key's latest strike
        self.clock = torch.zeros(rows, dtype=torch.long, device=device)  # steps since the start
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # the clock at the latest PIECE_START
        self.notes = torch.zeros(rows, dtype=torch.long, device=device)  # strikes since then
        self.pitches = torch.zeros(rows, dtype=torch.long, device=device)  # and the sum of their pitches
        self.keys = torch.zeros(rows, dtype=torch.long, device=device)  # and the key-steps: steps times keys sounding
        self.fifths = torch.zeros(rows, 2, device=device)  # and the sum of the strikes' places on the circle of fifths
        self._t = _tables(torch.device(device))
        self.texture = texture  # [rows, windows, n]: each row's texture track, read by the piece clock (or None)

    def keep(self, rows: int) -> None:
        """Keep the first `rows` pianos only (rows that have ended drop out of a batch)."""
        self.held, self.onset, self.clock = self.held[:rows], self.onset[:rows], self.clock[:rows]
        self.start, self.notes, self.pitches = self.start[:rows], self.notes[:rows], self.pitches[:rows]
        self.keys, self.fifths = self.keys[:rows], self.fifths[:rows]
        self.texture = None if self.texture is None else self.texture[:rows]

    def steps_held(self) -> torch.Tensor:
        """How many steps each key has sounded since its latest strike [rows, 128]; 0 for a silent key."""
        return torch.where(self.held > 0, self.clock[:, None] - self.onset, 0)

    def __call__(self, tokens: torch.Tensor, plan: torch.Tensor | None = None) -> torch.Tensor:
        """Advance by tokens [rows, time]; return the features after each [rows, time, PIANO_STATE_SIZE] (float32),
        then, for a state with texture tracks or given `plan` (each position's row of its piece's track [rows, time,
        columns], as training lays them), what the model reads of its track."""
        if tokens.size(1) == 1:  # a sampled token: a third of the operations
            return self._step(tokens[:, 0].long(), None if plan is None else plan[:, 0])[:, None]
        if tokens.size(1) <= CHUNK:  # a segment: one pass
            return self._chunk(tokens.long(), plan)
        parts = tokens.split(CHUNK, dim=1)
        plans = [None] * len(parts) if plan is None else plan.split(CHUNK, dim=1)
        return torch.cat([self._chunk(part.long(), p) for part, p in zip(parts, plans, strict=True)], dim=1)

    def _step(self, t: torch.Tensor, plan: torch.Tensor | None) -> torch.Tensor:
        """One token per row [rows]: the numpy reference's `step`."""
        delta, reset = self._t.delta[t], self._t.reset[t]  # [rows, 128], [rows]
        if self.reads_track(plan):  # what only a track's plan reads: the key-steps, then the places on the circle
            self.keys = torch.where(reset, 0, self.keys) + self._t.shift[t] * (self.held > 0).sum(1)
            self.fifths = torch.where(reset[:, None], 0.0, self.fifths) + self._t.fifths[t]
        self.clock = self.clock + self._t.shift[t]
        self.held = (torch.where(reset[:, None], 0, self.held) + delta).clamp(min=0)
        self.onset = torch.where(delta > 0, self.clock[:, None], self.onset)
        self.start = torch.where(reset, self.clock, self.start)
        self.notes = torch.where(reset, 0, self.notes) + self._t.strike[t]
        self.pitches = torch.where(reset, 0, self.pitches) + self._t.pitch[t]
        piece = (self.clock - self.start, self.notes, self.pitches, self.keys)
        return self._features(self.held, self.onset, self.clock[:, None], *(x[:, None] for x in piece), self.fifths,
                              plan)  # fmt: skip

    def _chunk(self, t: torch.Tensor, plan: torch.Tensor | None) -> torch.Tensor:
        """The numpy reference's `_chunk` (which explains the arithmetic), one torch operation for each of its own."""
        rows, time = t.shape
        if time == 0:
            return torch.zeros(rows, 0, self.size(plan), device=t.device)
        span = torch.arange(time, device=t.device)
        clock = self.clock[:, None] + self._t.shift[t].cumsum(1)  # [rows, time]
        delta = self._t.delta[t]  # [rows, time, 128]: +1 a strike, -1 a release
        reset = self._t.reset[t]
        group = reset.long().cumsum(1)[..., None]
        total = self.held[:, None] + delta.cumsum(1)
        last_reset = torch.where(reset, span, -1).cummax(1).values  # [rows, time]
        at_reset = total.gather(1, last_reset.clamp(min=0)[..., None].expand(-1, -1, PITCHES))
        running = total - torch.where((last_reset >= 0)[..., None], at_reset, 0)
        big = 2 * (running.abs().amax() + 1)  # a tensor: its value never comes to the host
        lowest = _along_time(running - group * big, torch.cummin) + group * big
        held = running - lowest.clamp(max=0)
        last_strike = _along_time(torch.where(delta > 0, span[None, :, None], -1), torch.cummax)
        struck_at = clock.gather(1, last_strike.clamp(min=0).reshape(rows, -1)).reshape(rows, time, PITCHES)
        onset = torch.where(last_strike > last_reset[..., None], struck_at, self.onset[:, None])
        at_reset, restarted = last_reset.clamp(min=0), last_reset >= 0
        start = torch.where(restarted, clock.gather(1, at_reset), self.start[:, None])
        notes = self.notes[:, None] + self._t.strike[t].cumsum(1)
        pitches = self.pitches[:, None] + self._t.pitch[t].cumsum(1)
        notes, pitches = (torch.where(restarted, x - x.gather(1, at_reset), x) for x in (notes, pitches))
        keys, circle = self._plan_sums(t, held, restarted, at_reset) if self.reads_track(plan) else (None, None)
        self.held, self.onset, self.clock = held[:, -1], onset[:, -1], clock[:, -1]
        self.start, self.notes, self.pitches = start[:, -1], notes[:, -1], pitches[:, -1]
        piece = (clock - start, notes, pitches)
        return self._features(held, onset, clock[..., None], *(x[..., None] for x in piece), keys, circle, plan)

    def _plan_sums(
        self, t: torch.Tensor, held: torch.Tensor, restarted: torch.Tensor, at_reset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What only a track's plan reads, after each token of `t` [rows, time] since its piece's start: the key-steps
        [rows, time, 1] and the sum of the strikes' places on the circle of fifths [rows, time, 2] (kept for the
        next call), given `_chunk`'s open strikes after each token and its latest PIECE_START."""
        sounding = torch.cat([(self.held > 0).sum(1, keepdim=True), (held[:, :-1] > 0).sum(2)], dim=1)  # before each
        keys = (self.keys[:, None] + (self._t.shift[t] * sounding).cumsum(1))[..., None]
        circle = self.fifths[:, None] + self._t.fifths[t].cumsum(1)
        index = at_reset[..., None]
        keys, circle = (
            torch.where(restarted[..., None], x - x.gather(1, index.expand_as(x)), x) for x in (keys, circle)
        )
        self.keys, self.fifths = keys[:, -1, 0], circle[:, -1]
        return keys, circle

    def reads_track(self, plan: torch.Tensor | None) -> bool:
        """Whether this call's features end with a track's plan: given one, or with the state's texture tracks."""
        return plan is not None or self.texture is not None

    def size(self, plan: torch.Tensor | None = None) -> int:
        """Features per position: the piano state's, and what the model reads of a track when there is one."""
        return PIANO_STATE_SIZE + (PIECE_TEXTURE_SIZE if self.reads_track(plan) else 0)

    def _features(self, held: torch.Tensor, onset: torch.Tensor, clock: torch.Tensor, elapsed: torch.Tensor,
                  notes: torch.Tensor, pitches: torch.Tensor, keys: torch.Tensor | None,
                  circle: torch.Tensor | None, plan: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        sounding = held > 0
        steps = torch.where(sounding, clock - onset, 0).clamp(max=HELD_STEPS)
        seconds = torch.div(elapsed, STEPS_PER_S, rounding_mode="floor").clamp(max=CLOCK_S)
        register = torch.div(4 * pitches, notes.clamp(min=1), rounding_mode="floor")
        piece = self._t.clock[seconds], self._t.register[register], self._t.notes[notes.clamp(max=NOTES_CAP)]
        state = torch.cat([sounding.float(), self._t.held[steps], *piece], dim=-1)
        if not self.reads_track(plan):
            return state
        if plan is None:  # the row's track, read by its piece clock (its last window from that window's start on)
            last = self.texture.size(1) - 1
            window = torch.div(elapsed[..., 0], TEXTURE_WINDOW_STEPS, rounding_mode="floor").clamp(max=last)
            rows = torch.arange(window.size(0), device=window.device).view(-1, *[1] * (window.dim() - 1))
            plan = self.texture[rows, window]
        return torch.cat([state, _plan_features(plan, elapsed, notes, pitches, keys, circle)], dim=-1)


def _plan_features(plan: torch.Tensor, elapsed: torch.Tensor, notes: torch.Tensor, pitches: torch.Tensor,
                   keys: torch.Tensor, circle: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """What a model reads of its texture track [..., PIECE_TEXTURE_SIZE], given the track's row of the window the
    piece clock is in [..., columns] and the piece's time steps, strikes, pitch sum and key-steps so far [..., 1] and
    its strikes' places on the circle of fifths, summed [..., 2]: the window's texture, then the notes to come by its
    end (log scale, 1 from PLAN_NOTES on; none once the piece is ahead of its plan), their mean pitch in octaves from
    middle C and their mean place on the circle of fifths (each 0 with none to come), the keys sounding on average
    over the rest of the window (log2(1 + keys) / 5, capped at PLAN_KEYS; none once the piece has held more than its
    plan) and the share of the window left."""
    to_come = (plan[..., NOTES_BY_END, None] - notes).clamp(0, PLAN_NOTES)
    pitch = ((plan[..., PITCH_BY_END, None] - pitches) / to_come.clamp(min=1)).clamp(0, 127)
    place = ((plan[..., FIFTHS_X_BY_END : FIFTHS_Y_BY_END + 1] - circle) / to_come.clamp(min=1)).clamp(-1, 1)
    steps_left = TEXTURE_WINDOW_STEPS - elapsed % TEXTURE_WINDOW_STEPS
    sounding = ((plan[..., KEYS_BY_END, None] - keys) / steps_left).clamp(0, PLAN_KEYS)
    octaves = (pitch.float() - MIDDLE_C) / 12 * (to_come > 0)
    notes_to_come = torch.log1p(to_come.float()) / math.log1p(PLAN_NOTES)
    keys_to_come = torch.log2(1 + sounding.float()) / math.log2(1 + PLAN_KEYS)
    left = (steps_left / TEXTURE_WINDOW_STEPS).float()
    plans = notes_to_come, octaves, place * (to_come > 0), keys_to_come, left
    return torch.cat([plan[..., FIRST_TEXTURE:], *plans], dim=-1)
