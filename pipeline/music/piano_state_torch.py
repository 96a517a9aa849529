"""The piano state of pipeline/music/piano_state.py in torch, on the device that trains, evaluates or samples.

The same features, equal to the numpy reference bit for bit in float32, computed where the tokens already are: no
host round trip and no host sync (nothing reads a tensor's value on the host), and a fixed number of torch operations
per call, whatever its length up to CHUNK positions. The numpy module stays the reference that tests compare to, and
the music library used alone still loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch

from pipeline.music.performance_encoding import NOTE_OFF, PIECE_START, TIME_SHIFT, VOCAB_SIZE, time_steps
from pipeline.music.piano_state import CHUNK, HELD_STEPS, HELD_TABLE, PITCHES


def _along_time(x: torch.Tensor, scan: Callable) -> torch.Tensor:
    """`scan` (torch.cummax or torch.cummin) of x [rows, time, keys] over time, run with time as the innermost
    dimension: on a CPU a scan along a strided dimension takes about four times as long."""
    return scan(x.transpose(1, 2).contiguous(), dim=2).values.transpose(1, 2)


@cache
def _tables(device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per token id, on `device`: its change to each key's open strikes [VOCAB_SIZE, 128] (+1 a strike, -1 a
    release), the time steps it moves the clock, and whether it silences every key (a lookup each, so that a step
    is a handful of kernels); and the held-time feature of each step count (the numpy module's HELD_TABLE), so that
    the device looks the values up rather than computing them, the same bits as the reference everywhere."""
    ids = torch.arange(VOCAB_SIZE)
    delta = torch.zeros(VOCAB_SIZE, PITCHES, dtype=torch.long)
    delta[ids[:NOTE_OFF], ids[:NOTE_OFF]] = 1
    delta[ids[NOTE_OFF:TIME_SHIFT], ids[NOTE_OFF:TIME_SHIFT] - NOTE_OFF] = -1
    shift = time_steps(ids)
    held_table = torch.from_numpy(HELD_TABLE)
    return delta.to(device), shift.to(device), (ids == PIECE_START).to(device), held_table.to(device)


class PianoState:
    """The state of `rows` pianos on `device`, each starting silent; call it with successive tokens [rows, time]."""

    def __init__(self, rows: int, device: torch.device | str = "cpu") -> None:
        self.held = torch.zeros(rows, PITCHES, dtype=torch.long, device=device)  # open strikes per key
        self.onset = torch.zeros(rows, PITCHES, dtype=torch.long, device=device)  # the step of each key's latest strike
        self.clock = torch.zeros(rows, dtype=torch.long, device=device)  # steps since the start
        self._delta, self._shift, self._reset, self._held_table = _tables(torch.device(device))

    def keep(self, rows: int) -> None:
        """Keep the first `rows` pianos only (rows that have ended drop out of a batch)."""
        self.held, self.onset, self.clock = self.held[:rows], self.onset[:rows], self.clock[:rows]

    def steps_held(self) -> torch.Tensor:
        """How many steps each key has sounded since its latest strike [rows, 128]; 0 for a silent key."""
        return torch.where(self.held > 0, self.clock[:, None] - self.onset, 0)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Advance by tokens [rows, time]; return the features after each [rows, time, PIANO_STATE_SIZE] (float32)."""
        if tokens.size(1) == 1:  # a sampled token: a third of the operations
            return self._step(tokens[:, 0].long())[:, None]
        if tokens.size(1) <= CHUNK:  # a segment: one pass
            return self._chunk(tokens.long())
        return torch.cat([self._chunk(part.long()) for part in tokens.split(CHUNK, dim=1)], dim=1)

    def _step(self, t: torch.Tensor) -> torch.Tensor:
        """One token per row [rows]: the numpy reference's `step`."""
        delta = self._delta[t]  # [rows, 128]
        self.clock = self.clock + self._shift[t]
        self.held = (torch.where(self._reset[t][:, None], 0, self.held) + delta).clamp(min=0)
        self.onset = torch.where(delta > 0, self.clock[:, None], self.onset)
        return self._features(self.held, self.onset, self.clock[:, None])

    def _chunk(self, t: torch.Tensor) -> torch.Tensor:
        """The numpy reference's `_chunk` (which explains the arithmetic), one torch operation for each of its own."""
        rows, time = t.shape
        if time == 0:
            return torch.zeros(rows, 0, 2 * PITCHES, device=t.device)
        span = torch.arange(time, device=t.device)
        clock = self.clock[:, None] + self._shift[t].cumsum(1)  # [rows, time]
        delta = self._delta[t]  # [rows, time, 128]: +1 a strike, -1 a release
        reset = self._reset[t]
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
        self.held, self.onset, self.clock = held[:, -1], onset[:, -1], clock[:, -1]
        return self._features(held, onset, clock[..., None])

    def _features(self, held: torch.Tensor, onset: torch.Tensor, clock: torch.Tensor) -> torch.Tensor:
        sounding = held > 0
        steps = torch.where(sounding, clock - onset, 0).clamp(max=HELD_STEPS)
        return torch.cat([sounding.float(), self._held_table[steps]], dim=-1)
