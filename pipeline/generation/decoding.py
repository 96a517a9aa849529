"""The sampler of the generate stage and the listening page: `model.sampling.generate` with this project's music
around it. The model's side input (the piano state, on the device), the note-length rule (a decoding rule that
releases a key held too long), the clock that stops a sample after its seconds of music, and the dtype that pays.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from model import AttnSpan, TransformerXL
from model.device import compute_dtype
from model.sampling import Side, bf16_decodes_faster
from model.sampling import generate as sample_tokens
from pipeline.errors import PipelineError
from pipeline.generation.primers import Primer
from pipeline.model_folder import reads_texture
from pipeline.music.performance_encoding import NOTE_OFF, PIECE_END, PIECE_START, STEP_S, time_steps
from pipeline.music.piano_state_torch import PianoState
from pipeline.music.texture import TEXTURE_WINDOW_S, padded_tracks
from pipeline.params import GenerateParams

MAX_TOKENS_PER_SECOND = 300  # a cap on sampled tokens per second of music; MAESTRO averages about 43
TOKEN_CAP_FLOOR = 64  # added to that cap, so that a very short sample still has room for a chord


class MusicClock:
    """The stop predicate for `seconds` of music: adds up each row's time shifts as they are sampled."""

    def __init__(self, seconds: float, rows: int, device: torch.device) -> None:
        self.limit = round(seconds / STEP_S)
        self.steps = torch.zeros(rows, dtype=torch.long, device=device)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps += time_steps(tokens)
        return self.steps >= self.limit


class NoteLimit:
    """A decoding rule on the device: a key that has sounded `seconds` or longer is released at the next event.
    Called with each step's tokens [rows] (None at the first step), it returns the NOTE_OFF to emit per row (the
    longest-held such key), or -1 where the row goes on freely."""

    def __init__(self, opening: torch.Tensor, seconds: float) -> None:
        self.state = PianoState(opening.size(0), opening.device)
        self.state(opening)
        self.steps = math.ceil(seconds / STEP_S - 1e-9)  # held this many steps: held `seconds` (up to float noise)

    def __call__(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is not None:
            self.state(tokens[:, None])
        held = self.state.steps_held()
        longest = held.argmax(dim=1)
        over = held.gather(1, longest[:, None])[:, 0] >= self.steps
        return torch.where(over, NOTE_OFF + longest, -1)


def decode_dtype(choice: str, device: torch.device, model: torch.nn.Module, rows: int) -> torch.dtype | None:
    """The dtype of the weights' matmuls while sampling (None: float32): as generate.precision says, where auto is
    bf16 where it is native and pays: always on a GPU, and on a CPU where a timing of `rows` rows at start-up says it
    decodes faster (a large model is bound by memory traffic, which bf16 halves; a small one only pays for casts)."""
    dtype = compute_dtype(choice, device)
    if choice == "auto" and dtype is not None and device.type == "cpu" and not bf16_decodes_faster(model, rows):
        return None
    return dtype


def piano_state_input(rows: int, device: torch.device, texture: np.ndarray | None = None) -> Side:
    """The side input of a state-input model while it samples: the piano state of `rows` rows on `device`, computed
    for the prompt at once and then for each token as it is sampled, without leaving the device; each row's piece
    texture track [rows, windows, TRACK_COLUMNS] read by its clock after it, for a model that reads one."""
    return PianoState(rows, device, None if texture is None else torch.as_tensor(texture, device=device))


def texture_picks(table: dict | None, label: int, seeds: list[int], seconds: float) -> list[int]:
    """Which of vocab.json's `textures` each seed draws for `seconds` of music: a train piece of composer `label`
    (any piece for label 0, or a label without pieces), one at least as long where there is one."""
    if not table or not table.get("track"):
        raise PipelineError("the model reads a texture, but its vocab.json lists no texture tracks (retrain the model)")
    labels, lengths = np.asarray(table["label"]), np.array([len(track) for track in table["track"]])
    windows = math.ceil(seconds / TEXTURE_WINDOW_S)
    composer = labels == label if label and (labels == label).any() else np.ones(len(labels), bool)
    long_enough = composer & (lengths >= windows)
    pool = np.flatnonzero(long_enough if long_enough.any() else composer)
    return [int(pool[np.random.default_rng([seed, len(pool)]).integers(len(pool))]) for seed in seeds]


def draw_textures(table: dict | None, label: int, seeds: list[int], seconds: float) -> np.ndarray:
    """A texture track per seed [rows, windows, columns] for `seconds` of music: that of the piece it draws
    (`texture_picks`), carried on past its end (`padded_tracks`)."""
    picks = texture_picks(table, label, seeds, seconds)
    windows = math.ceil(seconds / TEXTURE_WINDOW_S)
    return padded_tracks([np.asarray(table["track"][i], np.float32) for i in picks], windows + 1)


def sample_batch(
    model: TransformerXL,
    primer: Primer,
    p: GenerateParams,
    seeds: list[int],
    dtype: torch.dtype | None,
    span: AttnSpan | None = None,
    rule: bool = True,
    label: int = 0,
    progress: Callable[[torch.Tensor], None] | None = None,
    textures: dict | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """`len(seeds)` continuations of `primer` in one batch, each until PIECE_END or p.seconds of new music, with the
    weights' matmuls in `dtype` (None: float32), attending as far as `span` says (None: as trained), and the
    note-length rule when `rule` and p.max_note_s are on, every row with composer `label` (0: none) at guidance
    p.guidance, `progress` getting the tokens so far now and then (`model.sampling.generate`), and for a model that
    reads a piece's texture one drawn per seed from `textures` (vocab.json's); and how many releases the rule imposed
    on each."""
    device = next(model.parameters()).device
    prompt = torch.as_tensor(primer.tokens, device=device)[None].repeat(len(seeds), 1)
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    texture = draw_textures(textures, label, seeds, p.seconds) if reads_texture(model.cfg) else None
    side = piano_state_input(len(seeds), device, texture) if model.cfg.side_size else None
    forced, imposed = None, []  # per step, the rows whose token the rule chose
    if rule and p.max_note_s:
        limit = NoteLimit(prompt, p.max_note_s)

        def forced(ids: torch.Tensor | None) -> torch.Tensor:
            release = limit(ids)
            imposed.append(release >= 0)  # on the device: read once sampling ends
            return release

    new = sample_tokens(
        model,
        prompt,
        max_new_tokens=int(p.seconds * MAX_TOKENS_PER_SECOND) + TOKEN_CAP_FLOOR,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        generator=generators,
        stop_token=PIECE_END,
        stop=MusicClock(p.seconds, len(seeds), device),
        banned=[PIECE_START] if p.stop_at_piece_end else [PIECE_START, PIECE_END],  # a piece starts only once
        dtype=dtype,
        side=side,
        forced=forced,
        span=span,
        labels=torch.full((len(seeds),), label, device=device) if label else None,
        guidance=p.guidance,
        progress=progress,
    )
    rows = [row.cpu().numpy() for row in new]
    steps = torch.stack(imposed).cpu().numpy() if imposed else np.zeros((0, len(seeds)), bool)  # [steps, rows]
    return rows, np.array([int(steps[: len(row), i].sum()) for i, row in enumerate(rows)])
