"""README.md and docs/*.md: links resolve, named configs exist, the README stays a README.

Links are checked as GitHub renders them: relative to the page, with ``#anchor`` matched
against the target page's headings (GitHub's slugs). Links inside code blocks are not links.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# The README's sections, in the order a user needs them.
README_SECTIONS = [
    "Quickstart",
    "Your own data",
    "Configs and overrides",
    "Accelerators",
    "Evaluation",
    "Results",
    "Documentation",
    "Layout",
]
MAX_README_LINES = 250


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in _prose(_read(path)).splitlines()
        if re.match(r"#{1,6} ", line)
    }


def _relative_links(path: str) -> list[str]:
    return [
        target
        for target in LINK.findall(_prose(_read(path)))
        if not re.match(r"[a-z]+:", target)  # http:, https:, mailto:
    ]


def _page_id(path: str) -> str:
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_resolves(page):
    links = _relative_links(page)
    broken = []
    for target in links:
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file_part or page))
        if not os.path.exists(resolved):
            broken.append(f"{target}: no file {os.path.relpath(resolved, ROOT)}")
        elif anchor and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, broken


def test_the_readme_links_every_docs_page_and_picture():
    links = {os.path.normpath(target.partition("#")[0]) for target in _relative_links(README)}
    pages = {os.path.relpath(page, ROOT) for page in PAGES[1:]}
    assert pages <= links, f"docs pages the README does not link: {pages - links}"
    assert any(link.endswith(".png") for link in links), "the README shows no picture of a run"


def test_every_config_the_readme_names_exists():
    named = set(re.findall(r"configs/\w+\.py", _read(README)))
    assert "configs/fashion_mnist.py" in named
    missing = sorted(name for name in named if not os.path.exists(os.path.join(ROOT, name)))
    assert not missing, missing


def test_readme_is_short_and_in_the_users_order():
    text = _read(README)
    assert len(text.splitlines()) <= MAX_README_LINES
    sections = [line[3:].strip() for line in _prose(text).splitlines() if line.startswith("## ")]
    assert sections == README_SECTIONS


def test_readme_has_no_commit_hashes():
    # 7-40 hex digits with at least one letter and one digit: how git abbreviates commits.
    hashes = [
        word
        for word in re.findall(r"\b[0-9a-f]{7,40}\b", _read(README))
        if re.search(r"[a-f]", word) and re.search(r"\d", word)
    ]
    assert not hashes, hashes


@pytest.mark.parametrize("page", PAGES[1:], ids=_page_id)
def test_every_docs_page_opens_with_what_a_reader_gets(page):
    lines = [line for line in _read(page).splitlines() if line.strip()]
    assert lines[0].startswith("# "), "a page starts with its title"
    assert lines[1].startswith("What you get here:"), lines[1]


def test_ci_runs_the_readmes_test_command():
    blocks = re.findall(r"^```bash\n(.*?)^```", _read(README), flags=re.S | re.M)
    commands = [line for block in blocks for line in block.splitlines() if "pytest" in line]
    assert commands == [".venv/bin/python -m pytest -q -n 2"], commands
    ci = _read(os.path.join(ROOT, ".ci", "run")).splitlines()
    assert commands[0] in ci, "`.ci/run` must run exactly the README's test command"
