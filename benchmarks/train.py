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
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from model import TransformerXL, TransformerXLConfig
    from pipeline.params import TrainParams

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
    import torch

    from pipeline.train import train_step

    bf16, compiled, tf32 = SETTINGS[setting]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    model, p, batch_size = stage_model(args, device)
    cfg = model.cfg
    batches, source = stage_batches(Path(args.tokens), batch_size, cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the stage's, on a GPU or a CPU
    forward = torch.compile(model) if compiled else model
    mems: list = [None] * p.grad_accum

    dtype = torch.bfloat16 if bf16 else None

    def step() -> torch.Tensor:
        batch = next(batches)
        return train_step(forward, model, optimizer, batch, mems, p.clip, device, dtype=dtype)

    seconds, final_loss, resident = timed_steps(step, args.warmup, args.steps, cuda)
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


def stage_model(args: argparse.Namespace, device: torch.device) -> tuple[TransformerXL, TrainParams, int]:
    """The model the train stage would build on `device` (seeded), its train params (after the CPU profile where it
    applies) and the batch size: `args.batch_size`, or the train params'."""
    import torch

    from pipeline.model_folder import build_model, model_section
    from pipeline.params import TrainParams, load_section, typed
    from pipeline.token_folder import load_vocab
    from pipeline.training import cpu_profile

    model_params = model_section(load_section("model", args.params))
    p = TrainParams(**typed(TrainParams, load_section("train", args.params), "train"))
    if cpu_profile.applies(p.profile, device):
        model_params, p, _ = cpu_profile.for_training(model_params, p)
    batch_size = args.batch_size or p.batch_size
    tokens = Path(args.tokens)
    vocab = load_vocab(tokens) if (tokens / "vocab.json").is_file() else {"vocab_size": 390}
    torch.manual_seed(0)
    return build_model(vocab, model_params).to(device), p, batch_size


def stage_batches(
    tokens: Path, batch_size: int, cfg: TransformerXLConfig, device: torch.device
) -> tuple[Iterator, str]:
    """Endless train batches on `device` as the stage makes them from the token shards, or random ids when there are
    none; with where they come from."""
    from pipeline.model_folder import reads_texture
    from pipeline.token_folder import PieceStore
    from pipeline.training.batches import device_batches
    from pipeline.training.segments import SegmentStream

    if (tokens / "train" / "index.json").is_file():
        state = cfg.side_size > 0
        stream = SegmentStream(PieceStore(tokens, "train"), batch_size, cfg.tgt_len, seed=0, state_input=state,
                               texture_input=reads_texture(cfg))  # fmt: skip
        return (batch for epoch in count() for _, batch in device_batches(stream, device, epoch)), "token shards"
    return random_batches(batch_size, cfg, device), "random ids"


def timed_steps(
    step: Callable[[], torch.Tensor], warmup: int, steps: int, cuda: bool
) -> tuple[float, float, int | None]:
    """Run max(1, warmup) untimed steps, then `steps` timed ones: their seconds, the last loss and, on CUDA, the memory
    allocated between steps (weights, optimiser state and memories)."""
    import torch

    resident = None
    for _ in range(max(1, warmup)):
        loss = step()
    float(loss)
    if cuda:
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    final_loss = float(loss)  # waits for the GPU
    return time.perf_counter() - started, final_loss, resident


def random_batches(rows: int, cfg: object, device: object) -> Iterator[dict]:
    """Batches of random ids on `device`, with the piano state of their tokens for a state-input model (and a random
    texture track of six windows for a model that reads one)."""
    import torch

    from pipeline.model_folder import reads_texture
    from pipeline.music.piano_state_torch import PianoState
    from pipeline.music.texture import TRACK_COLUMNS

    track = torch.rand(rows, 6, TRACK_COLUMNS, device=device) * 100 if reads_texture(cfg) else None
    piano = PianoState(rows, device, track) if cfg.side_size else None
    while True:
        tokens = torch.randint(0, cfg.vocab_size, (rows, cfg.tgt_len + 1), device=device)
        batch = {
            "tokens": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "seq_pos": torch.arange(cfg.tgt_len, device=device).expand(rows, -1),
        }
        if piano is not None:
            batch["side"] = piano(batch["tokens"])
        yield batch


class _RandomStore:
    """Pieces of random events, each opening with PIECE_START, standing in for token shards that are not there."""

    def __init__(self, pieces: int = 400, length: int = 4000) -> None:
        import numpy as np

        from pipeline.music.performance_encoding import PIECE_START

        rng = np.random.default_rng(0)
        self.pieces = [np.concatenate([[PIECE_START], rng.integers(0, 388, length - 1)]).astype(np.uint16)
                       for _ in range(pieces)]  # fmt: skip
        self.index = {"label": rng.integers(1, 10, pieces).tolist()}
        self.total_tokens = pieces * length

    def __len__(self) -> int:
        return len(self.pieces)

    def piece(self, i: int) -> object:
        return self.pieces[i]


def host_time(args: argparse.Namespace) -> dict:
    """The host's milliseconds per step of one process of `args.ranks` at the GPU shape (params.yaml as written, no
    CPU profile), without the model: the data path, the process's rows, their transfer; beside the path before the
    piano state moved to the device (numpy, every row), and the step time the FLOP count gives on an H100."""
    import numpy as np
    import torch

    from pipeline.model_folder import build_model, model_section, reads_texture
    from pipeline.music.piano_state import PianoState as NumpyState
    from pipeline.music.piano_state_torch import PianoState
    from pipeline.params import TrainParams, load_section, typed
    from pipeline.token_folder import PieceStore, load_vocab
    from pipeline.training.batches import segment_tensors
    from pipeline.training.segments import SegmentStream, pitch_ranges

    p = TrainParams(**typed(TrainParams, load_section("train", args.params), "train"))
    tokens, rows, steps = Path(args.tokens), args.host_batch or p.batch_size, args.host_steps
    shards = (tokens / "train" / "index.json").is_file()
    vocab = load_vocab(tokens) if shards else {"vocab_size": 390, "composers": [str(i) for i in range(9)]}
    with torch.device("meta"):  # the shape and FLOP count only
        model = build_model(vocab, model_section(load_section("model", args.params)))
    cfg, world = model.cfg, args.ranks
    store = PieceStore(tokens, "train") if shards else None
    if store is None or store.total_tokens < 2 * rows * cfg.tgt_len * (steps + 2):  # too few to fill the rows
        store, shards = _RandomStore(), False
    ranges = tuple(pitch_ranges(vocab)) if shards else ()
    stream = SegmentStream(store, rows, cfg.tgt_len, 0, p.transpose, ranges, cfg.side_size > 0, cfg.n_labels > 0,
                           texture_input=reads_texture(cfg))  # fmt: skip
    started = time.perf_counter()
    streams = stream.rows(0)
    epoch_s = time.perf_counter() - started

    def per_step(work: Callable[[int], object]) -> float:
        work(0)  # warm
        begun = time.perf_counter()
        for k in range(1, steps + 1):
            work(k)
        return (time.perf_counter() - begun) / steps * 1e3

    numpy_state = NumpyState(rows)
    before = per_step(lambda k: numpy_state(streams[:, k * cfg.tgt_len : (k + 1) * cfg.tgt_len])[0::world])
    device, now = torch.device("cuda" if torch.cuda.is_available() else "cpu"), []
    wait = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for rank in range(world):
        segments = stream.batches(0, 0, slice(rank, None, world))
        now.append(per_step(lambda k, it=segments: segment_tensors(next(it)[1], device)))
        wait()  # the transfers too (on a GPU they run beside the step, from pinned memory)
    mine = torch.from_numpy(streams[0::world].astype(np.int64)).to(device)
    piano = PianoState(len(mine), device)
    device_ms = per_step(lambda k: (piano(mine[:, k * cfg.tgt_len : (k + 1) * cfg.tgt_len]), wait()))
    flops = model.flops_per_token(batch_size=rows) * rows * cfg.tgt_len / world
    return {"before_ms": before, "now_ms": float(np.mean(now)), "device_state_ms": device_ms, "epoch_s": epoch_s,
            "steps_per_epoch": (streams.shape[1] - 1) // cfg.tgt_len, "h100_ms": flops / BF16_PEAK["H100"] * 1e3,
            "rows": rows, "world": world, "tgt_len": cfg.tgt_len, "source": "token shards" if shards else "random ids",
            "model": f"{model.num_params() / 1e6:.1f} M parameters", "device": device.type}  # fmt: skip


def print_host_time(h: dict) -> None:
    """The host-time table."""
    mine = h["rows"] // h["world"]
    print(f"host time per step: batch {h['rows']} × {h['tgt_len']} over {h['world']} processes ({mine} rows each), "
          f"{h['model']}, {h['source']}; one process's work\n")  # fmt: skip
    print("| path | ms per step |\n| --- | ---: |")
    print(f"| before: numpy piano state of all {h['rows']} rows, then the process's rows (the peer) | "
          f"{h['before_ms']:.2f} |")  # fmt: skip
    print(f"| now, on the host: the process's {mine} rows, positions and labels, to the device | {h['now_ms']:.3f} |")
    print(f"| now, on the device ({h['device']}): the piano state of those rows | {h['device_state_ms']:.2f} |")
    print(f"| estimated H100 step from the FLOP count: at the bf16 peak / at 40% MFU | {h['h100_ms']:.1f} / "
          f"{h['h100_ms'] / 0.4:.1f} |")  # fmt: skip
    print(f"\nhost time {h['before_ms'] / max(h['now_ms'], 1e-9):,.0f}× less than before; each epoch's row streams "
          f"({h['epoch_s']:.2f} s per {h['steps_per_epoch']:,} steps) are laid in a background thread while the epoch "
          "before trains\n")  # fmt: skip


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
    parser.add_argument("--ranks", type=int, default=8, help="processes whose rows the host-time table splits")
    parser.add_argument("--host-steps", type=int, default=20, help="steps timed for the host-time table")
    parser.add_argument("--host-batch", type=int, default=0, help="rows of the host-time table; 0: train.batch_size")
    parser.add_argument("--host-only", action="store_true", help="print the host-time table only")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run a single setting in this process and print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    if args.host_only:
        print_host_time(host_time(args))
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
    host = host_time(args)  # after the settings: it starts this process's CUDA context, which theirs must not share
    print_host_time(host)
    print_settings(results, args)
    if args.json:
        record = {"machine": results[0]["machine"], "results": results, "host": host}
        Path(args.json).write_text(json.dumps(record, indent=2))


def print_settings(results: list[dict], args: argparse.Namespace) -> None:
    """The settings' table, each against eager float32."""
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


if __name__ == "__main__":
    main()
