from __future__ import annotations

import math

import pytest
from harmbench_plugins.evaluators import throughput
from harmbench_plugins.evaluators.throughput import ThroughputEvaluator, transform_rate

from harmbench.api import EvalCase
from harmbench.errors import ConfigError
from harmbench.testing import check_evaluator


def _cases(scans, transform_s, fit_s=12.5, peaks=None):
    peaks = peaks or [100.0] * len(transform_s)
    return [
        EvalCase(input=s, output=s, target=None, timing={"fit_s": fit_s, "transform_s": t, "peak_mem_mb": m})
        for s, t, m in zip(scans, transform_s, peaks, strict=True)
    ]


def _values(records):
    assert all(r["subject"] == "*" and r["site"] == "*" for r in records)
    return {r["metric"]: r["value"] for r in records}


def test_known_timings_give_known_numbers(tiny_cohort):
    scans = tiny_cohort.scans[:5]
    # the cold first scan (3 s) is dropped; median of [0.5, 0.2, 0.25, 0.4] is 0.325 s
    cases = _cases(scans, [3.0, 0.5, 0.2, 0.25, 0.4], peaks=[120.0, 300.5, 90.0, 100.0, 110.0])
    values = _values(ThroughputEvaluator().evaluate(cases))
    assert values == pytest.approx({"fit_s": 12.5, "volumes_per_s": 1 / 0.325, "peak_mem_mb": 300.5})


def test_warmup_parameter(tiny_cohort):
    cases = _cases(tiny_cohort.scans[:4], [3.0, 2.0, 0.5, 0.25])
    assert _values(ThroughputEvaluator(warmup=0).evaluate(cases))["volumes_per_s"] == pytest.approx(1 / 1.25)
    assert _values(ThroughputEvaluator(warmup=2).evaluate(cases))["volumes_per_s"] == pytest.approx(1 / 0.375)


def test_too_few_cases_use_what_there_is(tiny_cohort):
    cases = _cases(tiny_cohort.scans[:1], [0.5])
    assert _values(ThroughputEvaluator(warmup=1).evaluate(cases))["volumes_per_s"] == pytest.approx(2.0)
    assert transform_rate([0.5, 0.25], warmup=3) == pytest.approx(1 / 0.375)
    assert math.isnan(transform_rate([], warmup=1))


def test_missing_timing_gives_no_records(tiny_cohort):
    scans = tiny_cohort.scans[:3]
    oracle = [EvalCase(input=s, output=s, target=s) for s in scans]
    assert ThroughputEvaluator().evaluate(oracle) == []
    no_memory = [EvalCase(input=s, output=s, target=None, timing={"fit_s": 1.0, "transform_s": 0.5}) for s in scans]
    assert set(_values(ThroughputEvaluator().evaluate(no_memory))) == {"fit_s", "volumes_per_s"}
    nan_memory = [
        EvalCase(input=s, output=s, target=None, timing={"fit_s": 1.0, "transform_s": 0.5, "peak_mem_mb": math.nan})
        for s in scans
    ]
    assert "peak_mem_mb" not in _values(ThroughputEvaluator().evaluate(nan_memory))


def test_bad_warmup_is_named(tiny_cohort):
    with pytest.raises(ConfigError, match="'warmup'"):
        ThroughputEvaluator(warmup=-1).evaluate(_cases(tiny_cohort.scans[:2], [1.0, 1.0]))


def test_declared_device_dependent():
    ev = ThroughputEvaluator()
    assert all(m.device_dependent for m in ev.metrics)
    assert [m.name for m in ev.metrics] == ["fit_s", "volumes_per_s", "peak_mem_mb"]
    assert ev.metric("fit_s").higher_is_better is False and ev.metric("fit_s").unit == "s"
    assert ev.metric("volumes_per_s").higher_is_better is True
    assert ev.metric("peak_mem_mb").higher_is_better is False
    assert throughput.harmbench_register_evaluators() == [ThroughputEvaluator]


def test_conformance(tiny_cohort):
    check_evaluator(ThroughputEvaluator(), _cases(tiny_cohort.scans[:3], [1.0, 0.5, 0.6]))
