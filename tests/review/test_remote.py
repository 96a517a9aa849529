"""`maestro-xl pull` in a one-stage DVC project: no remote, an unknown one, a remote that lacks the files, and one
that has them; each failure one line naming the command to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "PYTHONPATH": str(ROOT), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@localhost"}  # fmt: skip


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert not check or result.returncode == 0, result.stdout + result.stderr
    return result


def pull(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "pipeline", "pull", *args], cwd, check=False)


@pytest.fixture
def made(tmp_path: Path) -> Path:
    """A committed one-stage DVC project whose output is in its cache, and nowhere else."""
    repo = tmp_path / "made"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh(["dvc", "init", "-q"], repo)
    (repo / "score.txt").write_text("a minor\n")
    sh(["dvc", "stage", "add", "-q", "-n", "copy", "-d", "score.txt", "-o", "out.txt", "cp score.txt out.txt"], repo)
    sh(["dvc", "repro", "-q"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "made"], repo)
    return repo


def test_pull_without_a_remote_or_with_an_unknown_one_names_the_command(made, tmp_path):
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(made), str(clone)], tmp_path)
    result = pull(clone)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: no default DVC remote to pull from: add one with `dvc remote add -d NAME URL` (S3, GCS, SSH or a "
        "shared folder), or make everything here with `dvc repro`"
    ]
    sh(["dvc", "remote", "add", "--local", "store", str(tmp_path / "store")], clone)  # added, but not the default
    assert "choose one with `dvc remote default store`" in pull(clone).stderr
    unknown = pull(clone, "--remote", "elsewhere")
    assert unknown.returncode == 1 and "elsewhere: no such DVC remote (the remotes are store)" in unknown.stderr


def test_a_remote_that_lacks_the_files_says_push_and_one_that_has_them_pulls(made, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(made), str(clone)], tmp_path)
    sh(["dvc", "remote", "add", "--local", "-d", "store", str(store)], clone)
    lacking = pull(clone)
    assert lacking.returncode == 1 and len(lacking.stderr.strip().splitlines()) == 1
    assert "the DVC remote store lacks 1 output(s) of this commit (out.txt): run `dvc push -r store`" in lacking.stderr
    assert not (clone / "out.txt").exists()
    sh(["dvc", "remote", "add", "--local", "-d", "store", str(store)], made)
    sh(["dvc", "push"], made)
    pulled = pull(clone)
    assert pulled.returncode == 0 and pulled.stdout.startswith("pulled from store:"), pulled.stderr
    assert (clone / "out.txt").read_text() == "a minor\n"
    assert "up to date" in sh(["dvc", "status"], clone).stdout
