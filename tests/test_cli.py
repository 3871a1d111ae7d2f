"""The command line as a user meets it: one-line errors, listings, third-party plugins, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from harmbench.cli import main
from harmbench.results import read_parquet

TINY_ARGS = ["--quiet"]
TINY_SUITE = """
[suite]
name = "tiny"
seed = 0
harmonizers = [{harmonizers}]
evaluators = ["wasserstein", "paired"]
[dataset]
name = "harmbench-sim"
profile = "quick"
n_subjects = 8
voxel_mm = 8
"""


def tiny_suite_file(tmp_path: Path, harmonizers=("identity", "histogram")) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE.format(harmonizers=", ".join(f'"{h}"' for h in harmonizers)))
    return path


def run_cli(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "harmbench.cli", *args], capture_output=True, text=True, env=env, **kwargs
    )


def test_help_explains_every_run_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--dataset",
        "--target-site",
        "--unseen-sites",
        "--profile",
        "--harmonizers",
        "--evaluators",
        "--device",
        "--out",
        "--seed",
        "--save-images",
    ):
        assert option in text


def test_list_and_plugins(capsys):
    assert main(["list", "harmonizers"]) == 0
    out = capsys.readouterr().out
    assert "identity" in out and "histogram" in out and "ssimh" in out
    assert main(["plugins"]) == 0
    assert "harmbench 0.1.0" in capsys.readouterr().out


def test_run_then_leaderboard_rerenders_without_rerun(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*TINY_ARGS, "run", str(tiny_suite_file(tmp_path)), "--out", str(out)]) == 0
    assert f"leaderboard: {out / 'leaderboard.md'}" in capsys.readouterr().out
    board = (out / "leaderboard.md").read_bytes()
    (out / "leaderboard.md").unlink()
    cells_before = sorted(p.stat().st_mtime_ns for p in (out / "cells").iterdir())
    assert main(["leaderboard", str(out)]) == 0
    assert (out / "leaderboard.md").read_bytes() == board
    assert sorted(p.stat().st_mtime_ns for p in (out / "cells").iterdir()) == cells_before


def _bad_dataset(tmp_path: Path, kind: str) -> Path:
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    rng = np.random.default_rng(0)
    rows = []
    for i, site in enumerate(["a", "a", "b", "b"]):
        path = tmp_path / f"img{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.uniform(1, 2, (5, 6, 5)).astype(np.float32), affine), path)
        rows.append((f"s{i % 2}", site, path.name))
    columns = ["subject", "site", "path"]
    if kind == "truncated":
        (tmp_path / "img3.nii.gz").write_bytes((tmp_path / "img3.nii.gz").read_bytes()[:100])
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.ones((5, 6, 5, 2), np.float32), affine), tmp_path / "img3.nii.gz")
    elif kind == "shape":
        nib.save(nib.Nifti1Image(np.ones((5, 6, 4), np.float32), affine), tmp_path / "img3.nii.gz")
    elif kind == "no-site":
        rows = [(r[0], r[2]) for r in rows]
        columns = ["subject", "path"]
    elif kind == "one-scan":
        rows.append(("s9", "c", rows[3][2]))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=columns).to_csv(manifest, index=False)
    return manifest


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("truncated", "img3.nii.gz"),
        ("4d", "img3.nii.gz"),
        ("shape", "img3.nii.gz"),
        ("no-site", "manifest.csv"),
        ("one-scan", "'c'"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, kind, needle):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    proc = run_cli("--quiet", "run", "--dataset", str(_bad_dataset(tmp_path, kind)), "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harmbench: error:") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "keep.txt").read_text() == "earlier work"


def test_unknown_harmonizer_keeps_earlier_results(tmp_path):
    out = tmp_path / "out"
    assert main([*TINY_ARGS, "run", str(tiny_suite_file(tmp_path, ("identity",))), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = run_cli("--quiet", "run", str(tmp_path / "tiny.toml"), "--out", str(out), "--harmonizers", "identty")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("harmbench: error: unknown harmonizer 'identty'; did you mean identity? (known: ")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "run", "--harmonizers", "nope", "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _env_with(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def test_thirdparty_package_appears_in_list_and_leaderboard(tmp_path, thirdparty_site):
    env = _env_with(thirdparty_site)
    listed = run_cli("list", "harmonizers", env=env)
    assert listed.returncode == 0 and "thirdparty-scale" in listed.stdout
    assert "harmbench-thirdparty-demo 0.3.1" in run_cli("plugins", env=env).stdout
    out = tmp_path / "out"
    suite = tiny_suite_file(tmp_path, ("identity", "thirdparty-scale"))
    proc = run_cli("--quiet", "run", str(suite), "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    rows = board[board.harmonizer == "thirdparty-scale"]
    assert len(rows) and set(rows["status"]) == {"ok"}
    assert "thirdparty-scale" in (out / "leaderboard.md").read_text()


def test_killed_run_resumes_to_the_same_leaderboard(tmp_path, thirdparty_site):
    """SIGKILL a run part-way, run it again: it finishes from the cells on disk and matches an uninterrupted run."""
    env = _env_with(thirdparty_site)
    suite = tiny_suite_file(tmp_path, ("identity", "thirdparty-slow", "histogram"))
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli("--quiet", "run", str(suite), "--out", str(full), env=env).returncode == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "harmbench.cli", "--quiet", "run", str(suite), "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((killed / "cells").glob("*--thirdparty-slow--*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in (killed / "cells").glob("*.parquet")}
    assert done_before, "the run was killed before any cell finished"
    assert not (killed / "results.parquet").exists(), "the run finished before it could be killed"

    assert run_cli("--quiet", "run", str(suite), "--out", str(killed), env=env).returncode == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json"):
        assert (killed / name).read_bytes() == (full / name).read_bytes()
    # the cells finished before the kill were kept, not recomputed
    assert done_before <= {p.name for p in (killed / "cells").glob("*.parquet")}


def test_synth_writes_a_bids_folder_that_runs_as_a_users_dataset(tmp_path, capsys):
    """`harmbench data synth` output is read back as real data: sites, traveling subjects, labels and all."""
    from harmbench.data.io import load_bids
    from harmbench.data.sim import simulate_cohort

    bids = tmp_path / "bids"
    assert main(["data", "synth", str(bids), "--subjects", "8", "--seed", "3"]) == 0
    assert "56 scans (8 subjects × 6 sites + 8 rescans)" in capsys.readouterr().out  # a rescan at the target site
    loaded = load_bids(bids, progress=False)
    simulated = simulate_cohort("quick", 3, n_subjects=8)
    assert [s.key for s in sorted(loaded, key=lambda s: s.key)] == sorted(s.key for s in simulated)
    first = simulated.scans[0]
    np.testing.assert_array_equal(loaded.find(first.subject, first.site).data, first.data)
    rescan = simulated.find_rescan(first.subject, first.site)
    np.testing.assert_array_equal(loaded.find_rescan(first.subject, first.site).data, rescan.data)
    out = tmp_path / "out"
    args = ["--quiet", "run", "--dataset", str(bids), "--target-site", first.site, "--out", str(out)]
    extra = ["--harmonizers", "identity,histogram", "--evaluators", "wasserstein,paired"]
    assert main([*args, "--unseen-sites", "ge-1.5t-spgr", *extra]) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["scenario"]) == {"seen", "unseen"} and set(board["status"]) == {"ok"}


def test_harmonizers_option_keeps_a_suite_variants_parameters_and_no_oracle(tmp_path):
    suite = tmp_path / "variants.toml"
    suite.write_text(
        TINY_SUITE.format(harmonizers='"identity", "histogram-site"')
        + '[harmonizers.histogram-site]\nplugin = "histogram"\nstandard = "site"\n'
    )
    out = tmp_path / "out"
    assert (
        main([*TINY_ARGS, "run", str(suite), "--out", str(out), "--harmonizers", "histogram-site", "--no-oracle"]) == 0
    )
    written = (out / "suite.toml").read_text()
    assert 'standard = "site"' in written and "oracle = false" in written
    results = read_parquet(out / "results.parquet")
    assert set(results["harmonizer"]) == {"histogram-site"}


def test_repeats_fits_stochastic_methods_once_per_seed_from_the_suite_seed(tmp_path, capsys):
    suite = tiny_suite_file(tmp_path, harmonizers=("identity", "hail"))
    args = [*TINY_ARGS, "run", str(suite), "--out", str(tmp_path / "out"), "--seed", "4", "--repeats", "3"]
    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert all(f"hail (seed {s})" in plan for s in (4, 5, 6)) and "hail (seed 7)" not in plan
    assert "identity (seed" not in plan  # deterministic: fitted once
    assert main([*TINY_ARGS, "run", str(suite), "--repeats", "0"]) == 2
