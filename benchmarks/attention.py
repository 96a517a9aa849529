"""One attention layer at the training shape: the activation memory (bytes saved for backward) and the time of
forward and forward+backward, for today's path (the position term B+D, `_rel_shift`ed to a dense [batch, heads,
queries, keys] bias for scaled_dot_product_attention) against FlexAttention, which gathers the position term from
the per-distance scores in a score_mod and takes the piece mask as a block mask.

Usage: python benchmarks/attention.py [--params params.yaml] [--batch N] [--tgt-len N] [--mem-len N] [--steps 5]
                                      [--warmup 3] [--precision auto|bfloat16|float32] [--no-compile]

The layer is params.yaml's `model:` at train.batch_size × tgt_len over a full memory of mem_len states, in the
train stage's precision (auto: bf16 on a GPU and on a CPU with native bf16). Each row has a piece that starts
mid-segment (seq_pos), so the piece mask takes part. Today's eager path is the peer. On a CPU, torch 2.13's
FlexAttention has no backward: there it is timed forward only, and the bytes it saves for backward are read from its
eager autograd function with that refusal lifted for one forward.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.attention.flex_attention as flex_module
from torch._subclasses.fake_tensor import FakeTensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import AttnSpan, TransformerXL, TransformerXLConfig  # noqa: E402
from model.device import autocast, compute_dtype  # noqa: E402
from model.layers import RelPartialLearnableMultiHeadAttn  # noqa: E402
from pipeline.model_folder import model_section  # noqa: E402
from pipeline.params import load_section  # noqa: E402

PEER = "today's path, eager"
CONTENDERS = {  # name: (FlexAttention, torch.compile)
    PEER: (False, False),
    "today's path, compiled": (False, True),
    "FlexAttention, eager": (True, False),
    "FlexAttention, compiled": (True, True),
}


@dataclass
class Case:
    """One layer's weights and inputs, as the model's forward hands them to its first layer."""

    model: TransformerXL  # one layer; its r_w_bias and r_r_bias
    w: torch.Tensor  # [b, qlen, d_model], the layer input; it needs a gradient, as any layer's but the first does
    mems: torch.Tensor  # [b, mlen, d_model]
    r: torch.Tensor  # [klen, d_model], the encodings of distances klen-1 ... 0
    seq_pos: torch.Tensor  # [b, qlen]
    attn_mask: torch.Tensor  # today's [b, 1, qlen, klen]
    grad: torch.Tensor  # the gradient arriving at the layer's output
    dtype: torch.dtype | None  # autocast's (None: float32)

    @property
    def attn(self) -> RelPartialLearnableMultiHeadAttn:
        """The attention sublayer measured."""
        return self.model.layers[0].dec_attn


def make_case(args: argparse.Namespace, device: torch.device) -> Case:
    """The layer at params.yaml's shape (with the options' overrides), seeded, every row crossing a piece start."""
    model_params = model_section(load_section("model", args.params))
    fields = {f.name for f in dataclasses.fields(TransformerXLConfig)}  # the pipeline's switches are not the layer's
    model_params = {k: v for k, v in model_params.items() if k in fields}
    train = load_section("train", args.params)
    model_params.update(n_layer=1, dropout=0.0, tgt_len=args.tgt_len or model_params["tgt_len"])
    model_params["mem_len"] = model_params["mem_len"] if args.mem_len is None else args.mem_len
    torch.manual_seed(0)
    model = TransformerXL(TransformerXLConfig(vocab_size=390, **model_params)).to(device).train()
    with torch.no_grad():  # trained-like global biases, so that both terms take part
        model.r_w_bias.normal_(0, 0.5)
        model.r_r_bias.normal_(0, 0.5)
    c, b = model.cfg, args.batch or int(train["batch_size"])
    qlen, mlen = c.tgt_len, c.mem_len
    # Row i's piece starts at query start[i]; the piece before began long ago, so its queries see the whole memory.
    start = torch.randint(0, qlen, (b, 1), device=device)
    t = torch.arange(qlen, device=device).expand(b, qlen)
    seq_pos = torch.where(t < start, t + mlen + qlen, t - start)
    dtype = compute_dtype(args.precision, device)
    return Case(
        model=model,
        w=torch.randn(b, qlen, c.d_model, device=device, requires_grad=True),
        mems=torch.randn(b, mlen, c.d_model, device=device),
        r=model._positions(mlen + qlen, c.clamp_len, device),
        seq_pos=seq_pos,
        attn_mask=model._attn_mask(qlen, mlen, device, c.span(), seq_pos),
        grad=torch.randn(b, qlen, c.d_model, device=device),
        dtype=dtype,
    )


def piece_block_mask(seq_pos: torch.Tensor, mlen: int, span: AttnSpan) -> BlockMask:
    """The model's _attn_mask as a FlexAttention block mask: keys in the future, keys before the query's piece began
    and, with same_length, keys older than mem_len are left out (blocks wholly left out are skipped, not computed)."""
    b, qlen = seq_pos.shape
    klen = mlen + qlen
    mask_len = klen - span.mem_len
    shift = qlen - mask_len if mask_len > 0 else qlen  # as _attn_mask's same_length

    def mask_mod(bi: torch.Tensor, hi: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        distance = i + mlen - j
        keep = (distance >= 0) & (distance <= seq_pos[bi, i])
        return keep & (distance < shift + mlen) if span.same_length else keep

    return create_block_mask(mask_mod, b, None, qlen, klen, device=seq_pos.device)


def flex_attend(block_mask: BlockMask, flex: Callable) -> Callable:
    """An `_attend` for RelPartialLearnableMultiHeadAttn that takes the position term in a score_mod and masks with
    `block_mask` (the dense attn_mask it is handed goes unused)."""

    def attend(q, k, v, r_head_k, r_w_bias, r_r_bias, attn_mask):  # noqa: ANN001, ANN202, ARG001
        qlen, klen, scale = q.size(2), k.size(2), q.size(-1) ** -0.5
        # (b) + (d) against distances klen-1 ... 0, one row per query: no _rel_shift, no masking, no scaled copy.
        bd = torch.einsum("bhid,jhd->bhij", q + r_r_bias.to(q.dtype)[:, None], r_head_k)

        def score_mod(score, bi, hi, i, j):  # noqa: ANN001, ANN202
            # Key j is at distance i + mlen - j from query i: bd's column qlen-1-i+j. A future key (masked out)
            # would read past the end, so it is clamped into range.
            return score + bd[bi, hi, i, torch.clamp(qlen - 1 - i + j, max=klen - 1)] * scale

        return flex(q + r_w_bias.to(q.dtype)[:, None], k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)

    return attend


def saved_bytes(run: Callable[[], torch.Tensor], weights: set[int]) -> int:
    """Bytes of the distinct storages that autograd keeps for backward while `run()` runs, the weights left out."""
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, FakeTensor):  # seen while eager FlexAttention traces its score_mod: holds no memory
            return t
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()  # alive until backward, so no address is reused meanwhile
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(kept.values())


@contextlib.contextmanager
def cpu_backward_refusal_lifted() -> Iterator[None]:
    """torch refuses a CPU query that needs a gradient before it dispatches to FlexAttention (it has no CPU backward
    kernel); lifted, the eager autograd function records what it saves for backward, the same on any device."""
    check = flex_module._validate_device
    flex_module._validate_device = lambda *tensors: None
    try:
        yield
    finally:
        flex_module._validate_device = check


@dataclass
class Contender:
    """One way to run the layer: its own copy of the weights (so compiled and eager copies do not mix)."""

    name: str
    attn: RelPartialLearnableMultiHeadAttn
    layer: Callable  # attn, or attn compiled
    case: Case
    trainable: bool  # False: FlexAttention on a CPU, which has no backward there

    def forward(self, grad: bool) -> torch.Tensor:
        """The layer's output, under the case's autocast, with or without a graph for backward."""
        c, model = self.case, self.case.model
        with torch.set_grad_enabled(grad), autocast(c.w.device, c.dtype):
            return self.layer(c.w, c.r, model.r_w_bias, model.r_r_bias, c.attn_mask, c.mems)

    def train(self) -> None:
        """One forward and backward, gradients set afresh as an optimiser step leaves them."""
        self.attn.zero_grad(set_to_none=True)
        self.case.w.grad = None
        self.forward(True).backward(self.case.grad)


def contender(name: str, case: Case) -> Contender:
    """The named contender on a copy of the case's layer."""
    flex, compiled = CONTENDERS[name]
    attn = copy.deepcopy(case.attn)
    if flex:
        mask = piece_block_mask(case.seq_pos, case.mems.size(1), case.model.cfg.span())
        attn._attend = flex_attend(mask, flex_attention)
    layer = torch.compile(attn) if compiled else attn
    return Contender(name, attn, layer, case, trainable=case.w.is_cuda or not flex)


