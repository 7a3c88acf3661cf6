"""Every relative link of README.md and docs/*.md points at a file that exists, and every
`#anchor` at a heading of the page it names (GitHub's anchor rules); the README stays a landing
page that leads to every docs page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (a `[x](y)` there is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped (word
    characters, `-` and spaces kept), spaces as `-`, a repeated one numbered `-1`, `-2`, ..."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with each relative link of `page` (paths named relative to `root`)."""
    bad = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: (not this test's business)
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(root)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text("utf-8")):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return bad


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [f"{p.relative_to(ROOT)}: {b}" for p in PAGES for b in broken(p)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_links_and_catches_broken_ones(tmp_path: Path) -> None:
    """The pages have links with anchors to check, and a missing file or heading is caught."""
    targets = [t for p in PAGES for t in LINK.findall(_prose(p.read_text(encoding="utf-8")))]
    assert sum("#" in t and not t.startswith("http") for t in targets) >= 5, targets
    other = "# Other\n\n## Its part: `x/`\n\n```\n# not a heading\n```\n"
    (tmp_path / "other.md").write_text(other)
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[a](other.md#its-part-x) [b](#page) [c](gone.md) [d](other.md#missing) "
        "[e](#not-a-heading) `[f](gone-too.md)` [g](https://example.org/x#y)\n"
    )
    found = broken(page, tmp_path.resolve())
    assert found == [
        "gone.md: no file gone.md",
        "other.md#missing: no heading #missing in other.md",
        "#not-a-heading: no heading #not-a-heading in page.md",
    ], found


def test_the_readme_is_a_landing_page_that_leads_to_every_docs_page() -> None:
    """At most about 250 lines, and every docs page is linked from it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, len(text.splitlines())
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(_prose(text))}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, unlinked
