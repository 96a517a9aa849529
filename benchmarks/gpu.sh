#!/usr/bin/env bash
# One run for a lent GPU, in under 9 minutes on one H100: the GPU tests, the train-step benchmark (the host's time per
# step, bf16 and compiled against eager float32), one attention layer (today's path against FlexAttention), a 5-minute
# training of params.yaml's model with its validation NLL, and the generation benchmark on the model it trained. It ends with one Markdown table, the card's name in it, for benchmarks/README.md.
#
# Usage: benchmarks/gpu.sh [--cpu] [--tokens DIR] [OUT_DIR]
#   OUT_DIR   where table.md, gpu.log, train-bench.json and generate.json go (default: $OUT)
#   --tokens  the token shards to train on (default: data/tokens)
#   --cpu     every step at a tiny size on the CPU, in about a minute: the check that the script itself runs
# Needs python3 with torch, numpy, PyYAML and typer (PYTHON names another interpreter), and safetensors (it reads the
# model folder); pytest for the GPU tests, else they are skipped with a line saying so. Nothing is fetched from the
# network: a wheel under the repository brings what the interpreter lacks (one folder down, e.g. .whl/, not committed),
# fetched beforehand on a machine with the network for the GPU image's Python (safetensors has no dependencies):
#   pip download safetensors --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl
#   pip download pytest --only-binary=:all: --python-version 3.12 -d .whl   (pytest with its dependencies)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
mode=gpu
tokens=$root/data/tokens
out=${OUT:-}
while (($#)); do
    case $1 in
        --cpu) mode=cpu ;;
        --tokens) tokens=$(cd "$2" && pwd); shift ;;
        -h | --help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
if [[ -z $out ]]; then
    echo "gpu.sh: give an output folder (or set OUT)" >&2
    exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$out/gpu.log
: >"$log"
export PYTHONUNBUFFERED=1
failed=()

if ! "$PYTHON" -c 'import numpy, torch, typer, yaml' 2>/dev/null; then
    echo "gpu.sh: $PYTHON lacks torch, numpy, PyYAML or typer (PYTHON names another interpreter)" >&2
    exit 1
fi
if [[ $mode == cpu ]]; then
    export CUDA_VISIBLE_DEVICES=""  # the CPU even where there is a GPU: this mode checks the script, not the card
    train_seconds=8 startup_seconds=5 max_steps=12 deadline=0
    bench_args=(--steps 2 --warmup 1 --batch-size 2 --settings "eager float32" --host-steps 2 --host-batch 16 --ranks 2)
    generate_args=(--batches 1 --context 32 --steps 4)
    attention_args=(--batch 1 --tgt-len 32 --mem-len 32 --no-compile --steps 1 --warmup 1)
else
    if ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
        echo "gpu.sh: no CUDA GPU here (benchmarks/gpu.sh --cpu runs the tiny CPU mode)" >&2
        exit 1
    fi
    # Start-up, compilation (its cache warm from the train-step benchmark), evaluations and the export fit in the
    # allowance; the steps fill the rest of the 5 minutes at the measured speed, and the time cap stops a slow run.
    # The training gets less than 5 minutes only where the steps before it leave less before the deadline (the whole
    # script's, less a minute for the generation benchmark).
    train_seconds=300 startup_seconds=60 max_steps=0 deadline=$((8 * 60 + 40))
    bench_args=(--steps 15 --warmup 6 --settings "eager float32" "eager bf16" "compiled bf16")
    generate_args=(--batches 1 8)
    attention_args=(--steps 3 --warmup 2)
fi

# Runs a step, its output into the log; records its wall time, and its failure without stopping the others.
step() {
    local name=$1 started=$SECONDS status=0
    shift
    echo "== $name" | tee -a "$log"
    "$@" >>"$log" 2>&1 || status=$?
    echo "$name $((SECONDS - started))" >>"$work/times"
    if ((status != 0)); then
        echo "   failed (exit $status); the log's last lines:"
        tail -n 15 "$log" | sed 's/^/   | /'
        failed+=("$name")
    fi
    echo "   $((SECONDS - started)) s"
}

# A module from a wheel under the repository when the interpreter lacks it (a machine without network access): the
# wheel's folder, with the dependencies beside it, installed offline into a folder put on PYTHONPATH for every step.
from_wheel() {
    local module=$1 wheel
    "$PYTHON" -c "import $module" 2>/dev/null && return 0
    wheel=$(find "$root" -maxdepth 2 -name "$module-*.whl" -not -path '*/.venv/*' -print -quit)
    [[ -n $wheel ]] || return 1
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$work/site" "$(dirname "$wheel")"/*.whl >>"$log" 2>&1 ||
        return 1
    [[ :${PYTHONPATH:-}: == *:$work/site:* ]] || export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
    "$PYTHON" -c "import $module" 2>/dev/null
}