def time_all(contenders: list[Contender], steps: int, warmup: int) -> dict[tuple[str, str], list[float]]:
    """Seconds of every call, per (contender, pass): round by round, each contender in turn, so that a machine
    shared with other work slows them alike; the first round compiles."""
    cuda = contenders[0].case.w.is_cuda
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(warmup + steps):
        for c in contenders:
            passes = {"forward": lambda c=c: c.forward(False), "train": c.train}
            for name, fn in passes.items():
                if name == "train" and not c.trainable:
                    continue
                started = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize()
                times.setdefault((c.name, name), []).append(time.perf_counter() - started)
    return times


def memory(c: Contender, peer_out: torch.Tensor | None) -> dict:
    """A contender's bytes saved for backward, its CUDA peak above what is resident, and its output's distance from
    the peer's."""
    result = {}
    out = c.forward(False).float()
    result["max_diff"] = None if peer_out is None else (out - peer_out).abs().max().item()
    weights = {p.untyped_storage().data_ptr() for p in c.attn.parameters()}
    _, compiled = CONTENDERS[c.name]
    if c.trainable or not compiled:
        with contextlib.nullcontext() if c.trainable else cpu_backward_refusal_lifted():
            result["saved"] = saved_bytes(lambda: c.forward(True), weights)
    if c.case.w.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        c.train()
        result["cuda_peak"] = torch.cuda.max_memory_allocated() - base
    return {**result, "out": out}


