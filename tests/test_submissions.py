"""Submissions: the file format, and one example going through ``.ci/submissions`` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from harmbench.errors import ConfigError
from harmbench.scaffold import write_plugin_package
from harmbench.submissions import parse_submission

REPO = Path(__file__).resolve().parents[1]

VALID = """
[submission]
requirement = "harmbench-zscore-demo==0.1.0"
contact = "Ada <ada@example.org>"
citation = "Lovelace A. A method. J. Ex. 1:1 (2026)"

[harmonizers.zscore-half]
plugin = "zscore-demo"
strength = 0.5
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_valid_submission_parses(tmp_path):
    sub = parse_submission(_write(tmp_path, "zscore-demo", VALID))
    assert sub.name == "zscore-demo" and sub.requirement == "harmbench-zscore-demo==0.1.0"
    [row] = sub.harmonizers
    assert (row.label, row.plugin, row.params) == ("zscore-half", "zscore-demo", {"strength": 0.5})


def test_the_shipped_example_parses():
    sub = parse_submission(REPO / "submissions" / "examples" / "my-method.toml")
    assert [c.label for c in sub.harmonizers] == ["my-method", "my-method-half"]


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('"harmbench-zscore-demo==0.1.0"', '"harmbench-zscore-demo>=0.1"', "must pin one version"),
        ('"harmbench-zscore-demo==0.1.0"', '"harmbench-zscore-demo"', "must pin one version"),
        ('contact = "Ada <ada@example.org>"', "", "contact must be a non-empty string"),
        ('citation = "Lovelace A. A method. J. Ex. 1:1 (2026)"', "citation = 3", "citation must be a non-empty"),
        ("[harmonizers.zscore-half]", "[evaluators.zscore-half]", "evaluators join the suite through a pull"),
        ("[submission]", "[submission]\nlicence = 'MIT'", "unknown [submission] key 'licence'"),
        ("strength = 0.5", "strength = {a = 1}", "parameters must be numbers"),
        ("strength = 0.5", "strength = [", "invalid TOML"),
    ],
)
def test_an_invalid_submission_names_the_file_and_key(tmp_path, old, new, fragment):
    path = _write(tmp_path, "bad", VALID.replace(old, new))
    with pytest.raises(ConfigError) as err:
        parse_submission(path)
    assert str(err.value).startswith(str(path)) and fragment in str(err.value), str(err.value)


TINY_SUITE = """
[suite]
name = "tiny"
seed = 0
harmonizers = ["identity"]
evaluators = ["wasserstein"]

[dataset]
name = "harmbench-sim"
profile = "quick"
n_subjects = 6
voxel_mm = 8
"""


def test_a_submission_goes_through_the_ci_script_to_the_leaderboard(tmp_path):
    """A package made by `harmbench new-plugin` and built as a wheel is submitted next to one that breaks
    the contract and one whose file is invalid: the first gets its row, the others are reported."""
    src = tmp_path / "src"
    good = write_plugin_package("zscore-demo", "harmonizer", src)
    bad = write_plugin_package("sloppy-demo", "harmonizer", src)
    module = bad / "harmbench_sloppy_demo" / "__init__.py"
    code = module.read_text()
    assert "data = scan.data.copy()" in code
    module.write_text(code.replace("data = scan.data.copy()", "data = scan.data"))  # now writes into its input
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(wheels),
            str(good),
            str(bad),
        ],
        check=True,
        capture_output=True,
    )
    submissions = tmp_path / "submissions"
    _write(submissions, "zscore-demo", VALID)
    _write(submissions, "sloppy-demo", VALID.replace("zscore-demo", "sloppy-demo").replace("zscore-half", "sloppy"))
    _write(submissions, "unpinned", VALID.replace("==0.1.0", "").replace("zscore-half", "other"))
    suite = _write(tmp_path, "tiny", TINY_SUITE)
    board = tmp_path / "board"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        [
            str(REPO / ".ci" / "submissions"),
            *("--submissions", str(submissions), "--suite", str(suite)),
            *("--leaderboards", str(board), "--work", str(tmp_path / "work")),
            *("--pip-arg=--no-index", f"--pip-arg=--find-links={wheels}"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a submission was left out
    assert "zscore-demo.toml: accepted" in proc.stdout
    assert "sloppy-demo.toml: LEFT OUT at check" in proc.stdout and "unpinned.toml: LEFT OUT at parse" in proc.stdout

    leaderboard = pd.read_csv(board / "leaderboard.csv")
    rows = leaderboard[leaderboard["harmonizer"] == "zscore-half"]
    assert len(rows) and set(rows["status"]) == {"ok"}
    assert {"identity", "zscore-half"} <= set(leaderboard["harmonizer"])
    assert not {"sloppy", "other"} & set(leaderboard["harmonizer"])
    assert "zscore-half" in (board / "leaderboard.md").read_text()
    suite_doc = tomllib.loads((board / "suite.toml").read_text())
    assert suite_doc["suite"]["harmonizers"] == ["identity", "zscore-half"]
    assert suite_doc["harmonizers"]["zscore-half"] == {"plugin": "zscore-demo", "strength": 0.5}

    report = (board / "submissions.md").read_text()
    [accepted] = [line for line in report.splitlines() if line.startswith("| zscore-half")]
    assert "harmbench-zscore-demo==0.1.0" in accepted and "ada@example.org" in accepted
    [sloppy] = [line for line in report.splitlines() if line.startswith("| sloppy-demo.toml")]
    assert "| check |" in sloppy and "check_transform_output" in sloppy and "in place" in sloppy
    [unpinned] = [line for line in report.splitlines() if line.startswith("| unpinned.toml")]
    assert "| parse |" in unpinned and "must pin one version" in unpinned
    # the submitted package lives only in its own environment, never in harmbench's
    assert subprocess.run([sys.executable, "-c", "import harmbench_zscore_demo"], capture_output=True).returncode
