"""Transformer-XL language model (Dai et al., 2019): segment-level recurrence and relative positional attention.

Names follow the paper and its reference code (`mems`, `mem_len`, `r_w_bias`, `r_r_bias`, `_rel_shift`), so the
two can be read side by side. Tensors are batch-first: [batch, time, ...]. The layers are in `layers.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import PositionalEmbedding, RelPartialLearnableDecoderLayer

if TYPE_CHECKING:
    from model.decode_cache import DecodeCache


@dataclass(frozen=True)
class AttnSpan:
    """How far attention reaches: the memory kept per layer, whether every query sees as many keys, and the distance
    beyond which relative positions share one encoding. Evaluation and sampling may reach further than training did
    (the paper evaluates with a longer memory); the weights are the same."""

    mem_len: int
    same_length: bool = False
    clamp_len: int = -1


@dataclass
class TransformerXLConfig:
    """Model shape and regularisation; `vocab_size` comes from the tokens' vocab.json."""

    vocab_size: int
    n_layer: int = 12
    d_model: int = 512
    n_head: int = 8
    d_head: int = 64
    d_inner: int = 2048
    dropout: float = 0.1
    dropatt: float = 0.0
    tgt_len: int = 512
    mem_len: int = 512
    pre_lnorm: bool = False
    same_length: bool = False  # every query sees the same number of keys (for evaluation with a long memory)
    clamp_len: int = -1  # relative distances beyond this use the same encoding (-1: no clamp)
    side_size: int = 0  # features per position of a side input added to the token embedding (0: none)
    n_labels: int = 0  # labels 1..n_labels, one per token, whose embeddings are added to the token's (0: none)
    # The (feature, token) pairs that the side input's direct term to the logits joins (None: every pair). Fewer pairs
    # keep it local: a sum over many features cannot add up to a push on tokens that none of them is paired with.
    side_logit_pairs: list | None = None
    # [feature_start, token_start, width] blocks of the direct term whose weight from feature f to token t depends on
    # t - f alone, one learned weight per distance: a map that treats every place along the block alike, so a rarely
    # active feature gets the weights its common neighbours learn. They add to the pairs' weights.
    side_logit_bands: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_head * self.d_head != self.d_model:
            raise ValueError(
                f"n_head × d_head must equal d_model: {self.n_head} × {self.d_head} = "
                f"{self.n_head * self.d_head}, but d_model is {self.d_model}"
            )
        if min(self.vocab_size, self.n_layer, self.tgt_len) < 1 or min(self.mem_len, self.side_size, self.n_labels) < 0:
            raise ValueError(f"invalid model shape: {self}")
        pairs = self.side_logit_pairs
        if pairs is not None and not all(0 <= f < self.side_size and 0 <= t < self.vocab_size for f, t in pairs):
            raise ValueError(f"side_logit_pairs must pair features below {self.side_size} with tokens below "
                             f"{self.vocab_size}")  # fmt: skip
        if not all(w > 0 and min(f, t) >= 0 and f + w <= self.side_size and t + w <= self.vocab_size
                   for f, t, w in self.side_logit_bands):  # fmt: skip
            raise ValueError(f"side_logit_bands must lie within {self.side_size} features and {self.vocab_size} tokens")

    def span(self) -> AttnSpan:
        """The attention span the model was configured (and trained) with."""
        return AttnSpan(self.mem_len, self.same_length, self.clamp_len)


