"""Train-step throughput of the Transformer-XL: tokens/s, model FLOPs utilisation and peak memory per precision and
compile setting, each against eager float32 on the same model, batch and machine in the same run. On a GPU it also
gives the activations' peak per layer (the step's peak above the weights, gradients and optimiser state, over
n_layer), where eager and compiled attention differ most.

Usage: python benchmarks/train.py [--params params.yaml] [--tokens data/tokens] [--steps 30] [--warmup 8]
                                   [--batch-size N] [--peak-tflops T] [--json results.json]

On CUDA the model is params.yaml's `model:` with `train.batch_size`; on a CPU the same after `train.cpu_limits`, as the
train stage would run it. Each setting runs in its own process, so its peak memory and compile cache are its own.
Batches come from the token shards when they exist (random ids otherwise: the speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peaks from the vendors' data sheets, FLOP/s.
BF16_PEAK = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}

SETTINGS = {  # name: (bf16 autocast, torch.compile, TF32 matmuls)
    "eager float32": (False, False, False),
    "eager float32 + TF32": (False, False, True),
    "eager bf16": (True, False, True),
    "compiled bf16": (True, True, True),
    "compiled float32": (False, True, False),
}
PEER = "eager float32"
ONE_RUN_OPTIONS = ("params", "tokens", "steps", "warmup", "batch_size", "peak_tflops")


def settings_for(cuda: bool) -> list[str]:
    """The settings worth measuring on this machine (bf16 on a CPU only where it is native)."""
    from model.device import cpu_has_bf16

    if cuda:
        return ["eager float32", "eager float32 + TF32", "eager bf16", "compiled bf16"]
    return ["eager float32", "compiled float32"] + (["eager bf16", "compiled bf16"] if cpu_has_bf16() else [])


def peak_flops(name: str) -> float | None:
    """The bf16 peak of a GPU named like torch.cuda.get_device_name, or None when it is not in the table."""
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if key in name:
            return BF16_PEAK[key]
    return None


def measure(setting: str, args: argparse.Namespace) -> dict:
    """Time `args.steps` train steps (after `args.warmup` untimed ones) of the train stage's own step function."""
    import numpy as np
    import torch

    from pipeline import cpu_profile
    from pipeline.checkpoint import build_model, model_section
    from pipeline.params import load_section, typed
    from pipeline.segments import PieceStore, Segment, SegmentStream, load_vocab
    from pipeline.train import TrainParams, segment_tensors, train_step

    bf16, compiled, tf32 = SETTINGS[setting]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    model_params = model_section(load_section("model", args.params))
    p = TrainParams(**typed(TrainParams, load_section("train", args.params), "train"))
    if cpu_profile.applies(p.profile, device):
        model_params, p, _ = cpu_profile.for_training(model_params, p)
    batch_size = args.batch_size or p.batch_size
    tokens = Path(args.tokens)
    vocab = load_vocab(tokens) if (tokens / "vocab.json").is_file() else {"vocab_size": 390}
    torch.manual_seed(0)
    model = build_model(vocab, model_params).to(device)
    cfg = model.cfg
    state = cfg.side_size > 0
    if (tokens / "train" / "index.json").is_file():
        stream = SegmentStream(PieceStore(tokens, "train"), batch_size, cfg.tgt_len, seed=0, state_input=state)
        batches = (segment for epoch in count() for _, segment in stream.batches(epoch))
        source = "token shards"
    else:
        rng = np.random.default_rng(0)
        shape = (batch_size, cfg.tgt_len)
        side = (lambda: rng.random((*shape, cfg.side_size), np.float32)) if state else (lambda: None)
        batches = (Segment(rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape),
                           np.tile(np.arange(cfg.tgt_len), (batch_size, 1)), side()) for _ in count())  # fmt: skip
        source = "random ids"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)
    forward = torch.compile(model) if compiled else model
    mems: list = [None] * p.grad_accum

    dtype = torch.bfloat16 if bf16 else None

    def step() -> torch.Tensor:
        batch = segment_tensors(next(batches), device)
        return train_step(forward, model, optimizer, batch, mems, p.clip, device, dtype=dtype)

    for _ in range(max(1, args.warmup)):
        loss = step()
    float(loss)
    if cuda:
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()  # weights, optimiser state and memories, between steps
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    final_loss = float(loss)  # waits for the GPU
    seconds = time.perf_counter() - started
    tokens_per_s = args.steps * batch_size * cfg.tgt_len / seconds
    flops = model.flops_per_token(batch_size=batch_size)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(torch.cuda.get_device_name()) if cuda else None
    memory = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "setting": setting,
        "tokens_per_s": tokens_per_s,
        "tflops": tokens_per_s * flops / 1e12,
        "mfu": tokens_per_s * flops / peak if peak else None,
        "peak_memory_gib": memory / 2**30,
        "activations_per_layer_mib": (memory - resident) / cfg.n_layer / 2**20 if cuda else None,
        "loss": final_loss,
        "batch": f"{batch_size} × {cfg.tgt_len} (mem_len {cfg.mem_len})",
        "model": f"{cfg.n_layer} layers, d_model {cfg.d_model}, {model.num_params() / 1e6:.1f} M parameters",
        "flops_per_token": flops,
        "source": source,
        "machine": machine(),
    }


def machine() -> str:
    """The device the run used, in words."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--tokens", default=str(ROOT / "data" / "tokens"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per step; 0 takes train.batch_size")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak, when the GPU is not in the table")
    parser.add_argument("--settings", nargs="*", choices=sorted(SETTINGS), help="default: those suited to the device")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run a single setting in this process and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    import torch

    chosen = args.settings or settings_for(torch.cuda.is_available())  # only asks; starts no CUDA context
    if PEER not in chosen:
        chosen = [PEER, *chosen]
    results = []
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in ONE_RUN_OPTIONS]
    for setting in chosen:
        run = subprocess.run(
            [sys.executable, __file__, *passthrough, "--one", setting], capture_output=True, text=True, check=False
        )
        if run.returncode != 0:
            print(f"{setting}: failed\n{run.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"{setting}: {results[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    if not results:
        raise SystemExit("every setting failed")
    first = results[0]
    print(f"machine: {first['machine']}")
    print(f"model: {first['model']}; batch {first['batch']}; {first['flops_per_token'] / 1e6:.0f} MFLOP per token")
    print(f"batches from {first['source']}; {args.steps} timed steps after {args.warmup} warm-up steps\n")
    peer = next((r["tokens_per_s"] for r in results if r["setting"] == PEER), None)
    print("| setting | tokens/s | vs eager float32 | TFLOP/s | MFU (bf16 peak) | peak memory | activations per layer |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio = f"{r['tokens_per_s'] / peer:.2f}×" if peer else "n/a"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        per_layer = r.get("activations_per_layer_mib")
        per_layer = f"{per_layer:,.0f} MiB" if per_layer is not None else "n/a (CPU)"
        print(
            f"| {r['setting']} | {r['tokens_per_s']:,.0f} | {ratio} | {r['tflops']:.2f} | {mfu} | "
            f"{r['peak_memory_gib']:.2f} GiB | {per_layer} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": first["machine"], "results": results}, indent=2))


if __name__ == "__main__":
    main()
