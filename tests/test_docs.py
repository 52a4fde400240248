"""The README is a short guide and docs/ holds the rest: every relative link between them
resolves to a file, and every #anchor to a heading of its target (GitHub's slugs)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers_project import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
MAX_README_LINES = 200


def prose(page: Path) -> str:
    """The page without its code blocks (a `# comment` in bash is not a heading)."""
    return FENCE.sub("", page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor, with -1, -2 ... for repeats as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page))
            if not re.match(r"[a-z]+:", target)]   # http(s), mailto: not checked here


def test_slugs_follow_github():
    assert slug("## The study: every claim, over seeds".lstrip("# ")) == \
        "the-study-every-claim-over-seeds"
    assert slug("`study.yaml`: arms, seeds and claims") == "studyyaml-arms-seeds-and-claims"
    assert slug("Every device, every machine: `ENGINE=ray`") == "every-device-every-machine-engineray"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path):
    for target in links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name}: {target} is not a file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading #{anchor} in {path}"


def test_readme_is_a_short_guide_that_links_every_page():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= MAX_README_LINES
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(readme)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"the README does not link {page.name}"
