"""The docs/ pages stay true: the config reference is the one the code generates, every page is
reachable from the README, and every relative link (and its #anchor) resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunearena.launch.config import config_reference

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """A Markdown text without its fenced code blocks (whose `#` lines are not headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """The #anchors GitHub gives a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", prose(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_config_reference_page_matches_the_code():
    page = REPO / "docs" / "config-reference.md"
    assert page.read_text() == config_reference(), (
        "docs/config-reference.md is stale: regenerate it with "
        "`tunearena reference > docs/config-reference.md`"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target} points at nothing"
        if anchor:
            assert anchor in anchors(resolved), (
                f"{page.name}: link {target}: {resolved.name} has no heading #{anchor}"
            )


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [page.name for page in DOCS if page.resolve() not in linked]
    assert not missing, f"README does not link to docs/{missing}"
