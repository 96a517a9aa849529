"""`maestro-xl pull`: `dvc pull` of the pipeline's outputs, with a one-line error that names the command to run when
no remote is set, when the named one does not exist, or when the remote lacks files that the pipeline needs.

None is configured in the repository: a clone never reaches a host its user did not choose (docs/sharing.md).
"""

from __future__ import annotations

import re
import subprocess

from pipeline.errors import PipelineError

ADD = "`dvc remote add -d NAME URL` (S3, GCS, SSH or a shared folder)"


def dvc(*args: str) -> subprocess.CompletedProcess:
    """Run a dvc command, its output captured."""
    try:
        return subprocess.run(["dvc", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise PipelineError("dvc is not installed here: `make setup` installs it") from exc


def chosen_remote(remote: str | None) -> str:
    """The remote to pull from: REMOTE when it exists, else the default one; a PipelineError when there is none."""
    listed = dvc("remote", "list")
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    if remote is not None:
        if remote not in names:
            known = f"the remotes are {', '.join(names)}" if names else "none is set"
            raise PipelineError(f"{remote}: no such DVC remote ({known}); add it with `dvc remote add {remote} URL`")
        return remote
    default = dvc("remote", "default")
    if default.returncode != 0 or not default.stdout.strip():
        advice = f"choose one with `dvc remote default {names[0]}`" if names else f"add one with {ADD}"
        raise PipelineError(f"no default DVC remote to pull from: {advice}, or make everything here with `dvc repro`")
    return default.stdout.strip()


def missing_targets(stderr: str) -> list[str]:
    """The outputs that `dvc pull` could not check out, as its error lists them."""
    block = re.search(r"Checkout failed for following targets:\s*\n(.*?)\n\s*Is your cache up to date\?", stderr, re.S)
    return [line.strip() for line in block.group(1).splitlines() if line.strip()] if block else []


def pull(remote: str | None = None) -> str:
    """Pull every stage's cached outputs from REMOTE (or the default remote); return DVC's summary line."""
    name = chosen_remote(remote)
    result = dvc("pull", "-r", name)
    if result.returncode == 0:
        lines = result.stdout.strip().splitlines()
        return f"pulled from {name}: {lines[-1] if lines else 'done'}"
    missing = missing_targets(result.stderr)
    if missing:
        raise PipelineError(
            f"the DVC remote {name} lacks {len(missing)} output(s) of this commit ({', '.join(missing)}): run "
            f"`dvc push -r {name}` where they were made, or `dvc repro` to make them here"
        )
    last = (result.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("ERROR: ")
    raise PipelineError(f"dvc pull -r {name} failed: {last}")
