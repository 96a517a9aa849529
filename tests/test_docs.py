"""The README is the front door and docs/ the rest: the README stays short, each page stays readable at once, and
every relative link in them (a file, a folder, a heading in a Markdown file) leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import ROOT

MAX_README_LINES = 250
MAX_PAGE_LINES = 320  # a docs page is meant to stay under about 300
PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOCUMENTS = [ROOT / "README.md", *PAGES]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+[\"'(].*?[\"')])?\s*\)"
)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_ATTRIBUTE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)


def prose(text: str) -> str:
    """TEXT without fenced code blocks and code spans, where brackets and parentheses are no links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target in Markdown TEXT: inline links and images, reference definitions, HTML src and href."""
    text = prose(text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE, HTML_ATTRIBUTE) for m in pattern.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (a link's text, not its target), lowercase, punctuation other than
    hyphens and underscores dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of the Markdown file at PATH; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(document: Path, target: str) -> str | None:
    """Why TARGET, a link in DOCUMENT, leads nowhere; None when it resolves or is not a relative link."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return None  # http(s), mailto and any other scheme: not a file of this repository
    path, _, anchor = target.partition("#")
    resolved = (document.parent / unquote(path)).resolve() if path else document
    shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved
    if not resolved.exists():
        return f"{shown} does not exist"
    if anchor and resolved.is_file() and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
        return f"{shown} has no heading whose anchor is #{anchor}"
    return None


def test_the_readme_is_short():
    count = len((ROOT / "README.md").read_text().splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines, more than {MAX_README_LINES}: move some to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_docs_page_is_readable_at_once(page):
    count = len(page.read_text().splitlines())
    assert count < MAX_PAGE_LINES, f"{page.relative_to(ROOT)} has {count} lines: split it by subject"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    bad = [f"{target}: {why}" for target in links(document.read_text()) if (why := broken(document, target))]
    assert not bad, f"{document.relative_to(ROOT)} links nowhere:\n" + "\n".join(bad)


def test_the_link_check_sees_links_and_anchors(tmp_path):
    # The checks above must be able to fail, or they prove nothing.
    page = tmp_path / "page.md"
    page.write_text(
        "# A Title: with `code`, punctuation_and-hyphens!\n\n## Twice\n\n## Twice\n\n"
        "[a](missing.md) ![b](page.md#twice-1) <img src='gone.png'> [c](#a-title-with-code-punctuation_and-hyphens)\n"
        "[d](https://example.com/x) [e](page.md#nowhere) `[f](in-code.md)`\n\n```\n[g](in-a-fence.md)\n```\n"
    )
    assert links(page.read_text()) == [
        "missing.md",
        "page.md#twice-1",
        "#a-title-with-code-punctuation_and-hyphens",
        "https://example.com/x",
        "page.md#nowhere",
        "gone.png",
    ]
    assert anchors(page) == {"a-title-with-code-punctuation_and-hyphens", "twice", "twice-1"}
    assert "does not exist" in broken(page, "missing.md")
    assert "does not exist" in broken(page, "gone.png")
    assert "no heading" in broken(page, "page.md#nowhere")
    for fine in ("page.md#twice-1", "#a-title-with-code-punctuation_and-hyphens", "https://example.com/x", "."):
        assert broken(page, fine) is None, fine
