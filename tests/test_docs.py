"""The docs hold together: every relative link and image in README.md and docs/*.md points at a file or folder
of the repository, and every ``#anchor`` at a heading of its target page.

Anchors are GitHub's: the heading text, lower-cased, punctuation dropped, spaces turned into hyphens, and ``-1``,
``-2``, ... added to repeated headings. Links inside code (fenced blocks and `inline code`) are not links and are
not checked; links to other sites (``https://...``) are not fetched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
# [text](target) and ![alt](target); the text may hold one level of [brackets] and run over several lines; an
# optional "title" after the target
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(text: str, code_spans: bool = False) -> str:
    """The text with fenced code blocks and (unless kept) `code spans` blanked out; line breaks are kept, so
    line numbers hold."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            line = ""
        lines.append("" if fenced else line)
    text = "\n".join(lines)
    return text if code_spans else CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", "x", m.group(0)), text)


def links(page: Path):
    """(line number, target) of every link and image of a page, code left out."""
    text = prose(page.read_text(encoding="utf-8"))
    for match in LINK.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose(page.read_text(encoding="utf-8"), code_spans=True).splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            seen.setdefault(f"{base}-{count}" if count else base, 1)
    return set(seen)


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """One line per link or image of the page whose file, folder or heading is missing."""
    problems = []
    for number, target in links(page):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file or folder")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


def test_the_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "python-api.md", "napari-plugin.md", "fine-tuning.md", "models.md", "export.md",
            "benchmarks.md", "training.md", "architecture.md", "gpu.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_links_and_images_resolve(page):
    assert broken_links(page) == []


def test_the_link_pattern_sees_the_links():
    found = [target for page in PAGES for _, target in links(page)]
    assert len(found) > 100 and "docs/images/widget_denoise.png" in found
    assert "benchmarks/results/evaluation.md" in found and "fine-tuning.md#fine-tune-in-the-viewer" in found


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for _, target in links(REPO / "README.md")}
    assert [p.name for p in PAGES[1:] if p not in linked] == []


def test_slugs_follow_github():
    assert slug("No clean images? Fine-tune on your noisy stack") == "no-clean-images-fine-tune-on-your-noisy-stack"
    assert slug("Backbone (issue 15)") == "backbone-issue-15"
    assert slug("`restore()`") == "restore"
    assert slug("Out-of-core data (dask, zarr, clusters)") == "out-of-core-data-dask-zarr-clusters"


def test_the_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n\n## The `restore()` call\n", encoding="utf-8")
    page.write_text("[ok](there.md#a-heading) [ok too](there.md#the-restore-call)\n"
                    "[gone](missing.md) [bad anchor](there.md#nope)\n"
                    "`[in code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n![img](pic.png)\n", encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert "missing.md: no such file" in problems[0]
    assert "no heading #nope" in problems[1]
    assert "pic.png: no such file" in problems[2]


def quality_table(page: Path) -> list[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting (PSNR dB) |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_the_quality_table_is_the_same_in_the_readme_and_models_page():
    """tests/core/test_shipped_models.py checks the README's table against evaluation.json; docs/models.md
    repeats it and must not drift from it."""
    assert quality_table(REPO / "README.md") == quality_table(REPO / "docs" / "models.md")
