"""The documentation's structure: relative links and anchors resolve, the generated blocks' markers
are where their generators look, and no page names machine paths or tracker numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_readme import ROOT, doc_files

POLICY_BEGIN, POLICY_END = "<!-- policy-options:begin -->", "<!-- policy-options:end -->"


def _prose(text: str) -> str:
    """The text outside fenced code blocks, inline code blanked (a link inside code is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "``", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", h).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in re.findall(
        r"^#{1,6}\s+(.+?)\s*#*$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M), re.M
    ):
        s = slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text()))


@pytest.mark.parametrize("where", [str(f.relative_to(ROOT)) for f in doc_files()])
def test_relative_links_and_anchors_resolve(where):
    page = ROOT / where
    bad = []
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        dest = (page.parent / target).resolve() if target else page
        if not dest.exists():
            bad.append(f"{link}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{link}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, "\n".join(bad)


def test_every_docs_page_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
    assert "](../csrc/README.md)" in index and "](../bench/README.md)" in index


def test_the_performance_block_is_in_docs_performance():
    """bench/report.py regenerates the block between its markers; the block lives in docs/performance.md."""
    from bench.report import BEGIN, END

    perf = (ROOT / "docs" / "performance.md").read_text()
    assert perf.count(BEGIN) == 1 and perf.count(END) == 1 and perf.index(BEGIN) < perf.index(END)
    assert BEGIN not in (ROOT / "README.md").read_text()


def test_the_policy_options_block_is_generated_from_the_declarations():
    """docs/policies.md holds the options table that the policies' declarations generate
    (regenerate it with python -m bench.report), and every option there is a CLI flag."""
    from diffcls_fast.engine.policies import OPTIONS, options_table
    from tests.test_readme import cli_options

    text = (ROOT / "docs" / "policies.md").read_text()
    assert text.count(POLICY_BEGIN) == 1 and text.count(POLICY_END) == 1
    block = text.split(POLICY_BEGIN, 1)[1].split(POLICY_END, 1)[0]
    assert block.strip().splitlines() == options_table(), "docs/policies.md's table is stale: python -m bench.report"
    for o in OPTIONS.values():
        assert o.flag in cli_options()["classify"], f"{o.flag} is not a CLI option"


@pytest.mark.parametrize("where", [str(f.relative_to(ROOT)) for f in doc_files()])
def test_no_machine_paths_or_tracker_numbers(where):
    text = (ROOT / where).read_text()
    assert not re.search(r"/work/|/home/\w|/tmp/", text), "a machine path"
    assert not re.search(r"\bissues? #?\d+", text, re.I), "an issue number"
