"""`make setup`: TORCH's words reach pip as separate arguments, and another TORCH installs torch again (a stand-in
python and pip record what the Makefile runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
# `python -m venv DIR` makes DIR/bin/pip, a pip that writes each of its arguments on a line of its own to PIP_LOG.
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\\nprintf "%%s\\\\n" "$@" >> "$PIP_LOG"; echo --- >> "$PIP_LOG"\\n' > "$3/bin/pip"
chmod +x "$3/bin/pip"
"""


def _setup(tmp_path: Path, torch: str) -> list[list[str]]:
    """`make setup` with this TORCH; the pip calls it made, each as its list of arguments."""
    log = tmp_path / "pip.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PIP_LOG": str(log)}
    args = ["make", "-s", "setup", f"PYTHON={tmp_path / 'python'}", f"VENV={tmp_path / 'venv'}", f"TORCH={torch}"]
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=60)
    text = log.read_text() if log.is_file() else ""
    return [call.strip("\n").split("\n") for call in text.split("---\n") if call.strip()]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_torch_words_reach_pip_apart_and_another_torch_installs_again(tmp_path):
    (tmp_path / "python").write_text(FAKE_PYTHON)
    (tmp_path / "python").chmod(0o755)
    gpu = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    calls = _setup(tmp_path, gpu)
    # The torch there goes first: pip would keep an installed 2.13.0 of another build.
    assert calls[0] == ["uninstall", "--quiet", "--yes", "torch"]
    assert calls[1] == ["install", "--quiet", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu128"]
    assert calls[2] == ["install", "--quiet", "-e", ".[dev,demo]"] and len(calls) == 3
    assert _setup(tmp_path, gpu) == []  # the same TORCH: nothing to do
    again = _setup(tmp_path, "torch==2.13.0")
    assert again == [["uninstall", "--quiet", "--yes", "torch"], ["install", "--quiet", "torch==2.13.0"],
                     ["install", "--quiet", "-e", ".[dev,demo]"]]  # fmt: skip
    assert len(list((tmp_path / "venv").glob(".torch-*"))) == 1  # the stamp of the torch installed last, alone