def machine() -> str:
    """The device the run used, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    memory = Path("/proc/meminfo").read_text().split()[1] if Path("/proc/meminfo").is_file() else "0"
    name = names[0] if names else "CPU"
    return f"{name}, {int(memory) / 2**20:.0f} GiB, {torch.get_num_threads()} threads, torch {torch.__version__}"


def cell(value: float | None, unit: float, peer: float | None, faster: bool) -> str:
    """A table cell: the value in `unit`s and its ratio to the peer's (speed-up for times, share for memory)."""
    if value is None:
        return "n/a | "
    if not peer:
        return f"{value / unit:,.1f} | "
    ratio = peer / value if faster else value / peer
    return f"{value / unit:,.1f} | {ratio:.2f}× "


def print_table(results: list[dict], cuda: bool) -> None:
    """The Markdown table: times as speed-ups over the peer, memory as a share of the peer's."""
    peer = results[0]
    head = "| contender | forward ms | speed-up | forward+backward ms | speed-up | saved for backward MiB | share "
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: "
    if cuda:
        head, rule = head + "| CUDA peak MiB | share ", rule + "| ---: | ---: "
    print(head + "| max \\|Δ\\| vs peer |")
    print(rule + "| ---: |")
    for r in results:
        row = f"| {r['name']} | " + cell(r["forward"], 1e-3, peer["forward"], True)
        row += "| " + cell(r.get("train"), 1e-3, peer.get("train"), True)
        row += "| " + cell(r.get("saved"), 2**20, peer.get("saved"), False)
        if cuda:
            row += "| " + cell(r.get("cuda_peak"), 2**20, peer.get("cuda_peak"), False)
        diff = "peer" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        print(row + f"| {diff} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--batch", type=int, default=0, help="rows; 0 takes train.batch_size")
    parser.add_argument("--tgt-len", type=int, default=0, help="queries per row; 0 takes model.tgt_len")
    parser.add_argument("--mem-len", type=int, default=None, help="remembered states per row; default model.mem_len")
    parser.add_argument("--precision", default="auto", choices=("auto", "bfloat16", "float32"))
    parser.add_argument("--steps", type=int, default=5, help="timed calls per contender and pass")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled contenders")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    case = make_case(args, device)
    names = [n for n, (_, compiled) in CONTENDERS.items() if not (compiled and args.no_compile)]
    contenders = [contender(name, case) for name in names]
    times = time_all(contenders, args.steps, args.warmup)
    results, peer_out = [], None
    for c in contenders:
        result = {"name": c.name, **memory(c, peer_out)}
        peer_out = result.pop("out") if peer_out is None else peer_out
        for key in ("forward", "train"):
            if (c.name, key) in times:
                result[key] = min(times[c.name, key][args.warmup :])  # the least disturbed call
        results.append(result)
        first = ", ".join(f"{k} {times[c.name, k][0]:.1f} s" for k in ("forward", "train") if (c.name, k) in times)
        print(f"{c.name}: first calls: {first}", flush=True)
    c, (b, qlen) = case.model.cfg, case.seq_pos.shape
    started = time.perf_counter()
    piece_block_mask(case.seq_pos, case.mems.size(1), c.span())
    mask_ms = (time.perf_counter() - started) * 1e3
    print(f"\nmachine: {machine()}")
    print(f"layer: d_model {c.d_model}, {c.n_head} heads × {c.d_head}; batch {b} × tgt_len {qlen}, mem_len "
          f"{c.mem_len}; {case.dtype or torch.float32}; fastest of {args.steps} calls after {args.warmup}")  # fmt: skip
    print(f"the block mask (built once per forward for every layer): {mask_ms:.0f} ms\n")
    print_table(results, device.type == "cuda")
    if device.type == "cpu":
        print("\nn/a: FlexAttention has no backward on a CPU in this torch; its compiled saved bytes need one too.")


if __name__ == "__main__":
    main()
