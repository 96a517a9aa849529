"""The whole pipeline's time, stage by stage, beside its budget: runs `dvc repro` and stamps each stage as DVC starts
it, then times the fixed costs (`maestro-xl --help`, and `dvc repro` with nothing to do).

With --fresh it runs in a new clone of this commit (no data, no checkpoints, no DVC cache), with `data.source` set to
--source, and forces every stage (the metrics committed in git would otherwise let DVC skip a stage whose inputs
come out the same); without, in this project, where DVC runs only what changed. The peer of each figure
is its budget: the whole pipeline from a fresh clone on two cores within 12 minutes, training its largest part.

Usage: python benchmarks/pipeline.py [--fresh] [--source ../shared/data/maestro-asap] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Seconds per stage, 715 in all: training takes what the data stages, evaluation, samples and report leave.
BUDGET_S = {"fetch": 5, "parse": 15, "validate": 15, "tokenize": 15, "train": 480, "evaluate": 60, "package": 5,
            "generate": 90, "report": 30}  # fmt: skip
TOTAL_BUDGET_S, FIXED_BUDGET_S = 720, 1.5
STARTED = re.compile(r"^Running stage '([\w-]+)':")


def stage_seconds(stamped: Iterable[tuple[float, str]], end: float) -> dict[str, float]:
    """Each stage's seconds, from (time, line) pairs of `dvc repro`'s output: a stage runs from its "Running stage"
    line to the next one (or to `end`); a stage that DVC skipped has no line and no time."""
    starts = [(t, m.group(1)) for t, line in stamped if (m := STARTED.match(line))]
    ends = [t for t, _ in starts[1:]] + [end]
    return {name: stop - start for (start, name), stop in zip(starts, ends, strict=True)}


def budget_table(seconds: dict[str, float], fixed: dict[str, float]) -> list[str]:
    """The Markdown table: each stage and fixed cost beside its budget, and the whole run."""

    def within(value: float, budget: float) -> str:
        return "yes" if value <= budget else "NO"

    lines = ["| stage | seconds | budget | within |", "| --- | ---: | ---: | --- |"]
    for name, budget in BUDGET_S.items():
        if name in seconds:
            lines.append(f"| {name} | {seconds[name]:.1f} | {budget} | {within(seconds[name], budget)} |")
        else:
            lines.append(f"| {name} | skipped (unchanged) | {budget} | |")
    total = sum(seconds.values())
    lines.append(f"| **all stages** | **{total:.1f}** | {TOTAL_BUDGET_S} | {within(total, TOTAL_BUDGET_S)} |")
    for name, value in fixed.items():
        lines.append(f"| {name} | {value:.2f} | {FIXED_BUDGET_S} | {within(value, FIXED_BUDGET_S)} |")
    return lines


def fresh_clone(source: str, keep: Path | None) -> Path:
    """A clone of this commit with data.source set to `source` (resolved here, so the clone may lie elsewhere)."""
    target = keep or Path(tempfile.mkdtemp(prefix="maestro-xl-pipeline-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    where = Path(source) if Path(source).is_absolute() or "://" in source else (ROOT / source).resolve()
    params = target / "params.yaml"
    text, count = re.subn(r"(?m)^(  source: ).*$", lambda m: f"{m.group(1)}{where}", params.read_text(), count=1)
    if count != 1:
        raise SystemExit(f"{params}: no data.source line to set")
    params.write_text(text)
    return target


def run_repro(project: Path, env: dict[str, str], force: bool) -> dict[str, float]:
    """Run `dvc repro` in `project` (every stage with `force`), echoing its stage lines; each stage's seconds."""
    command = ["dvc", "repro", *(["--force"] if force else [])]
    process = subprocess.Popen(command, cwd=project, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, bufsize=1)  # fmt: skip
    stamped = []
    for line in process.stdout:
        stamped.append((time.perf_counter(), line.rstrip("\n")))
        if STARTED.match(line) or line.startswith(("ERROR", "Updating lock")):
            print(line, end="", flush=True)
    end = time.perf_counter()
    if process.wait() != 0:
        tail = "\n".join(line for _, line in stamped[-20:])
        raise SystemExit(f"dvc repro failed in {project}:\n{tail}")
    return stage_seconds(stamped, end)


def fixed_costs(project: Path, env: dict[str, str]) -> dict[str, float]:
    """The time of `maestro-xl --help` and of a `dvc repro` with nothing left to do, best of three each."""
    commands = {"maestro-xl --help": [sys.executable, "-m", "pipeline", "--help"], "no-op dvc repro": ["dvc", "repro"]}
    costs = {}
    for name, command in commands.items():
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        costs[name] = min(times)
    return costs


def main() -> None:
    """Run the pipeline and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="run in a new clone of this commit (every stage runs)")
    parser.add_argument("--source", default="../shared/data/maestro-asap", help="data.source for --fresh")
    parser.add_argument("--keep", type=Path, help="clone into this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if shutil.which("dvc") is None and not (Path(sys.executable).parent / "dvc").exists():
        raise SystemExit("benchmarks/pipeline.py needs dvc (make setup installs it)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    project = fresh_clone(args.source, args.keep) if args.fresh else ROOT
    try:
        seconds = run_repro(project, env, force=args.fresh)
        fixed = fixed_costs(project, env)
    finally:
        if args.fresh and args.keep is None:
            shutil.rmtree(project, ignore_errors=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
          f"{'a fresh clone' if args.fresh else 'this project'}\n")  # fmt: skip
    print("\n".join(budget_table(seconds, fixed)))


if __name__ == "__main__":
    main()
