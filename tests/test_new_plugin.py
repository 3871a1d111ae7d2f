"""``harmbench new-plugin``: the template package installs, registers, and passes its own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harmbench.cli import main
from harmbench.errors import ConfigError
from harmbench.scaffold import package_files, write_plugin_package


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), env.get("PYTHONPATH", "")])
    return env


def test_writes_a_package_with_entry_point_module_and_tests(tmp_path, capsys):
    assert main(["new-plugin", "my-method", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "harmbench-my-method"
    assert str(folder) in capsys.readouterr().out
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "harmbench_my_method/__init__.py",
        "pyproject.toml",
        "tests/test_harmbench_my_method.py",
    ]
    pyproject = (folder / "pyproject.toml").read_text()
    assert 'name = "harmbench-my-method"' in pyproject
    assert '[project.entry-points.harmbench]\nmy-method = "harmbench_my_method"' in pyproject
    module = (folder / "harmbench_my_method" / "__init__.py").read_text()
    assert "class MyMethodHarmonizer(Harmonizer)" in module and 'name="my-method"' in module
    assert "{{" not in module + pyproject


def test_refuses_bad_names_unknown_kinds_and_overwriting(tmp_path):
    for bad in ("My_Method", "1abc", "a--b", "-a", ""):
        with pytest.raises(ConfigError, match="lower case"):
            package_files(bad)
    with pytest.raises(ConfigError, match="--kind"):
        package_files("ok", "dataset")
    write_plugin_package("taken", out=tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        write_plugin_package("taken", out=tmp_path)


def test_the_generated_harmonizer_installs_registers_and_passes_its_tests(tmp_path):
    folder = write_plugin_package("zscore-demo", "harmonizer", tmp_path)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(folder),
        ],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run(
        [sys.executable, "-m", "harmbench.cli", "list", "harmonizers"], capture_output=True, text=True, env=_env(site)
    )
    assert listed.returncode == 0 and "zscore-demo" in listed.stdout and "harmbench-zscore-demo 0.1.0" in listed.stdout
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
        capture_output=True,
        text=True,
        env=_env(site),
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout


def test_the_generated_evaluator_passes_its_tests(tmp_path):
    folder = write_plugin_package("mean-error-demo", "evaluator", tmp_path)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
        capture_output=True,
        text=True,
        env=_env(folder),
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout
