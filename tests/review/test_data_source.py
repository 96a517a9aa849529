"""Each side of the comparison names the data that made its results (dvc.lock's data.source), and the comment warns
in its first lines when the two differ."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from pipeline.review import compare


def _lock(source: str | None) -> str:
    params = {"data": {"source": source, "sha256": "", "size": ""}} if source else {}
    return yaml.safe_dump({"schema": "2.0", "stages": {"fetch": {"cmd": "python -m pipeline fetch",
                                                                 "params": {"params.yaml": params}}}})  # fmt: skip


@pytest.fixture
def repository(tmp_path, monkeypatch):  # noqa: ANN201
    """A git repository whose commit records one data source in dvc.lock; the test edits the workspace's."""
    for args in (["init", "-q"], ["config", "user.email", "t@localhost"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text(_lock("https://example.org/maestro-v3.0.0-midi.zip"))
    subprocess.run(["git", "add", "dvc.lock"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "results"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    compare._top.cache_clear()  # the repository's top is cached per process
    yield tmp_path
    compare._top.cache_clear()


def test_the_comment_warns_first_when_the_sides_were_made_from_different_data(repository):
    (repository / "dvc.lock").write_text(_lock("../shared/data/maestro-asap"))
    lines = compare.compare("HEAD", repository / "figures").splitlines()
    assert lines[0] == compare.MARKER and lines[1].startswith("## Pipeline results against")
    assert lines[3].startswith("> **Different data:** `HEAD`'s results were made from ")
    assert "`https://example.org/maestro-v3.0.0-midi.zip`, this change's from `../shared/data/maestro-asap`" in lines[3]
    sources = "`https://example.org/maestro-v3.0.0-midi.zip` | `../shared/data/maestro-asap`"
    assert f"| data (dvc.lock's data.source) | {sources} |" in lines


def test_the_same_data_on_both_sides_gets_no_warning_and_a_missing_record_is_said(repository):
    comment = compare.compare("HEAD", repository / "figures")
    assert "Different data" not in comment
    source = "`https://example.org/maestro-v3.0.0-midi.zip`"
    assert f"| data (dvc.lock's data.source) | {source} | {source} |" in comment
    (repository / "dvc.lock").unlink()
    comment = compare.compare("HEAD", repository / "figures")
    assert "this change's from an unrecorded source" in comment
    assert f"| data (dvc.lock's data.source) | {source} | (not recorded) |" in comment
