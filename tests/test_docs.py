"""The repository explains itself: every `docs/design.md §n` the code cites exists, LICENSE matches pyproject."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_design_reference_names_an_existing_section():
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", design, flags=re.MULTILINE))
    assert sections == {str(n) for n in range(1, 8)}
    cited = {}
    for path in [*ROOT.glob("harmbench/**/*.py"), *ROOT.glob("plugins/**/*.py")]:
        text = path.read_text()
        assert "DESIGN §" not in text and "DESIGN.md" not in text, f"{path} cites a file outside the repository"
        for number in re.findall(r"docs/design\.md §(\d+)", text):
            cited.setdefault(number, []).append(path.name)
    assert cited, "the code cites no section"
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, missing


def test_license_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    for name in ("CONTRIBUTING.md", "CHANGELOG.md"):
        assert (ROOT / name).is_file()
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
