"""The committed default leaderboard regenerates byte for byte from its suite file."""

from __future__ import annotations

from pathlib import Path

from harmbench.runner import Runner
from harmbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "leaderboards" / "default"


def test_default_suite_file_is_the_builtin_one():
    assert load_suite(COMMITTED / "suite.toml") == load_suite()


def test_committed_leaderboard_regenerates_byte_identical(tmp_path):
    suite = load_suite(COMMITTED / "suite.toml")
    Runner(suite, tmp_path, progress=False).run()
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json"):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), (
            f"{name} differs from the committed one"
        )
