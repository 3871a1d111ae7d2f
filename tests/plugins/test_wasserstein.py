from __future__ import annotations

import math

import numpy as np
import pytest
from harmbench_plugins.evaluators import wasserstein
from harmbench_plugins.evaluators.wasserstein import WassersteinEvaluator, wasserstein_1d
from scipy.stats import wasserstein_distance

from harmbench.api import EvalCase
from harmbench.testing import check_evaluator


def _pair(cohort):
    """(input at a source site, same subject at the target site, another target-site scan)."""
    target = cohort.sites[0]
    subj = cohort.subjects[-1]
    return cohort.find(subj, cohort.sites[1]), cohort.find(subj, target), cohort.find(cohort.subjects[0], target)


@pytest.mark.parametrize(("n", "m"), [(1000, 1000), (997, 1500), (1, 7)])
def test_w1_equals_scipy(n, m):
    rng = np.random.default_rng(n + m)
    u = rng.gamma(2.0, 3.0, n)
    v = rng.normal(5.0, 2.0, m)
    assert wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-10, abs=1e-12)


def test_w1_on_scans_equals_scipy(tiny_cohort):
    a, t, _ = _pair(tiny_cohort)
    expected = wasserstein_distance(a.brain_values(), t.brain_values())
    assert wasserstein_1d(a.brain_values(), t.brain_values()) == pytest.approx(expected, rel=1e-10)


def test_identity_gives_nwd_ip_0_and_nwd_tp_1(tiny_cohort):
    a, t, _ = _pair(tiny_cohort)
    values = WassersteinEvaluator().evaluate_scan(EvalCase(input=a, output=a, target=t))
    assert values["nwd_ip"] == 0.0
    assert values["nwd_tp"] == pytest.approx(1.0)
    assert values["w1_target"] == pytest.approx(wasserstein_distance(a.brain_values(), t.brain_values()))


def test_perfect_prediction_gives_nwd_ip_1_and_nwd_tp_0(tiny_cohort):
    a, t, _ = _pair(tiny_cohort)
    values = WassersteinEvaluator().evaluate_scan(EvalCase(input=a, output=t, target=t))
    assert values["nwd_ip"] == pytest.approx(1.0)
    assert values["nwd_tp"] == 0.0 and values["w1_target"] == 0.0


def test_falls_back_to_the_pooled_target_site(tiny_cohort):
    a, t, other = _pair(tiny_cohort)
    values = WassersteinEvaluator().evaluate_scan(EvalCase(input=a, output=a, target=None, target_pool=[t, other]))
    pooled = np.concatenate([t.brain_values(), other.brain_values()])
    assert values["w1_target"] == pytest.approx(wasserstein_distance(a.brain_values(), pooled), rel=1e-10)
    assert values["nwd_tp"] == pytest.approx(1.0)


def test_undefined_cases_are_nan(tiny_cohort):
    a, _, _ = _pair(tiny_cohort)
    ev = WassersteinEvaluator()
    assert all(math.isnan(v) for v in ev.evaluate_scan(EvalCase(input=a, output=a, target=None)).values())
    same = ev.evaluate_scan(EvalCase(input=a, output=a, target=a))  # W1(input, target) = 0
    assert math.isnan(same["nwd_ip"]) and math.isnan(same["nwd_tp"]) and same["w1_target"] == 0.0


def test_conformance(tiny_cohort):
    a, t, other = _pair(tiny_cohort)
    cases = [EvalCase(input=a, output=a, target=t), EvalCase(input=other, output=other, target=None, target_pool=[t])]
    check_evaluator(WassersteinEvaluator(), cases)


def test_registered_and_declared():
    assert wasserstein.harmbench_register_evaluators() == [WassersteinEvaluator]
    ev = WassersteinEvaluator()
    assert [m.name for m in ev.metrics] == ["nwd_ip", "nwd_tp", "w1_target"]
    nwd_ip = ev.metric("nwd_ip")
    assert nwd_ip.higher_is_better is None and nwd_ip.ideal is None and not nwd_ip.ranked and not nwd_ip.main
    assert ev.metric("nwd_tp").higher_is_better is False and ev.metric("nwd_tp").axis == "intensity"
    assert not ev.metric("w1_target").main


def test_remembered_inputs_and_targets_give_the_plain_figures(tiny_cohort):
    # inputs and targets are sorted once per evaluator (every harmonizer's cell shares them); the figures are
    # those of the distances on the raw brain voxels, for a changed output and for the pooled fallback alike
    scan, target, other = _pair(tiny_cohort)
    evaluator = WassersteinEvaluator()
    outputs = [scan, scan.with_data(scan.data * np.float32(1.3)), target]
    for output in outputs:
        got = evaluator.evaluate_scan(EvalCase(input=scan, output=output, target=target))
        w_it = wasserstein_distance(scan.brain_values(), target.brain_values())
        w_tp = wasserstein_distance(target.brain_values(), output.brain_values())
        assert got["nwd_tp"] == pytest.approx(w_tp / w_it, rel=1e-9, abs=1e-12)
        assert got == WassersteinEvaluator().evaluate_scan(EvalCase(input=scan, output=output, target=target))
    pooled = EvalCase(input=scan, output=outputs[1], target=None, target_pool=[target, other])
    assert evaluator.evaluate_scan(pooled) == WassersteinEvaluator().evaluate_scan(pooled)
    pool_w = wasserstein_distance(
        np.concatenate([target.brain_values(), other.brain_values()]), outputs[1].brain_values()
    )
    assert evaluator.evaluate_scan(pooled)["w1_target"] == pytest.approx(pool_w, rel=1e-9)
