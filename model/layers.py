"""The Transformer-XL's layers (Dai et al., 2019): the sinusoidal encoding of relative distances, relative
multi-head attention with the paper's two global biases and `_rel_shift`, the feed-forward sublayer, and the decoder
layer that joins them. Attention goes through PyTorch's scaled_dot_product_attention, with the position term (B+D
in the paper) passed as an exact additive bias. `transformer_xl.py` stacks them into the model.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from model.decode_cache import DecodeCache
    from model.transformer_xl import TransformerXLConfig

# The only kernel attention may use on CUDA. With a float bias PyTorch picks it when it can and otherwise falls back
# silently to the math kernel, many times slower; pinned, such a fallback is an error.
CUDA_KERNELS = [SDPBackend.EFFICIENT_ATTENTION]


class PositionalEmbedding(nn.Module):
    """Sinusoid encodings of relative distances (the paper's R)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, pos_seq: torch.Tensor) -> torch.Tensor:
        # Always in float32, whatever the weights' dtype: bf16 holds distances above 256 only to multiples of 2 to 8.
        pos_seq = pos_seq.float()
        inv_freq = 1 / (10000 ** (torch.arange(0.0, self.d_model, 2.0, device=pos_seq.device) / self.d_model))
        sinusoid = torch.outer(pos_seq, inv_freq)
        return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)  # [klen, d_model] float32


