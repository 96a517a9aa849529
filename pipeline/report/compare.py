"""`maestro-xl compare BASE_REV`: a Markdown section for a pull request, comparing the workspace's pipeline results
with those of a git revision or a DVC experiment: the metrics and params diffs (DVC's own `--md` tables) and every
report figure that changed, old beside new.

Images in a pull request need addresses: with a GitHub `origin`, the old figure is linked at the base commit and the
new one at HEAD (when the workspace's figure is the committed one); otherwise the old figures are written to
`--figures DIR` and linked from there, and the new ones by their path in the repository.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from pipeline.errors import PipelineError

FIGURES = "reports/figures"


def git(*args: str, binary: bool = False) -> str | bytes | None:
    """A git command's output (run at the repository's top, wherever the command was started), or None when it fails."""
    result = subprocess.run(["git", *args], capture_output=True, text=not binary, check=False, cwd=_top())
    return result.stdout if result.returncode == 0 else None


@functools.cache
def _top() -> str | None:
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False)
    return top.stdout.strip() or None


def resolve(rev: str) -> str:
    """The commit of a git revision or of a DVC experiment's name."""
    sha = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if sha:
        return sha.strip()
    for line in (git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps") or "").splitlines():
        objectname, refname = line.split(" ", 1)
        if refname.rsplit("/", 1)[-1] == rev:
            return objectname
    raise PipelineError(f"{rev}: neither a git revision nor a DVC experiment of this repository")


def dvc_table(*args: str) -> str:
    """The Markdown that a `dvc ... --md` command prints, or a line saying why there is none."""
    try:
        result = subprocess.run(["dvc", *args, "--md"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "_dvc is not installed here._"
    if result.returncode != 0:
        return f"_`dvc {' '.join(args)}` failed: {(result.stderr.strip().splitlines() or ['no message'])[-1]}_"
    table = result.stdout.strip()
    return table if len(table.splitlines()) > 2 else "_No changes._"  # DVC prints a header even with no rows


def github_raw(sha: str) -> str | None:
    """The address prefix of files at `sha` when origin is on GitHub and holds that commit (a branch of it does)."""
    if not (git("branch", "--remotes", "--contains", sha) or "").strip():
        return None
    url = (git("remote", "get-url", "origin") or "").strip()
    match = re.match(r"^(?:https://github\.com/|git@github\.com:)([^/]+/[^/]+?)(?:\.git)?/?$", url)
    return f"https://github.com/{match.group(1)}/raw/{sha}" if match else None


def changed_figures(base: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """(name, old bytes, new bytes) of each report figure that differs between `base` and the workspace."""
    listed = git("ls-tree", "--name-only", f"{base}:{FIGURES}") or ""
    old_names = {n for n in listed.splitlines() if n.endswith(".png")}
    folder = Path(_top() or ".") / FIGURES
    new_names = {p.name for p in folder.glob("*.png")} if folder.is_dir() else set()
    changes = []
    for name in sorted(old_names | new_names):
        old = git("show", f"{base}:{FIGURES}/{name}", binary=True) if name in old_names else None
        new = (folder / name).read_bytes() if name in new_names else None
        if old != new:
            changes.append((name, old, new))
    return changes


def compare(base_rev: str, figures_dir: Path = Path("reports/compare")) -> str:
    """The Markdown section comparing the workspace with `base_rev`."""
    if git("rev-parse", "--git-dir") is None:
        raise PipelineError("compare needs a git repository: run it in the project's checkout")
    base = resolve(base_rev)
    head = (git("rev-parse", "HEAD") or "").strip()
    lines = [
        f"## Pipeline results against `{base_rev}` ({base[:7]})",
        "",
        "### Metrics",
        "",
        dvc_table("metrics", "diff", base),
        "",
        "### Params",
        "",
        dvc_table("params", "diff", base),
        "",
        "### Figures that changed",
        "",
    ]
    changes = changed_figures(base)
    if not changes:
        return "\n".join([*lines, "_None._", ""])
    old_prefix, head_prefix = github_raw(base), github_raw(head)
    lines += [f"| figure | `{base_rev}` | this change |", "| --- | --- | --- |"]
    for name, old, new in changes:
        old_link, new_link = "(none)", "(removed)"
        if old is not None and old_prefix:
            old_link = f"![]({old_prefix}/{FIGURES}/{name})"
        elif old is not None:  # no address for the old bytes: write them out beside the section
            (figures_dir / base[:7]).mkdir(parents=True, exist_ok=True)
            (figures_dir / base[:7] / name).write_bytes(old)
            old_link = f"![]({(figures_dir / base[:7] / name).as_posix()})"
        if new is not None:
            committed = git("show", f"HEAD:{FIGURES}/{name}", binary=True) == new
            new_link = f"![]({head_prefix}/{FIGURES}/{name})" if head_prefix and committed else f"![]({FIGURES}/{name})"
        lines.append(f"| `{name}` | {old_link} | {new_link} |")
    return "\n".join([*lines, ""])
