"""The repository documents its own contracts: every link between its pages resolves inside it,
and no page or docstring points to a file that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves_inside_the_repository():
    broken = []
    for page in SOURCES:
        for target in LINK.findall(page.read_text()):
            path = (page.parent / target).resolve()
            if "://" not in target and not (path.is_relative_to(ROOT) and path.exists()):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_contract_pages_exist_and_nothing_points_outside():
    assert {p.name for p in (ROOT / "docs").glob("*.md")} >= {"make-targets.md", "demo-output.md", "scenario.md", "inventory.md",
                                                              "catalog.md", "README.md"}
    files = [*SOURCES, *ROOT.glob("plugins/**/*.py"), *ROOT.glob("simulator/*.py"), *ROOT.glob("include/**/*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py")]
    outside = [str(f.relative_to(ROOT)) for f in files if f != Path(__file__) and re.search(r"\b(CONTRACTS|DESIGN)\.md\b", f.read_text())]
    assert outside == []


def test_every_setting_is_documented_with_its_default_and_nothing_else_is():
    """settings.DEFAULTS declares the `[hyperv_backup]` keys; docs/inventory.md's table lists the same keys."""
    from hyperv_backup import settings

    table = (ROOT / "docs" / "inventory.md").read_text().split("## Settings", 1)[1]
    documented = {key for row in re.findall(r"^\| (`[^|]+) \|", table, re.M) for key in re.findall(r"`(\w+)`", row)}
    assert documented == set(settings.DEFAULTS)
    for key, default in settings.DEFAULTS.items():
        if isinstance(default, int | float) and not isinstance(default, bool):
            row = next(r for r in table.splitlines() if f"`{key}`" in r)
            assert f"{default:g}" in row.split("|")[2], (key, row)