def _rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Turn scores against distances klen-1 … 0 into scores against key positions (the paper's appendix B)."""
    b, h, qlen, klen = x.shape
    x_padded = torch.cat([x.new_zeros(b, h, qlen, 1), x], dim=-1).view(b, h, klen + 1, qlen)
    return x_padded[:, :, 1:].reshape(b, h, qlen, klen)


class RelPartialLearnableMultiHeadAttn(nn.Module):
    """Multi-head attention with the paper's relative positions and its two global biases."""

    def __init__(self, cfg: TransformerXLConfig) -> None:
        super().__init__()
        self.n_head, self.d_head, self.pre_lnorm = cfg.n_head, cfg.d_head, cfg.pre_lnorm
        self.qkv_net = nn.Linear(cfg.d_model, 3 * cfg.n_head * cfg.d_head, bias=False)
        self.r_net = nn.Linear(cfg.d_model, cfg.n_head * cfg.d_head, bias=False)
        self.o_net = nn.Linear(cfg.n_head * cfg.d_head, cfg.d_model, bias=False)
        self.layer_norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.dropatt = cfg.dropatt
        self.scale = 1 / math.sqrt(cfg.d_head)

    def forward(
        self,
        w: torch.Tensor,
        r: torch.Tensor,
        r_w_bias: torch.Tensor,
        r_r_bias: torch.Tensor,
        attn_mask: torch.Tensor,
        mems: torch.Tensor | None,
    ) -> torch.Tensor:
        b, qlen, _ = w.shape
        cat = w if mems is None or mems.size(1) == 0 else torch.cat([mems, w], dim=1)
        normed = self.layer_norm(cat) if self.pre_lnorm else cat
        # qkv_net's rows are [q; k; v]: queries only for the segment, keys and values for memory and segment.
        hd = self.n_head * self.d_head
        w_head_q = F.linear(normed[:, -qlen:], self.qkv_net.weight[:hd]).view(b, qlen, self.n_head, self.d_head)
        w_head_k, w_head_v = self._keys_values(normed)  # [b, h, klen, d]
        r_head_k = self.r_net(r).view(-1, self.n_head, self.d_head)  # [klen, h, d]
        attn_vec = self._attend(w_head_q.transpose(1, 2), w_head_k, w_head_v, r_head_k, r_w_bias, r_r_bias, attn_mask)
        return self._output(w, attn_vec)

    def step(
        self, w: torch.Tensor, cache: DecodeCache, layer: int, r_w_bias: torch.Tensor, r_r_bias: torch.Tensor
    ) -> torch.Tensor:
        """forward() for one new position w [b, 1, d_model], with the memory's keys and values read from `cache`."""
        normed = self.layer_norm(w) if self.pre_lnorm else w
        # The whole qkv weight at once: autocast casts a weight that is no view once per region, not once per step.
        qkv = F.linear(normed, self.qkv_net.weight).view(w.size(0), 1, 3, self.n_head, self.d_head).to(w.dtype)
        w_head_q, w_head_k, w_head_v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [b, h, 1, d]
        keys, values = cache.append(layer, w_head_k, w_head_v)  # memory and this position: [b, h, klen, d]
        r_head_k = cache.r_head_k[layer][-keys.size(2) :]  # distances klen-1 ... 0
        # Attention stays in the residual stream's precision: it reads the memory, where bf16 buys nothing on a CPU.
        with torch.autocast(w.device.type, enabled=False):
            attn_vec = self._attend(w_head_q, keys, values, r_head_k, r_w_bias, r_r_bias, cache.attn_mask)
        return self._output(w, attn_vec)

    def _attend(self, q, k, v, r_head_k, r_w_bias, r_r_bias, attn_mask):  # noqa: ANN001, ANN202
        """Attention of queries [b, h, qlen, d] over keys and values [b, h, klen, d]; the result is [b, h, qlen, d]."""
        # (b) + (d): content-independent and global position terms, shifted to key positions.
        # The biases join the queries in the queries' dtype: a float32 bias would promote bf16 queries to float32.
        bd = torch.einsum("bhid,jhd->bhij", q + r_r_bias.to(q.dtype)[:, None], r_head_k)
        bias = (_rel_shift(bd) * self.scale).masked_fill(attn_mask, float("-inf")).to(q.dtype)
        dropout_p = self.dropatt if self.training else 0.0
        # (a) + (c): the content terms, with r_w_bias folded into the query; on CUDA in the pinned kernel.
        with sdpa_kernel(CUDA_KERNELS) if q.is_cuda else contextlib.nullcontext():
            return F.scaled_dot_product_attention(
                q + r_w_bias.to(q.dtype)[:, None], k, v, attn_mask=bias, dropout_p=dropout_p, scale=self.scale
            )

    def _output(self, w: torch.Tensor, attn_vec: torch.Tensor) -> torch.Tensor:
        b, _, qlen, _ = attn_vec.shape
        attn_out = self.drop(self.o_net(attn_vec.transpose(1, 2).reshape(b, qlen, -1)))
        return w + attn_out if self.pre_lnorm else self.layer_norm(w + attn_out)

    def project_memory(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [b, h, mlen, d] of memory hidden states [b, mlen, d_model], as forward() computes them."""
        return self._keys_values(self.layer_norm(mem) if self.pre_lnorm else mem)

    def _keys_values(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = normed.shape
        kv = F.linear(normed, self.qkv_net.weight[self.n_head * self.d_head :]).view(b, n, 2, self.n_head, self.d_head)
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)


class PositionwiseFF(nn.Module):
    """The feed-forward sublayer."""

    def __init__(self, cfg: TransformerXLConfig) -> None:
        super().__init__()
        self.pre_lnorm = cfg.pre_lnorm
        self.core_net = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_inner),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.d_inner, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_lnorm:
            return x + self.core_net(self.layer_norm(x))
        return self.layer_norm(x + self.core_net(x))


class RelPartialLearnableDecoderLayer(nn.Module):
    """One layer: relative attention, then the feed-forward sublayer."""

    def __init__(self, cfg: TransformerXLConfig) -> None:
        super().__init__()
        self.dec_attn = RelPartialLearnableMultiHeadAttn(cfg)
        self.pos_ff = PositionwiseFF(cfg)

    def forward(self, w, r, r_w_bias, r_r_bias, attn_mask, mems):  # noqa: ANN001, ANN201, D102
        return self.pos_ff(self.dec_attn(w, r, r_w_bias, r_r_bias, attn_mask, mems))

    def step(self, w, cache, layer, r_w_bias, r_r_bias):  # noqa: ANN001, ANN201, D102
        return self.pos_ff(self.dec_attn.step(w, cache, layer, r_w_bias, r_r_bias))