# The train stage writes the model folder and the generation benchmark reads it through model/weights.py: no run
# without safetensors.
if ! from_wheel safetensors; then
    echo "gpu.sh: $PYTHON lacks safetensors and no safetensors-*.whl is under $root (the top of gpu.sh says how to" \
        "fetch one)" >&2
    exit 1
fi

gpu_tests() {
    timeout --signal=INT 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py | tee "$work/pytest.txt"
}

# The params to train with: params.yaml, train.steps set to what fits in train_seconds (in the CPU mode a tiny model).
training_params() {
    "$PYTHON" - "$root/params.yaml" "$out/train-bench.json" "$work/params.yaml" "$mode" \
        "$train_seconds" "$startup_seconds" "$max_steps" <<'EOF'
import json, sys
import yaml
source, bench, target, mode, seconds, startup, most = sys.argv[1:]
params = yaml.safe_load(open(source))
if mode == "cpu":  # every size tiny; the CPU profile's limits are all larger, so they change nothing
    params["model"].update(n_layer=2, d_model=64, n_head=2, d_head=32, d_inner=128, tgt_len=32, mem_len=32)
    params["train"].update(batch_size=4, warmup_steps=2, eval_interval=4, eval_segments=2, eval_batch_size=2,
                           checkpoint_interval=1000, log_interval=2, profile="cpu")
train = params["train"]
try:
    rows = json.load(open(bench))["results"]
    best = next((r for r in rows if r["setting"] == "compiled bf16"), None) or max(rows, key=lambda r: r["tokens_per_s"])
    per_step = train["batch_size"] * params["model"]["tgt_len"]
    steps = max(1, int((float(seconds) - float(startup)) * best["tokens_per_s"] / per_step))
    print(f"{best['setting']}: {best['tokens_per_s']:,.0f} tokens/s, so {steps:,} steps fit")
except (OSError, ValueError, KeyError) as exc:
    steps = 1000
    print(f"no train-step figure ({exc!r}): {steps} steps, the time cap stops them")
train["steps"] = min(steps, int(most)) if int(most) else steps
train["eval_interval"] = min(train["eval_interval"], train["steps"])
yaml.safe_dump(params, open(target, "w"), sort_keys=False)
EOF
}

# The train stage's own command on params.yaml's model, stopped (SIGINT: a checkpoint, then exit) past the time cap.
training() {
    local status=0
    timeout --signal=INT --kill-after=30 $((train_seconds + 45)) "$PYTHON" -m pipeline train \
        --params "$work/params.yaml" --tokens "$tokens" --checkpoints "$work/checkpoints" --shared "$work/shared" \
        --out "$work/model" --live "$work/live" | tee "$work/training.txt" || status=$?
    echo "exit $status" >>"$work/training.txt"
    if ((status == 124)); then  # stopped with a checkpoint: export the model as it is, for the generation benchmark
        echo "train: stopped by the time cap ($((train_seconds + 45)) s)"
        export_as_stopped
        return
    fi
    return "$status"
}

# A run the time cap stopped, finished at the step it reached (train.steps lowered to it) and exported as it is.
export_as_stopped() {
    "$PYTHON" - "$work/checkpoints/last.pt" "$work/params.yaml" <<'EOF'
import sys
import torch
import yaml
step = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["step"]
params = yaml.safe_load(open(sys.argv[2]))
params["train"]["steps"] = step
yaml.safe_dump(params, open(sys.argv[2], "w"), sort_keys=False)
print(f"train: exporting the run as it stands at step {step}")
EOF
    "$PYTHON" -m pipeline train --params "$work/params.yaml" --tokens "$tokens" --checkpoints "$work/checkpoints" \
        --shared "$work/shared" --out "$work/model" --live "$work/live"
}

driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1) || driver=""
"$PYTHON" - "$driver" >"$work/card.txt" <<'EOF'
import sys
import torch
if torch.cuda.is_available():
    driver = f", driver {sys.argv[1]}" if sys.argv[1] else ""
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}{driver}")
else:
    print(f"no GPU: the CPU mode, torch {torch.__version__}")
EOF
echo "card: $(cat "$work/card.txt")"
if from_wheel pytest; then
    step "GPU tests" gpu_tests
else
    echo "GPU tests skipped: no pytest in $PYTHON and no pytest wheel under $root" | tee -a "$log" "$work/pytest.txt"
fi
step "train-step benchmark" timeout 150 "$PYTHON" benchmarks/train.py --params "$root/params.yaml" --tokens "$tokens" \
    "${bench_args[@]}" --json "$out/train-bench.json"
attention() {
    timeout 60 "$PYTHON" benchmarks/attention.py --params "$root/params.yaml" "${attention_args[@]}" |
        tee "$work/attention.txt"
}
step "attention benchmark" attention
if ((deadline)); then
    train_seconds=$((train_seconds < deadline - SECONDS - 60 ? train_seconds : deadline - SECONDS - 60))
    train_seconds=$((train_seconds > startup_seconds + 30 ? train_seconds : startup_seconds + 30))