class TransformerXL(nn.Module):
    """The language model: tied input and output embeddings around a stack of relative-attention layers."""

    def __init__(self, cfg: TransformerXLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.emb_scale = math.sqrt(cfg.d_model)
        # The side input enters twice: into the embedding, where every layer can use it, and straight into the
        # logits, where a feature can raise or lower a next token directly. Both start at zero, so a side input
        # begins as the plain model and training decides what it adds.
        self.side_net = nn.Linear(cfg.side_size, cfg.d_model, bias=False) if cfg.side_size else None
        self.side_logits = nn.Linear(cfg.side_size, cfg.vocab_size, bias=False) if cfg.side_size else None
        if cfg.side_size and cfg.side_logit_pairs is not None:  # 1 where a pair may learn a weight; not saved
            pairs = torch.tensor(cfg.side_logit_pairs, dtype=torch.long).reshape(-1, 2)
            mask = torch.zeros(cfg.vocab_size, cfg.side_size).index_put_((pairs[:, 1], pairs[:, 0]), torch.tensor(1.0))
            self.register_buffer("side_mask", mask, persistent=False)
        else:
            self.side_mask = None
        widest = max((w for _, _, w in cfg.side_logit_bands), default=0)  # each band's weights by distance t - f
        self.side_bands = nn.Parameter(torch.zeros(len(cfg.side_logit_bands), 2 * widest - 1)) if widest else None
        # A label per token (a piece's, at every one of its tokens, so it never leaves the memory): label 0 means
        # none given, a zero vector that never learns, so one model runs with and without labels.
        self.label_emb = nn.Embedding(cfg.n_labels + 1, cfg.d_model, padding_idx=0) if cfg.n_labels else None
        self.pos_emb = PositionalEmbedding(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(RelPartialLearnableDecoderLayer(cfg) for _ in range(cfg.n_layer))
        self.r_w_bias = nn.Parameter(torch.zeros(cfg.n_head, cfg.d_head))
        self.r_r_bias = nn.Parameter(torch.zeros(cfg.n_head, cfg.d_head))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_lnorm else nn.Identity()
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # the output layer's weight is word_emb's
        self.apply(self._init_weights)
        for zeroed in (self.side_net, self.side_logits, self.label_emb):  # each starts as the plain model
            if zeroed is not None:
                nn.init.zeros_(zeroed.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def init_mems(self, batch_size: int, length: int = 0) -> list[torch.Tensor]:
        """Memories of `length` zero states, one per layer input: empty by default. A full-length one keeps every
        segment's shapes the same (no recompile for the first under torch.compile); a caller that passes one must
        mask it out with seq_pos, which hides every key before a sequence's first token."""
        p = self.word_emb.weight
        return [p.new_zeros(batch_size, length, self.cfg.d_model) for _ in range(self.cfg.n_layer)]

    def _attn_mask(
        self, qlen: int, mlen: int, device: torch.device, span: AttnSpan, seq_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """True where a query may not look: the future, with same_length keys older than mem_len, and with seq_pos
        [b, qlen] keys more than seq_pos positions back (before the query's sequence began). [qlen, klen], or
        [b, 1, qlen, klen] with seq_pos."""
        klen = mlen + qlen
        ones = torch.ones(qlen, klen, dtype=torch.bool, device=device)
        mask = torch.triu(ones, diagonal=1 + mlen)
        if span.same_length:
            mask_len = klen - span.mem_len
            mask_shift_len = qlen - mask_len if mask_len > 0 else qlen
            mask = mask | torch.tril(ones, diagonal=-mask_shift_len)
        if seq_pos is not None:
            distance = torch.arange(mlen, klen, device=device)[:, None] - torch.arange(klen, device=device)
            mask = (mask | (distance > seq_pos[:, :, None]))[:, None]
        return mask

    @staticmethod
    def _update_mems(hids: list[torch.Tensor], mems: list[torch.Tensor], mem_len: int) -> list[torch.Tensor]:
        """Keep the last mem_len hidden states of each layer input; no gradient flows into the memory. Contiguous: a
        slice would keep the whole concatenation alive, and its strides would make a compiled model recompile."""
        with torch.no_grad():
            return [
                torch.cat([m, h], dim=1)[:, -mem_len:].detach().contiguous() if mem_len else m[:, :0]
                for h, m in zip(hids, mems, strict=True)
            ]

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
        side: torch.Tensor | None = None,
        seq_pos: torch.Tensor | None = None,
        span: AttnSpan | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """Logits for tokens [batch, qlen] given the memory; with targets also the mean cross-entropy (nats).

        `side` [batch, qlen, side_size] is the side input of each position. `seq_pos` [batch, qlen] is each token's
        position in its own sequence (0 at its first token), where sequences lie end to end in a row: a query then
        attends to nothing before its sequence began, in the segment or the memory, as if it had started from an
        empty memory. `labels` [batch, qlen] is each token's label (0: none; None: all 0) for a model with labels.
        `span` sets how far attention reaches (default: the config's). Returns (logits, loss,
        new_mems). Feeding one token at a time with the returned memory is the incremental forward used for generation.
        """
        b, qlen = tokens.shape
        span = span or self.cfg.span()
        if mems is None:
            mems = self.init_mems(b)
        mlen = mems[0].size(1)
        word_emb = self._embed(tokens, side, labels)
        r = self.drop(self._positions(mlen + qlen, span.clamp_len, tokens.device))
        attn_mask = self._attn_mask(qlen, mlen, tokens.device, span, seq_pos)

        core_out = self.drop(word_emb)
        hids = []  # each layer's input: what that layer's memory keeps (the last layer's output is never read)
        for layer, mem in zip(self.layers, mems, strict=True):
            hids.append(core_out)
            core_out = layer(core_out, r, self.r_w_bias, self.r_r_bias, attn_mask, mem)
        core_out = self.drop(self.final_norm(core_out))
        logits = self._logits(core_out, side)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss, self._update_mems(hids, mems, span.mem_len)

    def _positions(self, klen: int, clamp_len: int, device: torch.device) -> torch.Tensor:
        """Encodings [klen, d_model] of the distances klen-1 ... 0, computed in float32, in the weights' dtype."""
        pos_seq = torch.arange(klen - 1, -1, -1.0, device=device)
        if clamp_len > 0:
            pos_seq = pos_seq.clamp(max=clamp_len)
        return self.pos_emb(pos_seq).to(self.word_emb.weight.dtype)

    def _embed(self, tokens: torch.Tensor, side: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings [b, t, d_model], plus the labels' embeddings and the side input's projection when the
        model has them."""
        emb = self.word_emb(tokens) * self.emb_scale
        if labels is not None:
            if self.label_emb is None:
                raise ValueError("the model takes no labels (n_labels is 0), but labels were given")
            if labels.shape != tokens.shape:
                raise ValueError(f"labels must be {list(tokens.shape)}, not {list(labels.shape)}")
            emb = emb + self.label_emb(labels)
        if self.side_net is None:
            if side is not None:
                raise ValueError("the model takes no side input (side_size is 0), but one was given")
            return emb
        if side is None:
            raise ValueError(f"the model takes a side input of {self.cfg.side_size} features per position; none given")
        if side.shape != (*tokens.shape, self.cfg.side_size):
            raise ValueError(f"side input must be {[*tokens.shape, self.cfg.side_size]}, not {list(side.shape)}")
        return emb + self.side_net(side.to(emb.dtype))

    def _logits(self, core_out: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
        """The output layer (the tied embedding), plus the side input's direct term when the model has one."""
        logits = F.linear(core_out, self.word_emb.weight, self.out_bias)
        if side is None:
            return logits
        weight = self.side_logits.weight if self.side_mask is None else self.side_logits.weight * self.side_mask
        if self.side_bands is not None:
            weight = weight + self._band_weight()
        return logits + F.linear(side.to(core_out.dtype), weight.to(core_out.dtype))

    def _band_weight(self) -> torch.Tensor:
        """The bands' part of the direct term's weight [vocab, side]: in a band, weight[t, f] is its weight at t - f."""
        c, widest = self.cfg, (self.side_bands.size(1) + 1) // 2
        weight = self.side_bands.new_zeros(c.vocab_size, c.side_size)
        for kernel, (f, t, w) in zip(self.side_bands, c.side_logit_bands, strict=True):
            span = torch.arange(w, device=kernel.device)
            block = kernel[span[:, None] - span[None, :] + widest - 1]  # [token, feature]
            weight = weight + F.pad(block, (f, c.side_size - f - w, t, c.vocab_size - t - w))
        return weight

    @torch.no_grad()
    def project_memory(self, mems: list[torch.Tensor], span: AttnSpan) -> tuple[list[torch.Tensor], ...]:
        """A DecodeCache's contents per layer: the keys and values of `mems` (from forward() with `span`), r_head_k."""
        r = self._positions(span.mem_len + 1, span.clamp_len, mems[0].device).to(mems[0].dtype)
        attn = [layer.dec_attn for layer in self.layers]
        with torch.autocast(mems[0].device.type, enabled=False):  # the cache keeps the memory's precision
            keys, values = zip(*(a.project_memory(m) for a, m in zip(attn, mems, strict=True)), strict=True)
            r_head_k = [a.r_net(r).view(-1, self.cfg.n_head, self.cfg.d_head) for a in attn]
        return list(keys), list(values), r_head_k

    @torch.no_grad()
    def step(
        self,
        tokens: torch.Tensor,
        cache: DecodeCache,
        side: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, vocab] after `tokens` [batch] (side input [batch, 1, side_size], label [batch]), one position
        past the cache, which moves on by one: the incremental forward, without recomputing the memory's projections."""
        cache.attn_mask = self._attn_mask(1, cache.length, tokens.device, cache.span)
        core_out = self._embed(tokens[:, None], side, None if labels is None else labels[:, None])
        for i, layer in enumerate(self.layers):
            core_out = layer.step(core_out, cache, i, self.r_w_bias, self.r_r_bias)
        cache.advance()
        return self._logits(self.final_norm(core_out), side)[:, 0]

    def num_params(self) -> int:
        """Trainable parameters (the tied output weight counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, mlen: int | None = None, batch_size: int = 1) -> float:
        """Forward and backward FLOPs per trained token as the model runs them, attention over the memory included.

        A weight applied to a token costs 2 FLOPs forward and 4 backward. r_net runs once per batch, on positions
        that need no gradient (2 forward, 2 backward), so its share per token shrinks with the batch.
        """
        c = self.cfg
        qlen, mlen = c.tgt_len, c.mem_len if mlen is None else mlen
        klen = qlen + mlen
        h = c.n_head * c.d_head
        per_layer = (
            2 * c.d_model * h  # queries, for the segment only
            + 2 * c.d_model * 2 * h * klen / qlen  # keys and values, for memory and segment
            + 3 * 2 * h * klen  # (a)+(c) and (b)+(d) scores, then the weighted sum of values
            + 2 * h * c.d_model  # o_net
            + 2 * 2 * c.d_model * c.d_inner  # feed-forward
        )
        r_net = 2 * c.d_model * h * klen / (qlen * batch_size)
        side = 2 * c.side_size * (c.d_model + c.vocab_size) * 2  # forward and the weights' gradients (not the input's)
        return 3 * (c.n_layer * per_layer + 2 * c.d_model * c.vocab_size) + 2 * c.n_layer * r_net + side
