"""Sampling from the Transformer-XL: temperature, top-k and top-p (nucleus), seeded, one cached step per token.

Sampling knows ids and logits, not music: the caller says which id ends a piece, when a row has gone on long
enough, and, for a model with a side input, what that input is after each id (a `Side` function). Three ways to
get the next logits give the same tokens; `cached` is the fast one, the other two are the references it is tested
and measured against:

- cached: the primer in segments of tgt_len with memory, then one `TransformerXL.step` per token, which reuses the
  memory's keys and values and the projected position encodings (`DecodeCache`);
- incremental: the plain forward of one token with the memory, recomputing every memory key and value each step;
- recompute: the plain forward over the whole sequence (or its last `window` tokens) with no memory, each step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.decode_cache import decode_cache
from model.device import autocast
from model.transformer_xl import AttnSpan, TransformerXL

Generators = torch.Generator | Sequence[torch.Generator] | None
Decoder = Callable[[torch.Tensor], torch.Tensor]  # the ids just sampled [b] -> the next logits [b, vocab]
# A model's side input for ids [b, t] that follow those it was given before: [b, t, side_size]. It is called once
# with the prompt, then with each step's sampled ids [b, 1], so it may keep state from call to call.
Side = Callable[[torch.Tensor], torch.Tensor]
DRAW_BLOCK = 256  # steps of uniform numbers each row's generator draws at once
DONE_EVERY = 16  # steps between checks for whether every row has ended (each check waits for the device)


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError for settings that select nothing: temperature ≤ 0, top_k < 0, top_p outside (0, 1]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, not {temperature}")
    if top_k < 0:
        raise ValueError(f"top-k must be 0 (off) or more, not {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top-p must be in (0, 1], not {top_p}")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits [b, vocab] divided by the temperature, then -inf outside the k likeliest ids (top_k > 0) and outside
    the smallest set of likeliest ids whose probability reaches top_p (top_p < 1), in that order."""
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    logits = (
        logits - logits.amax(dim=-1, keepdim=True)
    ) / temperature  # the max first: a small temperature can't overflow
    if 0 < top_k < logits.size(-1):
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # An id stays while the ids likelier than it hold less than top_p: the likeliest always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


class Draws:
    """Uniform numbers in [0, 1), one per row and step; with a list of generators, row i's come from generators[i]
    alone, so a sample does not depend on the rows beside it. Each generator draws `block` steps at once, so that a
    step costs one call for all rows, not one per row."""

    def __init__(self, generator: Generators, rows: int, device: torch.device, block: int = DRAW_BLOCK) -> None:
        if not (generator is None or isinstance(generator, torch.Generator)) and len(generator) != rows:
            raise ValueError(f"{len(generator)} generators for {rows} rows")
        self.generator, self.rows, self.device, self.block = generator, rows, device, block
        self.drawn, self.used = torch.empty(rows, 0, device=device), 0

    def __call__(self) -> torch.Tensor:
        if self.used == self.drawn.size(1):
            g, shape = self.generator, (self.rows, self.block)
            if g is None or isinstance(g, torch.Generator):
                self.drawn = torch.rand(shape, generator=g, device=self.device)
            else:
                self.drawn = torch.stack([torch.rand(self.block, generator=gi, device=self.device) for gi in g])
            self.used = 0
        self.used += 1
        return self.drawn[:, self.used - 1]


