"""The music library alone, as docs/architecture.md shows it: no stage, report, model, DVC or params reader is
loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ROOT, note, tempo, write_midi

from pipeline.music.midi import read_performance


def docs_example() -> str:
    """The Python example of the music library in docs/architecture.md (the README links there)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    found = re.search(r"The music library can be used alone:\n\n```python\n(.*?)```", text, re.S)
    assert found, "docs/architecture.md has no music-library example"
    return found.group(1)


def test_the_docs_example_runs_on_the_library_alone(tmp_path):
    notes = note(0, 480, 60, 90) + note(240, 960, 64, 50) + note(960, 1440, 67, 70)
    write_midi(tmp_path / "some.mid", [[tempo(0, 500_000)], notes])
    loaded = (
        "import json, sys\n"
        + docs_example()
        + "\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pipeline', 'model', 'torch', 'dvc', 'yaml', 'polars', 'pyarrow'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, wherever the package is installed from
    result = subprocess.run(
        [sys.executable, "-c", loaded], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {m.split(".")[1] for m in modules if m.startswith("pipeline.")} <= {"music", "atomic", "errors"}, modules
    assert not {m for m in modules if m.split(".")[0] in ("model", "torch", "dvc", "yaml", "polars", "pyarrow")}

    # What it wrote: the MIDI holds the notes of the original file (velocities to their bin's lowest value), and the
    # piano roll is a PNG.
    original, back = read_performance(tmp_path / "some.mid"), read_performance(tmp_path / "back.mid")
    np.testing.assert_allclose(back.onset, original.onset, atol=1e-3)
    np.testing.assert_allclose(back.offset, original.offset, atol=1e-3)
    assert back.pitch.tolist() == original.pitch.tolist() == [60, 64, 67]
    assert back.velocity.tolist() == [1 + 4 * ((v - 1) // 4) for v in original.velocity.tolist()]
    assert Path(tmp_path / "roll.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "'pitch_range': array([7.])" in result.stdout
