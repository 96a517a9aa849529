"""`maestro-xl compare BASE_REV`: the pull request's comment, comparing the workspace's pipeline results with those of
a git revision or a DVC experiment: which commit and machine made each side, the metrics and params diffs (DVC's own
`--md` tables), every report figure that changed and every changed sample's piano roll, old beside new.

Images in a comment need addresses. With a GitHub `origin`, an image committed at a side's commit (pushed) links to it
there. Any other is written under `--figures DIR` and linked as `--assets-url` (where DIR is published; the review
workflow pushes it to a branch) followed by its path in DIR, or by DIR's own path when no URL is given. GitHub refuses
a comment over 65,536 characters: the longest tables lose rows until it fits, and say so.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

from pipeline.errors import PipelineError

FIGURES = "reports/figures"
SAMPLES = "reports/samples"
RUN_RECORD = "reports/train/run.json"
LOCK = "dvc.lock"
COMMENT_LIMIT = 65536  # GitHub's limit on the characters of an issue or pull-request comment
MARKER = "<!-- maestro-xl compare -->"  # the first line: the review script finds its own comment by it


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
        result = subprocess.run(["dvc", *args, "--md"], capture_output=True, text=True, check=False, cwd=_top())
    except FileNotFoundError:
        return "_dvc is not installed here._"
    if result.returncode != 0:
        return f"_`dvc {' '.join(args)}` failed: {(result.stderr.strip().splitlines() or ['no message'])[-1]}_"
    table = result.stdout.strip()
    return table if len(table.splitlines()) > 2 else "_No changes._"  # DVC prints a header even with no rows


@functools.cache  # asked once per image: two git commands each
def github_raw(sha: str) -> str | None:
    """The address prefix of files at `sha` when origin is on GitHub and holds that commit (a branch of it does)."""
    if not (git("branch", "--remotes", "--contains", sha) or "").strip():
        return None
    url = (git("remote", "get-url", "origin") or "").strip()
    match = re.match(r"^(?:https://github\.com/|git@github\.com:)([^/]+/[^/]+?)(?:\.git)?/?$", url)
    return f"https://github.com/{match.group(1)}/raw/{sha}" if match else None


def changed_images(base: str, folder: str) -> list[tuple[str, bytes | None, bytes | None]]:
    """(name, old bytes, new bytes) of each PNG in FOLDER that differs between `base` and the workspace."""
    listed = git("ls-tree", "--name-only", f"{base}:{folder}") or ""
    old_names = {n for n in listed.splitlines() if n.endswith(".png")}
    here = Path(_top() or ".") / folder
    new_names = {p.name for p in here.glob("*.png")} if here.is_dir() else set()
    changes = []
    for name in sorted(old_names | new_names):
        old = git("show", f"{base}:{folder}/{name}", binary=True) if name in old_names else None
        new = (here / name).read_bytes() if name in new_names else None
        if old != new:
            changes.append((name, old, new))
    return changes


class Images:
    """Addresses of images for the comment: at their commit on GitHub, or written under `assets` (see the module)."""

    def __init__(self, assets: Path, assets_url: str | None) -> None:
        self.assets, self.url = Path(assets), (assets_url or Path(assets).as_posix()).rstrip("/")

    def link(self, side: str, commit: str, path: str, data: bytes) -> str:
        """Markdown showing DATA, the bytes of PATH on SIDE ("base" or "new"), whose commit is COMMIT."""
        prefix = github_raw(commit)
        if prefix and git("show", f"{commit}:{path}", binary=True) == data:
            return f"![]({prefix}/{path})"
        kept = f"{side}-{commit[:7]}/{path}"  # the side's name too: a workspace compared with its own HEAD
        (self.assets / kept).parent.mkdir(parents=True, exist_ok=True)
        (self.assets / kept).write_bytes(data)
        return f"![]({self.url}/{kept})"


def image_rows(changes: list, folder: str, base: str, head: str, images: Images) -> list[str]:
    """One table row per changed image: its name, the old image and the new one."""
    rows = []
    for name, old, new in changes:
        old_link = "(none)" if old is None else images.link("base", base, f"{folder}/{name}", old)
        new_link = "(removed)" if new is None else images.link("new", head, f"{folder}/{name}", new)
        rows.append(f"| `{name}` | {old_link} | {new_link} |")
    return rows


def run_record(base: str | None) -> dict | None:
    """reports/train/run.json at commit BASE, or in the workspace when BASE is None; None when absent or unreadable."""
    try:
        text = (Path(_top() or ".") / RUN_RECORD).read_text() if base is None else git("show", f"{base}:{RUN_RECORD}")
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def data_source(base: str | None) -> str | None:
    """The data.source that made the results, as dvc.lock records it for the fetch stage, at commit BASE or in the
    workspace (None); None when dvc.lock or the entry is missing."""
    import yaml

    try:
        text = (Path(_top() or ".") / LOCK).read_text() if base is None else git("show", f"{base}:{LOCK}")
        params = yaml.safe_load(text or "")["stages"]["fetch"]["params"]["params.yaml"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    source = (params.get("data") or {}).get("source")  # the fetch stage declares the whole data: section
    return None if source is None else str(source)


def data_warning(sources: list[str | None], base_rev: str) -> list[str]:
    """A warning for the comment's first lines when the two sides' results were made from different data."""
    if sources[0] == sources[1]:
        return []
    old, new = (f"`{s}`" if s else "an unrecorded source" for s in sources)
    return [f"> **Different data:** `{base_rev}`'s results were made from {old}, this change's from {new}; their "
            "metrics and figures do not compare like for like.", ""]  # fmt: skip


def sides(base_rev: str, base: str, head: str, sources: list[str | None]) -> list[str]:
    """The table of which commit, which data and which machine's training each side's results come from."""
    dirty = bool((git("status", "--porcelain", "--", "reports", "params.yaml", "dvc.lock") or "").strip())
    runs = [run_record(base), run_record(None)]

    def machine(run: dict | None) -> str:
        if not run:
            return "(no reports/train/run.json)"
        return f"{run.get('hardware', '?')}; {run.get('device', '?')}, {run.get('processes', 1)} process(es)"

    def training(run: dict | None) -> str:
        if not run or not all(run.get(k) for k in ("steps", "wall_seconds", "tokens_per_second")):
            return "—"
        return f"{run['steps']:,} steps in {run['wall_seconds'] / 60:.1f} min, {run['tokens_per_second']:,.0f} tokens/s"

    this = f"`{head[:7]}`" + (" with uncommitted results" if dirty else "")
    return [
        f"| | `{base_rev}` | this change |",
        "| --- | --- | --- |",
        f"| commit | `{base[:7]}` | {this} |",
        "| data (dvc.lock's data.source) | " + " | ".join(f"`{s}`" if s else "(not recorded)" for s in sources) + " |",
        f"| trained on | {machine(runs[0])} | {machine(runs[1])} |",
        f"| training | {training(runs[0])} | {training(runs[1])} |",
    ]


def tables(lines: list[str]) -> list[tuple[int, int]]:
    """[first line, end) of each run of Markdown table lines (a header, its delimiter row, then body rows)."""
    found, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.startswith("|") and start is None:
            start = i
        elif not line.startswith("|") and start is not None:
            found.append((start, i))
            start = None
    return found


def fit(markdown: str, limit: int, advice: str) -> str:
    """MARKDOWN within LIMIT characters: the longest tables lose rows from their end, each then saying how many and
    ADVICE (where to see them all); anything still over is cut with a last line that says so."""
    lines = markdown.split("\n")
    spans = tables(lines)
    kept = [end - start - 2 for start, end in spans]  # body rows kept: the first two lines are the header

    def render() -> str:
        out, i = [], 0
        for (start, end), k in zip(spans, kept, strict=True):
            out += lines[i : start + 2 + k]
            if k < end - start - 2:  # a blank line first: GitHub would read a line right after a table as a row
                out += ["", f"_{end - start - 2 - k} of this table's {end - start - 2} rows are left out, to stay "
                            f"within GitHub's {limit:,}-character limit: {advice}._"]  # fmt: skip
            i = end
        return "\n".join(out + lines[i:])

    def size(j: int) -> int:
        return sum(len(line) + 1 for line in lines[spans[j][0] : spans[j][0] + 2 + kept[j]])

    text = render()
    while len(text) > limit and any(kept):
        j = max((j for j in range(len(spans)) if kept[j]), key=size)
        excess = len(text) - limit
        while excess > 0 and kept[j]:
            excess -= len(lines[spans[j][0] + 1 + kept[j]]) + 1
            kept[j] -= 1
        text = render()
    if len(text) > limit:
        note = f"\n\n_Cut here, at GitHub's {limit:,}-character limit: {advice}._"
        text = text[: limit - len(note)] + note
    return text


def compare(
    base_rev: str,
    figures_dir: Path = Path("reports/compare"),
    assets_url: str | None = None,
    limit: int = COMMENT_LIMIT,
) -> str:
    """The comment comparing the workspace with `base_rev`, at most LIMIT characters."""
    if git("rev-parse", "--git-dir") is None:
        raise PipelineError("compare needs a git repository: run it in the project's checkout")
    base = resolve(base_rev)
    head = (git("rev-parse", "HEAD") or "").strip()
    images = Images(figures_dir, assets_url)
    if base_rev == base:  # a commit's full name: its short one reads better
        base_rev = base[:7]
    sources = [data_source(base), data_source(None)]
    lines = [MARKER, f"## Pipeline results against `{base_rev}` ({base[:7]})", "", *data_warning(sources, base_rev)]
    lines += [*sides(base_rev, base, head, sources), ""]
    lines += [
        "### Metrics",
        "",
        dvc_table("metrics", "diff", base[:7]),
        "",
        "### Params",
        "",
        dvc_table("params", "diff", base[:7]),
    ]
    for title, folder in (("Figures that changed", FIGURES), ("Samples that changed: their piano rolls", SAMPLES)):
        lines += ["", f"### {title}", ""]
        changes = changed_images(base, folder)
        if changes:
            lines += [f"| {folder.rsplit('/', 1)[-1]} | `{base_rev}` | this change |", "| --- | --- | --- |"]
            lines += image_rows(changes, folder, base, head, images)
        else:
            lines.append("_None._")
    return fit("\n".join([*lines, ""]), limit, f"`maestro-xl compare {base_rev}` prints them all")