def draw(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One id per row of logits [b, vocab], with its softmax probability, from one uniform number per row [b]: the
    first id whose cumulative probability reaches 1 - uniform (inverse transform sampling, all rows in one call)."""
    cdf = F.softmax(logits.float(), dim=-1).cumsum(dim=-1)
    target = (1 - uniform.float())[:, None] * cdf[:, -1:]  # in (0, total]: an id of probability 0 is never reached
    return torch.searchsorted(cdf, target)[:, 0].clamp(max=logits.size(-1) - 1)


def sample(logits: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """One id per row of logits [b, vocab]; with a list of generators, row i draws from generators[i] only."""
    return draw(logits, Draws(generator, logits.size(0), logits.device, block=1)())


@dataclass
class _Inputs:
    """What a decoder gives the model besides the ids: the side input's function, each row's label, the span."""

    side: Side | None
    labels: torch.Tensor | None  # [b]: one label per row, at every position
    span: AttnSpan

    def side_of(self, ids: torch.Tensor) -> torch.Tensor | None:
        return None if self.side is None else self.side(ids)

    def labels_of(self, ids: torch.Tensor) -> torch.Tensor | None:
        return None if self.labels is None else self.labels[:, None].expand_as(ids)


def _prefill(model: TransformerXL, prompt: torch.Tensor, inputs: _Inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The prompt in segments of tgt_len, each with the memory of those before: the last logits and the memory."""
    mems, n, side = None, model.cfg.tgt_len, inputs.side_of(prompt)
    for start in range(0, prompt.size(1), n):
        ids = prompt[:, start : start + n]
        segment_side = None if side is None else side[:, start : start + n]
        logits, _, mems = model(ids, mems=mems, side=segment_side, span=inputs.span, labels=inputs.labels_of(ids))
    return logits[:, -1], mems


def _cached(model: TransformerXL, prompt: torch.Tensor, window: int | None, inputs: _Inputs):  # noqa: ANN202
    logits, mems = _prefill(model, prompt, inputs)
    cache = decode_cache(model, mems, inputs.span)
    return logits, lambda tokens: model.step(tokens, cache, inputs.side_of(tokens[:, None]), inputs.labels)


def _incremental(model: TransformerXL, prompt: torch.Tensor, window: int | None, inputs: _Inputs):  # noqa: ANN202
    logits, mems = _prefill(model, prompt, inputs)

    def step(tokens: torch.Tensor) -> torch.Tensor:
        nonlocal mems
        ids = tokens[:, None]
        out, _, mems = model(ids, mems=mems, side=inputs.side_of(ids), span=inputs.span, labels=inputs.labels_of(ids))
        return out[:, -1]

    return logits, step


def _recompute(model: TransformerXL, prompt: torch.Tensor, window: int | None, inputs: _Inputs):  # noqa: ANN202
    seq, seq_side = prompt, inputs.side_of(prompt)

    def step(tokens: torch.Tensor | None) -> torch.Tensor:
        nonlocal seq, seq_side
        if tokens is not None:
            seq = torch.cat([seq, tokens[:, None]], dim=1)
            if seq_side is not None:
                seq_side = torch.cat([seq_side, inputs.side_of(tokens[:, None])], dim=1)
        keep = slice(None) if window is None else slice(-window, None)
        ids, side = seq[:, keep], None if seq_side is None else seq_side[:, keep]
        return model(ids, side=side, span=inputs.span, labels=inputs.labels_of(ids))[0][:, -1]

    return step(None), step


_DECODERS = {"cached": _cached, "incremental": _incremental, "recompute": _recompute}
DECODINGS = tuple(_DECODERS)


class _Replay:
    """A side input shared by two decoders of the same ids: the first computes it, the second gets the same."""

    def __init__(self, side: Side) -> None:
        self.side, self.last = side, None

    def first(self, ids: torch.Tensor) -> torch.Tensor:
        self.last = self.side(ids)
        return self.last

    def again(self, ids: torch.Tensor) -> torch.Tensor:
        return self.last


def start_decoding(
    model: TransformerXL,
    prompt: torch.Tensor,
    decoding: str = "cached",
    window: int | None = None,
    side: Side | None = None,
    span: AttnSpan | None = None,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> tuple[torch.Tensor, Decoder]:
    """The logits after `prompt` [b, p], and a function from the ids sampled next [b] to the logits after them;
    `span` sets how far attention reaches (default: the model's config), `labels` [b] is each row's label.

    With labels and a `guidance` S other than 1, two decoders run side by side, each with its own memory: one with
    the labels, one with label 0; the logits are classifier-free guidance's unlabelled + S × (labelled −
    unlabelled). S = 0 and S = 1 run only the one decoder they need.
    """
    if decoding not in _DECODERS:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, not {decoding!r}")
    decoder, span = _DECODERS[decoding], span or model.cfg.span()
    if labels is None or guidance == 1:
        return decoder(model, prompt, window, _Inputs(side, labels, span))
    unlabelled = torch.zeros_like(labels)
    if guidance == 0:
        return decoder(model, prompt, window, _Inputs(side, unlabelled, span))
    replay = None if side is None else _Replay(side)
    with_labels = decoder(model, prompt, window, _Inputs(replay and replay.first, labels, span))
    without = decoder(model, prompt, window, _Inputs(replay and replay.again, unlabelled, span))

    def mix(conditioned: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        return free.float() + guidance * (conditioned.float() - free.float())

    return mix(with_labels[0], without[0]), lambda tokens: mix(with_labels[1](tokens), without[1](tokens))


def _pick(
    logits: torch.Tensor, banned_ids: torch.Tensor, draws: Draws, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """The next ids [b], drawn from logits [b, vocab] filtered by temperature, top-k and top-p; banned ids never."""
    if len(banned_ids):
        logits = logits.index_fill(-1, banned_ids, float("-inf"))
    return draw(filter_logits(logits, temperature, top_k, top_p), draws())


@dataclass
class _Rules:
    """What the caller of generate() imposes on each step's ids: see its docstring."""

    stop_token: int | None
    stop: Callable[[torch.Tensor], torch.Tensor] | None
    forced: Callable[[torch.Tensor | None], torch.Tensor] | None
    progress: Callable[[torch.Tensor], None] | None


class _Rows:
    """The rows being continued: their new ids, the length of each once it has ended, and the caller's rules."""

    def __init__(self, rows: int, max_new_tokens: int, device: torch.device, rules: _Rules) -> None:
        self.new = torch.zeros(rows, max(max_new_tokens, 0), dtype=torch.long, device=device)
        self.length = torch.full((rows,), self.new.size(1), dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)
        self.rules, self.device = rules, device

    def record(self, i: int, sampled: torch.Tensor) -> torch.Tensor:
        """Step i's ids [b]: the sampled ones where `forced` imposes none; the rows they end are done."""
        tokens, rules = sampled, self.rules
        if rules.forced is not None:
            rule = rules.forced(self.new[:, i - 1] if i else None).to(self.device)
            tokens = torch.where(rule >= 0, rule, tokens)
        self.new[:, i] = tokens
        ended = torch.zeros_like(self.done) if rules.stop_token is None else tokens == rules.stop_token
        if rules.stop is not None:
            ended |= rules.stop(tokens).to(self.device)
        self.length = torch.where(ended & ~self.done, i + 1, self.length)
        self.done |= ended
        if rules.progress is not None and (i + 1) % DONE_EVERY == 0:
            rules.progress(self.new[:, : i + 1])
        return tokens

    def finished(self, i: int) -> bool:
        """Whether step i is the last: the last allowed, or one of every DONE_EVERY after which every row has ended."""
        return i + 1 == self.new.size(1) or ((i + 1) % DONE_EVERY == 0 and bool(self.done.all()))

    def ids(self) -> list[torch.Tensor]:
        """Each row's new ids, up to where it ended."""
        return [self.new[row, : self.length[row]] for row in range(self.new.size(0))]


@torch.no_grad()
def generate(
    model: TransformerXL,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Generators = None,
    stop_token: int | None = None,
    stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
    banned: Sequence[int] = (),
    decoding: str = "cached",
    window: int | None = None,
    dtype: torch.dtype | None = None,
    side: Side | None = None,
    forced: Callable[[torch.Tensor | None], torch.Tensor] | None = None,
    span: AttnSpan | None = None,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    progress: Callable[[torch.Tensor], None] | None = None,
) -> list[torch.Tensor]:
    """Continue every row of `prompt` [b, p] (p ≥ 1) by up to max_new_tokens sampled ids; return each row's new ids.

    A row ends with `stop_token`, or when `stop`, called once per step with the ids just sampled [b], returns True
    for it (a stateful predicate, such as a clock); the loop ends once every row has ended (checked every DONE_EVERY
    steps, so that the host seldom waits for the device). Ids in `banned` are never sampled (the others'
    probabilities are renormalised). `decoding` picks how the logits are computed (see the module docstring),
    `window` caps the recompute's context, `dtype` runs the weight matrices under autocast to it (bf16) while
    attention and the memory keep the model's own, `span` sets how far attention reaches, and `side` gives a model
    with a side input that input (see `Side`). `forced`, called each step with the ids of the step before (None at
    the first), returns ids [b] to emit in place of the sampled ones, -1 where a row samples: a rule the caller
    imposes, whose ids the model then reads like any other. `labels` [b] gives each row a label for a model with
    labels, and `guidance` is classifier-free guidance's scale (see `start_decoding`). `progress`, when given, is
    called every DONE_EVERY steps with the ids sampled so far [b, steps], for a caller that shows them as they come.
    """
    check_sampling(temperature, top_k, top_p)
    if prompt.dim() != 2 or prompt.size(1) < 1:
        raise ValueError(f"the prompt must be [batch, length ≥ 1], not {list(prompt.shape)}")
    model.eval()
    rows = _Rows(prompt.size(0), max_new_tokens, prompt.device, _Rules(stop_token, stop, forced, progress))
    draws = Draws(generator, prompt.size(0), prompt.device)
    with autocast(prompt.device, dtype):
        logits, step = start_decoding(model, prompt, decoding, window, side, span, labels, guidance)
        banned_ids = torch.as_tensor(list(banned), dtype=torch.long, device=prompt.device)
        for i in range(rows.new.size(1)):
            tokens = rows.record(i, _pick(logits, banned_ids, draws, temperature, top_k, top_p))
            if rows.finished(i):
                break
            logits = step(tokens)
    return rows.ids()


@torch.no_grad()
def bf16_decodes_faster(model: torch.nn.Module, rows: int, steps: int = 24, prompt_len: int = 32) -> bool:
    """Whether cached decoding of `rows` rows takes less time with bf16 weights than in float32 on this machine,
    timed once over `steps` steps after as many untimed ones (the first calls of each precision warm it up)."""
    cfg = model.cfg
    prompt = torch.randint(0, cfg.vocab_size, (rows, prompt_len), generator=torch.Generator().manual_seed(0))
    side = (lambda ids: torch.zeros(*ids.shape, cfg.side_size)) if cfg.side_size else None
    device = next(model.parameters()).device
    seconds = {}
    was_training = model.training
    model.eval()
    for dtype in (None, torch.bfloat16, None, torch.bfloat16):  # twice each, alternating: the second pair counts
        with autocast(device, dtype):
            _, step = start_decoding(model, prompt.to(device), "cached", side=side)
            ids = prompt[:, -1].to(device)
            for _ in range(steps):
                step(ids)
            started = time.perf_counter()
            for _ in range(steps):
                step(ids)
            seconds[dtype] = time.perf_counter() - started
    model.train(was_training)
    return seconds[torch.bfloat16] < seconds[None]