fi
echo "$train_seconds" >"$work/budget"
step "training params" training_params
step "training" training
step "generation benchmark" timeout 90 "$PYTHON" benchmarks/generate.py --model "$work/model" --tokens "$tokens" \
    --params "$work/params.yaml" "${generate_args[@]}" --json "$out/generate.json"

echo
"$PYTHON" - "$work" "$out" <<'EOF' | tee "$out/table.md"
import json, re, sys
from pathlib import Path
import yaml
work, out = Path(sys.argv[1]), Path(sys.argv[2])
times = dict(line.rsplit(" ", 1) for line in (work / "times").read_text().splitlines())
def read(path):
    return path.read_text() if path.is_file() else ""
def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
rows = [("card", read(work / "card.txt").strip(), "", "")]
tests = read(work / "pytest.txt").strip().splitlines()
rows.append(("GPU tests", "`pytest tests/test_gpu.py`", tests[-1].strip("= ") if tests else "no result", times.get("GPU tests", "")))
bench = load(out / "train-bench.json") or {"results": []}
peer = next((r["tokens_per_s"] for r in bench["results"] if r["setting"] == "eager float32"), None)
for i, r in enumerate(bench["results"]):
    mfu = f"MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "MFU n/a"
    ratio = f"{r['tokens_per_s'] / peer:.2f}× eager float32" if peer else "no eager float32"
    result = f"{r['tokens_per_s']:,.0f} tokens/s, {ratio}, {mfu}, peak {r['peak_memory_gib']:.2f} GiB"
    if r.get("activations_per_layer_mib") is not None:
        result += f", activations {r['activations_per_layer_mib']:,.0f} MiB per layer"
    rows.append(("train step", f"{r['setting']}, {r['batch']}", result, times.get("train-step benchmark", "") if i == 0 else ""))
host = bench.get("host")
if host:
    result = (f"{host['now_ms']:.2f} ms per step on the host (one process of {host['world']}, {host['rows'] // host['world']} rows), "
              f"{host['device_state_ms']:.2f} ms piano state on the {host['device']}; before: {host['before_ms']:.0f} ms")
    rows.append(("host time", f"batch {host['rows']} × {host['tgt_len']}, {host['source']}", result, ""))
if not bench["results"]:
    rows.append(("train step", "", "no result", times.get("train-step benchmark", "")))
attention = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in read(work / "attention.txt").splitlines()
             if line.startswith("| today's") or line.startswith("| FlexAttention")]
for i, cells in enumerate(attention):  # contender, forward ms, ×, forward+backward ms, ×, saved MiB, share, |Δ|
    result = f"forward {cells[1]} ms ({cells[2]}), forward+backward {cells[3]} ms ({cells[4] or 'n/a'}), saved {cells[5]} MiB"
    rows.append(("attention", f"one layer, {cells[0]}", result, times.get("attention benchmark", "") if i == 0 else ""))
log = read(work / "training.txt")
nll = re.findall(r"step (\d+): validation NLL ([\d.]+)", log)
params = yaml.safe_load(read(work / "params.yaml") or "{}") or {}
shape = params.get("model", {})
steps, budget = params.get("train", {}).get("steps", "?"), read(work / "budget").strip()
steps = f"{steps:,}" if isinstance(steps, int) else steps
what = f"{shape.get('n_layer')} layers, d_model {shape.get('d_model')}; {steps} steps in a {budget} s budget"
status = (re.findall(r"^exit (\d+)$", log, re.M) or ["0"])[-1]
stopped = {"0": "", "124": " (stopped by the time cap)"}.get(status, f" (the run failed: exit {status})")
result = f"validation NLL {float(nll[-1][1]):.3f} at step {int(nll[-1][0]):,}{stopped}" if nll else "no validation NLL"
rows.append(("training", what, result, times.get("training", "")))
generated = load(out / "generate.json") or []
for i, r in enumerate(generated):
    ratio = f"{r['vs_recompute']:.1f}" if r["vs_recompute"] < 10 else f"{r['vs_recompute']:.0f}"
    result = f"{r['tokens_per_s']:,.1f} tokens/s, {r['music_s_per_s']:.2f} s of music/s, {ratio}× recompute"
    setting = f"{r['model']}, batch {r['batch']}, {r['contender']}"
    rows.append(("generate", setting, result, times.get("generation benchmark", "") if i == 0 else ""))
if not generated:
    rows.append(("generate", "", "no result", times.get("generation benchmark", "")))
print("| step | setting | result | wall time |\n| --- | --- | --- | ---: |")
for name, setting, result, seconds in rows:
    print(f"| {name} | {setting} | {result} | {seconds + ' s' if seconds else ''} |")
EOF
if ((${#failed[@]})); then
    echo "failed: ${failed[*]} (see $log)" >&2
    exit 1
fi
