""".ci/post-comment against a stand-in for gh and a bare repository as origin: the images land on the review branch,
kept across pushes, and each push updates the one comment rather than adding another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

FAKE_GH = r'''#!PYTHON
"""gh api, as .ci/post-comment calls it, over a JSON file of comments: a GET prints them as --paginate does, a
page of two at a time (--jq, where given, runs the real jq)."""
import json, subprocess, sys
from pathlib import Path
store = Path(__file__).with_name("comments.json")
comments = json.loads(store.read_text())
args = sys.argv[1:]
with Path(__file__).with_name("calls.log").open("a") as log:
    log.write(" ".join(args) + "\n")
assert args[0] == "api"
method = args[args.index("--method") + 1] if "--method" in args else "GET"
if method == "GET":
    pages = "".join(json.dumps(comments[i : i + 2]) for i in range(0, max(len(comments), 1), 2))
    if "--jq" in args:
        subprocess.run(["jq", "-r", args[args.index("--jq") + 1]], input=pages, text=True, check=True)
    else:
        print(pages)
else:
    body = Path(next(a for a in args if a.startswith("body=@"))[6:]).read_text()
    if method == "PATCH":
        next(c for c in comments if str(c["id"]) == args[-3].rsplit("/", 1)[-1])["body"] = body
    else:
        comments.append({"id": 100 + len(comments), "user": {"login": "github-actions[bot]"}, "body": body})
    store.write_text(json.dumps(comments))
'''

GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@localhost"}  # fmt: skip


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT}).stdout  # fmt: skip


def fake_gh(tmp_path: Path, comments: list[dict]) -> Path:
    """A folder holding the stand-in gh and its store of COMMENTS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(FAKE_GH.replace("PYTHON", sys.executable))
    (bin_dir / "gh").chmod(0o755)
    (bin_dir / "comments.json").write_text(json.dumps(comments))
    return bin_dir


def test_a_first_line_written_as_a_jq_program_finds_no_comment_of_anyone_else(tmp_path):
    theirs = [{"id": 1, "user": {"login": "a-reviewer"}, "body": "A person's comment"}]
    bin_dir = fake_gh(tmp_path, theirs)
    comment = tmp_path / "comment.md"
    comment.write_text('")) or (true) or ((""|startswith("\nthe pull request\'s own text\n')  # a crafted first line
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GH_TOKEN": "t",
           "GITHUB_REPOSITORY": "someone/maestro-xl", "PR_NUMBER": "7"}  # fmt: skip
    result = subprocess.run([str(ROOT / ".ci" / "post-comment"), str(comment), str(tmp_path / "none"), "pr-7/run-1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "posted the comment on #7" in result.stdout, result.stdout + result.stderr
    assert json.loads((bin_dir / "comments.json").read_text())[0] == theirs[0]  # never edited


def test_each_push_publishes_its_images_and_updates_the_one_comment(tmp_path):
    others = [
        {"id": 1, "user": {"login": "a-reviewer"}, "body": "Looks good to me"},
        {"id": 2, "user": {"login": "a-reviewer"}, "body": "<!-- maestro-xl compare -->\nquoted by hand"},
    ]
    bin_dir = fake_gh(tmp_path, others)
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    git("init", "-q", "--bare", str(origin), cwd=tmp_path)
    git("clone", "-q", str(origin), str(work), cwd=tmp_path)
    (work / "README.md").write_text("a project\n")
    git("add", "README.md", cwd=work)
    git("commit", "-qm", "start", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)
    env = {**os.environ, **GIT, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GH_TOKEN": "t",
           "GITHUB_REPOSITORY": "someone/maestro-xl", "PR_NUMBER": "7"}  # fmt: skip

    def post(run: int, figure: bytes) -> str:
        images = tmp_path / f"images-{run}"
        (images / "new-abc1234" / "reports" / "figures").mkdir(parents=True, exist_ok=True)
        (images / "new-abc1234" / "reports" / "figures" / "loss.png").write_bytes(figure)
        comment = tmp_path / f"comment-{run}.md"
        comment.write_text(f"<!-- maestro-xl compare -->\n## Pipeline results, run {run}\n")
        result = subprocess.run([str(ROOT / ".ci" / "post-comment"), str(comment), str(images), f"pr-7/run-{run}"],
                                cwd=work, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "posted the comment on #7" in post(1, b"\x89PNG one")
    assert "updated comment 102 on #7" in post(2, b"\x89PNG two")
    assert "updated comment 102 on #7" in post(2, b"\x89PNG two")  # a re-run with the same images: nothing to push
    comments = json.loads((bin_dir / "comments.json").read_text())
    ours = {
        "id": 102,
        "user": {"login": "github-actions[bot]"},
        "body": "<!-- maestro-xl compare -->\n## Pipeline results, run 2\n",
    }
    assert comments == [*others, ours]  # a person's comment that begins alike is never edited
    shown = subprocess.run(["git", "show", "maestro-xl-review:pr-7/run-1/new-abc1234/reports/figures/loss.png"],
                           cwd=origin, capture_output=True, check=True).stdout  # fmt: skip
    assert shown == b"\x89PNG one"  # the first push's images stay for the comments that linked them
    listed = git("ls-tree", "-r", "--name-only", "maestro-xl-review", cwd=origin).split()
    assert listed == [f"pr-7/run-{run}/new-abc1234/reports/figures/loss.png" for run in (1, 2)]
    assert git("worktree", "list", cwd=work).count("\n") == 1  # the temporary worktree is gone
    assert git("branch", "--list", "review-images-*", cwd=work) == ""  # and the new branch's scratch name
    assert git("ls-tree", "--name-only", "HEAD", cwd=origin).split() == ["README.md"]  # the main branch untouched
