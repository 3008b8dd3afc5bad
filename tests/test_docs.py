"""Every citation of the method reference ("docs/methods.md §x.y", in code, rules, docs and the report)
names a section that docs/methods.md has, so a reader can follow it inside the repository."""

from __future__ import annotations

import re

from conftest import REPO

CITED = re.compile(r"docs/methods\.md`? ((?:§[0-9]+(?:\.[0-9]+)?(?:[–-][0-9.]+)?(?:, | / | and )?)+)")
SECTION = re.compile(r"§([0-9]+(?:\.[0-9]+)?)")


def cited_sections() -> dict[str, set[str]]:
    """Section numbers cited per file (ranges such as §2.10–2.13 count their first and last)."""
    found: dict[str, set[str]] = {}
    for path in [*REPO.glob("diffattr/**/*.py"), *REPO.glob("rules/*.smk"), *REPO.glob("workflow_scripts/*.py"),
                 *REPO.glob("benchmarks/*"), *REPO.glob("report/*.rst"), *REPO.glob("tests/*.py"),
                 REPO / "README.md", REPO / "Snakefile", *REPO.glob("docs/*.md")]:
        if not path.is_file() or path.name == "methods.md":
            continue
        for group in CITED.findall(path.read_text(errors="replace")):
            numbers = set(SECTION.findall(group))
            numbers |= {f"{m.group(1)}.{m.group(2)}" for m in re.finditer(r"§([0-9]+)\.[0-9]+[–-]([0-9]+)", group)}
            found.setdefault(str(path.relative_to(REPO)), set()).update(numbers)
    return found


def test_every_cited_section_of_the_method_reference_exists():
    headings = set(re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)[. ]", (REPO / "docs" / "methods.md").read_text(), re.M))
    cited = cited_sections()
    assert sum(map(len, cited.values())) > 50  # the scan finds the citations (≈ 160 in the tree)
    missing = {f: sorted(n - headings) for f, n in cited.items() if n - headings}
    assert not missing, missing
