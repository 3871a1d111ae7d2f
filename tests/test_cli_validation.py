"""The command line on bad configs and bad inputs: one line, no traceback, a non-zero exit; `--dry-run`;
exit 1 when a cell failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import harmbench.plugins
from harmbench import Harmonizer, Meta, hookimpl
from harmbench.cli import EXIT_ERROR, EXIT_FAILED_CELLS, main

TINY = """
[suite]
name = "tiny"
harmonizers = ["identity"]
evaluators = ["wasserstein"]
[dataset]
name = "harmbench-sim"
profile = "quick"
n_subjects = 8
voxel_mm = 8
"""


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harmbench.cli", *args], capture_output=True, text=True, cwd=cwd)


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == EXIT_ERROR, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("harmbench: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[protocol]\nunseen_sites = 'ge-1.5t-spgr'\n", "[protocol] unseen_sites must be a list of site names"),
        ("[evaluators.wasserstein]\nbins = 3\n", "[evaluators.wasserstein] unknown parameter 'bins'"),
        ("[harmonizers.identity]\nplugin = 'ssimh'\nblock = 0\n", "[harmonizers.identity] "),
    ],
)
def test_bad_suite_is_one_line_naming_file_table_and_key(tmp_path, extra, needle):
    suite = tmp_path / "bad.toml"
    suite.write_text(TINY + extra)
    proc = run_cli("--quiet", "run", str(suite), "--out", str(tmp_path / "out"))
    _one_line_error(proc, needle)
    assert str(suite) in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_dataset_path_is_one_line(tmp_path):
    proc = run_cli("--quiet", "run", "--dataset", "missing.csv", "--out", str(tmp_path / "out"), cwd=tmp_path)
    _one_line_error(proc, "dataset 'missing.csv': no such file or folder")


@pytest.mark.parametrize("kind", ["absent", "corrupt", "foreign", "mixed"])
def test_leaderboard_errors_are_one_line(tmp_path, kind):
    folder = tmp_path / "run"
    if kind != "absent":
        folder.mkdir()
    if kind == "corrupt":
        (folder / "results.parquet").write_bytes(b"not parquet")
    elif kind == "foreign":
        import pandas as pd

        pd.DataFrame({"x": [1.0]}).to_parquet(folder / "results.parquet")
    elif kind == "mixed":
        from harmbench.results import to_frame

        row = {"dataset": "d", "scenario": "seen", "harmonizer": "h", "evaluator": "e", "metric": "m", "value": 1.0}
        row |= {"status": "ok", "higher_is_better": "higher", "main": True, "transductive": False, "seed": 0}
        row |= {"device_dependent": False}
        to_frame([{**row, "suite": "a"}, {**row, "suite": "b"}]).to_parquet(folder / "results.parquet")
    proc = run_cli("leaderboard", str(folder))
    needle = {
        "absent": "no results here",
        "corrupt": "not a readable results table",
        "foreign": "missing column",
        "mixed": "results mix several suites",
    }
    _one_line_error(proc, needle[kind])


def test_dry_run_prints_the_plan_and_computes_nothing(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    assert main(["--quiet", "run", str(suite), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "identity                 fit" in text and "compute  seen--identity--wasserstein--" in text
    assert "4 cells: 0 cached, 4 to compute; 1 model(s) to fit" in text
    assert not out.exists()
    assert main(["--quiet", "run", str(suite), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["--quiet", "run", str(suite), "--out", str(out), "--dry-run"]) == 0
    assert "4 cells: 4 cached, 0 to compute; 0 model(s) to fit" in capsys.readouterr().out


class FailsFit(Harmonizer):
    meta = Meta(name="fails-fit", version="0", citation="-")

    def __init__(self):
        pass

    def fit(self, train, target_site, reference=None, *, rng=None):
        raise RuntimeError("no fit today")

    def transform(self, scan, reference=None):
        return scan

    def get_state(self):
        return {}

    def set_state(self, state):
        return self


class FailingPlugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [FailsFit]


def test_run_exits_non_zero_when_a_cell_failed(tmp_path, capsys, monkeypatch):
    real = harmbench.plugins.get_plugin_manager
    monkeypatch.setattr(
        harmbench.plugins, "get_plugin_manager", lambda **kw: real(extra_plugins=[FailingPlugin()], **kw)
    )
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.replace('["identity"]', '["identity", "fails-fit"]'))
    out = tmp_path / "out"
    assert main(["--quiet", "run", str(suite), "--out", str(out)]) == EXIT_FAILED_CELLS
    captured = capsys.readouterr()
    assert "2 of 6 cells failed" in captured.err and f"leaderboard: {out / 'leaderboard.md'}" in captured.out
    # the leaderboard is still written, and a re-run that changes nothing says the same
    assert (out / "leaderboard.md").exists()
    assert main(["--quiet", "run", str(suite), "--out", str(out)]) == EXIT_FAILED_CELLS
    assert main(["--quiet", "run", str(suite), "--out", str(out), "--harmonizers", "identity"]) == 0
