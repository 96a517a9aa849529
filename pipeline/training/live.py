"""What the train stage reports as it runs: a progress line on the console, and DVCLive's metrics and plots.

DVCLive is imported lazily and skipped when it is not installed, so training needs only torch and numpy.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from pipeline.atomic import atomic_write_text


class Progress:
    """A status line (step, loss, tokens/s, time left) redrawn in place on a terminal; log lines otherwise."""

    def __init__(self, steps: int, start_step: int, tokens_per_step: int) -> None:
        self.steps, self.start_step, self.tokens_per_step = steps, start_step, tokens_per_step
        self.started, self.live = time.perf_counter(), sys.stderr.isatty()

    def update(self, step: int, loss: float, lr: float) -> None:
        rate = (step - self.start_step) * self.tokens_per_step / max(time.perf_counter() - self.started, 1e-9)
        left = (self.steps - step) * self.tokens_per_step / max(rate, 1e-9)
        status = f"step {step}/{self.steps} loss {loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s, {left / 60:.1f} min left"
        if self.live:
            done = int(30 * step / self.steps)
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {status}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(status, flush=True)

    def line(self, text: str) -> None:
        if self.live:
            print("\r\033[K", end="", file=sys.stderr)
        print(text, flush=True)


def open_live(live_dir: Path | None, resume_step: int | None):  # noqa: ANN202 (a dvclive.Live, or None)
    """DVCLive logging into live_dir: afresh, or continuing the history of a resumed run from its checkpoint step."""
    if live_dir is None:
        return None
    try:
        from dvclive import Live
    except ImportError:
        print("train: dvclive is not installed; metrics are printed only")
        return None
    if resume_step is not None:
        trim_history(Path(live_dir) / "plots" / "metrics", resume_step)
        summary = Path(live_dir) / "metrics.json"  # DVCLive reads it on resuming, but writes it in place
        try:
            if summary.is_file():
                json.loads(summary.read_text())
        except ValueError:  # cut short by a kill: the checkpoint's metrics, logged next, make it whole again
            print(f"train: {summary} was cut short (a killed run); it is written again from the checkpoint")
            summary.unlink()
    return Live(dir=str(live_dir), resume=resume_step is not None, dvcyaml=None, save_dvc_exp=False)


def trim_history(plots: Path, step: int) -> None:
    """Drop metric rows after `step` (logged after the last checkpoint by a run that was killed), atomically.

    A row cut short by the kill, or otherwise unreadable, is dropped too.
    """
    for tsv in sorted(plots.rglob("*.tsv")):
        lines = tsv.read_text().splitlines(keepends=True)
        header = lines[0].rstrip("\n").split("\t") if lines else []
        if "step" not in header:
            continue
        column, kept = header.index("step"), lines[:1]
        for line in lines[1:]:
            cells = line.rstrip("\n").split("\t")
            if (
                line.endswith("\n")
                and len(cells) == len(header)
                and cells[column].isdigit()
                and int(cells[column]) <= step
            ):
                kept.append(line)
        if len(kept) < len(lines):
            atomic_write_text(tsv, "".join(kept))


def log_metrics(live, step: int, logged: dict, num_params: int, tokens_per_step: int, plot: bool = True) -> None:  # noqa: ANN001
    """Plot points for this step, and a summary that also says the model's size and the tokens seen so far."""
    live.step = step
    for name, value in logged.items():
        live.log_metric(name, value, plot=plot)
    live.summary["num_params"] = num_params
    live.summary["tokens_seen"] = step * tokens_per_step
    live.make_summary()


def write_trained_params(path: Path, record: dict) -> None:
    """What is trained (the model's shape, the train params after the CPU profile, device and precision), as YAML:
    reports/train/params.yaml, which dvc.yaml lists as a params file, so `dvc exp show` shows it beside params.yaml."""
    import yaml

    atomic_write_text(Path(path), yaml.safe_dump(record, sort_keys=False))


def write_run_record(  # noqa: PLR0913
    path: Path, seconds: float, steps: int, tokens_per_step: int, device: str, processes: int, code: list[dict]
) -> None:
    """What this invocation measured (wall time, tokens/s, hardware) and which steps of the run ran under which code
    (`checkpoints.code_steps`): reports/train/run.json, read by the report's section of run-to-run figures. It is not a
    DVC metric, so it never shows up as a change between experiments."""
    if device == "cuda":
        import torch

        hardware = f"{processes} × {torch.cuda.get_device_name()}"
    else:
        hardware = f"{platform.machine()} CPU, {os.cpu_count()} cores, {cpu_model()}"
    record = {
        "wall_seconds": round(seconds, 1),
        "steps": steps,
        "tokens_per_second": round(steps * tokens_per_step / max(seconds, 1e-9), 1),
        "hardware": hardware,
        "device": device,
        "processes": processes,
        "code": code,
    }
    atomic_write_text(Path(path), json.dumps(record, indent=2) + "\n")


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or "unknown model")
