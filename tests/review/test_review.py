"""End to end: .ci/review on a change to the model, in a copy of the project, up to the comment's Markdown: each
side's commit and machine, the metrics and params diffs, the changed figures and piano rolls old beside new."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from test_dvc_pipeline import commit, review, sh

from pipeline.review.compare import COMMENT_LIMIT, MARKER

pytestmark = pytest.mark.slow


def test_the_review_script_compares_a_change_with_its_base(ran):
    project = ran
    sh(["git", "branch", "base"], project)
    base = sh(["git", "rev-parse", "HEAD"], project).stdout.strip()
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("  n_layer: 12\n", "  n_layer: 2\n", 1))
    commit(project, "two layers")
    head = sh(["git", "rev-parse", "HEAD"], project).stdout.strip()
    sh(["git", "checkout", "-q", "base"], project)  # the base branch moves on after the change left it
    (project / "README.md").write_text((project / "README.md").read_text() + "\nA later change.\n")
    commit(project, "later on base")
    sh(["git", "checkout", "-q", head], project)

    reviewed = review(project, REVIEW_BASE="base")
    assert "Running stage 'train'" in reviewed.stdout  # no remote: the change is trained here
    comment = (project / "reports" / "compare" / "comment.md").read_text()
    heading = f"## Pipeline results against `{base[:7]}` ({base[:7]})"  # where the branch left base: its merge base
    assert comment.startswith(f"{MARKER}\n{heading}\n") and len(comment) < COMMENT_LIMIT
    run = json.loads((project / "reports" / "train" / "run.json").read_text())
    machine = f"{run['hardware']}; cpu, 1 process(es)"
    assert f"| commit | `{base[:7]}` | `{head[:7]}` with uncommitted results |" in comment
    assert f"| trained on | {machine} | {machine} |" in comment
    source = f"`{yaml.safe_load((project / 'params.yaml').read_text())['data']['source']}`"  # both sides: no warning
    assert f"| data (dvc.lock's data.source) | {source} | {source} |" in comment and "Different data" not in comment
    trained = [json.loads(sh(["git", "show", "base:reports/train/run.json"], project).stdout), run]
    cells = [f"{r['steps']:,} steps in {r['wall_seconds'] / 60:.1f} min, {r['tokens_per_second']:,.0f} tokens/s"
             for r in trained]  # fmt: skip
    assert f"| training | {cells[0]} | {cells[1]} |" in comment  # each side its own run's record
    assert re.search(r"\| params\.yaml\s*\| model\.n_layer\s*\| 12\s*\| 2\s*\|", comment)
    assert re.search(r"\| reports/metrics/eval\.json\s*\| validation\.nll\s*\|", comment)
    figures = re.findall(r"^\| `([\w-]+\.png)` \| !\[\]\(([^)]+)\) \| !\[\]\(([^)]+)\) \|$", comment, re.M)
    names = [name for name, _, _ in figures]
    assert "sample-01.png" in names and "nll_by_composer_validation.png" in names
    for name, old, new in figures:  # each side's image, written beside the comment (no GitHub origin here)
        assert old.startswith(f"reports/compare/figures/base-{base[:7]}/") and old.endswith(f"/{name}")
        assert new.startswith(f"reports/compare/figures/new-{head[:7]}/")
        committed = subprocess.run(["git", "show", f"{base}:{old.split('/', 4)[4]}"], cwd=project, capture_output=True)
        assert (project / old).read_bytes() == committed.stdout
        assert (project / old).read_bytes() != (project / new).read_bytes()
    assert (project / "reports" / "compare" / "figures" / f"new-{head[:7]}" / "reports" / "samples" / "sample-01.png"
            ).read_bytes() == (project / "reports" / "samples" / "sample-01.png").read_bytes()  # fmt: skip
