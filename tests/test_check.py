"""``harmbench check NAME``: the conformance kit from the command line, and `run_checks` behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_distribution

from harmbench.check import check_plugin, format_table, parse_param
from harmbench.cli import main
from harmbench.errors import ConfigError
from harmbench.plugins import Registry
from harmbench.testing import check_harmonizer, eval_cases, run_checks, simulated_split

#: An outside harmonizer that breaks three rules: it writes into its input, draws from numpy's global
#: random state instead of the rng it is given, and keeps a fitted value out of get_state.
NONCONFORMING_MODULE = """
    import numpy as np

    from harmbench import Harmonizer, Meta, hookimpl


    class Sloppy(Harmonizer):
        meta = Meta(name="sloppy-demo", version="0.1", citation="none", needs_source_sites=False)

        def fit(self, train, target_site, reference=None, *, rng=None):
            self.gain_ = 1.0 + np.random.random()
            self.fitted_ = True
            return self

        def transform(self, scan, reference=None):
            self.check_is_fitted()
            scan.data[...] *= np.float32(self.gain_)
            return scan.with_data(scan.data.copy())

        def get_state(self):
            return {}

        def set_state(self, state):
            self.gain_ = 0.5
            return self


    @hookimpl
    def harmbench_register_harmonizers():
        return [Sloppy]
"""

#: An outside evaluator whose records carry integers and miss a declared metric.
NONCONFORMING_EVALUATOR = """
    from harmbench import Evaluator, MetricSpec, hookimpl


    class Counts(Evaluator):
        name = "counts-demo"
        metrics = (MetricSpec("n_voxels", higher_is_better=None), MetricSpec("other", higher_is_better=True))

        def evaluate(self, cases):
            return [
                {"subject": c.input.subject, "site": c.input.site, "metric": "n_voxels", "value": c.output.data.size}
                for c in cases
            ]


    @hookimpl
    def harmbench_register_evaluators():
        return [Counts]
"""


@pytest.fixture(scope="module")
def outside_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("outside") / "site"
    write_distribution(site, "harmbench-sloppy", "0.1.0", {"hb_sloppy": NONCONFORMING_MODULE}, {"sloppy": "hb_sloppy"})
    write_distribution(
        site, "harmbench-counts", "0.1.0", {"hb_counts": NONCONFORMING_EVALUATOR}, {"counts": "hb_counts"}
    )
    return site


@pytest.fixture(scope="module")
def data():
    return simulated_split()


def _check_cli(*args: str, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "harmbench.cli", "check", *args], capture_output=True, text=True, env=env
    )


def _row(stdout: str, check: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.strip().startswith(check + " ")]
    return line


def test_check_on_a_nonconforming_outside_harmonizer_prints_each_failure_and_exits_1(outside_site):
    proc = _check_cli("sloppy-demo", site=outside_site)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAIL" in _row(out, "check_transform_output") and "in place" in _row(out, "check_transform_output")
    assert "FAIL" in _row(out, "check_deterministic") and "disagree" in _row(out, "check_deterministic")
    assert "FAIL" in _row(out, "check_save_load") and "get_state()" in _row(out, "check_save_load")
    assert "PASS" in _row(out, "check_meta") and "PASS" in _row(out, "check_not_fitted")
    assert "PASS" in _row(out, "check_uses_reference")  # declares uses_reference=False and works without one
    assert out.rstrip().splitlines()[-1].endswith("failed")


def test_check_on_a_nonconforming_outside_evaluator(outside_site):
    proc = _check_cli("counts-demo", site=outside_site)
    assert proc.returncode == 1
    row = _row(proc.stdout, "check_evaluator")
    assert "FAIL" in row and "not a float" in row


def test_check_of_an_unknown_name_is_one_error_line():
    assert main(["check", "histogramm"]) == 2


def test_a_conforming_builtin_passes_every_check(data):
    kind, results = check_plugin("histogram", registry=Registry(), data=data)
    assert kind == "harmonizers"
    assert all(r.passed for r in results), results
    assert {r.check for r in results} >= {"check_meta", "check_save_load", "check_handles_unseen_sites"}
    # histogram needs the reference, so the "works without one" check does not apply, and says why
    [na] = [r for r in results if r.status == "n/a"]
    assert na.check == "check_uses_reference" and "uses_reference=True" in na.reason
    table = format_table("histogram", kind, results)
    assert table.endswith(f"{len(results)} of {len(results)} checks passed\n")


def test_parameters_reach_the_constructor_and_a_bad_one_fails_the_checks(data):
    _, results = check_plugin("scale", {"percentile": 200}, data=data)
    assert [(r.check, r.status) for r in results] == [("construct", "pass"), ("validate_params", "fail")]
    assert "must be at most 100" in results[1].reason
    _, results = check_plugin("scale", {"percentile": 90}, data=data)
    assert all(r.passed for r in results), results
    _, results = check_plugin("scale", {"no_such_param": 1}, data=data)
    assert [(r.check, r.status) for r in results] == [("construct", "fail")]
    assert "no_such_param" in results[0].reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("percentile=90", ("percentile", 90)),
        ("standard=site", ("standard", "site")),
        ('x="a b"', ("x", "a b")),
        ("on=true", ("on", True)),
        ("xs=[1, 2.5]", ("xs", [1, 2.5])),
    ],
)
def test_param_values_are_read_as_toml(text, expected):
    assert parse_param(text) == expected


def test_a_param_without_equals_is_refused():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_param("percentile")


def test_the_kit_docstring_example_works_without_repository_fixtures(data):
    """What harmbench.testing's docstring tells a plugin author to write, with a built-in method."""
    harmonizer = Registry().harmonizer("identity")()
    check_harmonizer(harmonizer, *data)
    assert all(r.passed for r in run_checks(harmonizer, data))


def test_eval_cases_carry_the_paired_target_and_pool(data):
    cases = eval_cases(data)
    assert len(cases) == len(data.test_scans)
    for case in cases:
        assert case.target is not None and case.target.subject == case.input.subject
        assert case.target.site == data.target_site
        assert case.target_pool and all(s.site == data.target_site for s in case.target_pool)
