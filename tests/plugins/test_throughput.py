from __future__ import annotations

import math

import numpy as np
import pytest
from harmbench_plugins.evaluators import throughput
from harmbench_plugins.evaluators.throughput import ThroughputEvaluator, transform_rate

from harmbench.api import EvalCase
from harmbench.errors import ConfigError
from harmbench.testing import check_evaluator

NAMES = ["fit_s", "adapt_s", "transform_s", "transform_s_iqr", "volumes_per_s", "n_timed", "peak_mem_mb", "threads"]


def _cases(scans, transform_s, fit_s=12.5, peaks=None, **summary):
    peaks = peaks or [100.0] * len(transform_s)
    return [
        EvalCase(
            input=s,
            output=s,
            target=None,
            timing={"fit_s": fit_s, "transform_s": t, "peak_mem_mb": m, **summary},
        )
        for s, t, m in zip(scans, transform_s, peaks, strict=True)
    ]


def _values(records):
    assert all(r["subject"] == "*" and r["site"] == "*" for r in records)
    return {r["metric"]: r["value"] for r in records}


def test_the_runners_summary_is_reported(tiny_cohort):
    summary = {"transform_s_median": 0.25, "transform_s_iqr": 0.05, "n_timed": 7.0, "threads": 2.0, "adapt_s": 3.5}
    cases = _cases(tiny_cohort.scans[:3], [0.3, 0.2, 0.25], peaks=[120.0, 300.5, 90.0], **summary)
    values = _values(ThroughputEvaluator().evaluate(cases))
    assert values == pytest.approx(
        {
            "fit_s": 12.5,
            "adapt_s": 3.5,
            "transform_s": 0.25,
            "transform_s_iqr": 0.05,
            "volumes_per_s": 4.0,
            "n_timed": 7.0,
            "peak_mem_mb": 300.5,
            "threads": 2.0,
        }
    )


def test_inductive_methods_have_a_nan_adapt_record(tiny_cohort):
    cases = _cases(tiny_cohort.scans[:3], [0.3, 0.2, 0.25], transform_s_median=0.25, adapt_s=math.nan)
    assert math.isnan(_values(ThroughputEvaluator().evaluate(cases))["adapt_s"])


def test_without_the_summary_the_cases_own_times_are_used(tiny_cohort):
    scans = tiny_cohort.scans[:5]
    times = [3.0, 0.5, 0.2, 0.25, 0.4]
    values = _values(ThroughputEvaluator().evaluate(_cases(scans, times)))
    assert values["transform_s"] == pytest.approx(0.4) and values["n_timed"] == 5
    assert values["transform_s_iqr"] == pytest.approx(np.subtract(*np.percentile(times, [75, 25])))
    assert values["volumes_per_s"] == pytest.approx(2.5)
    # warmup=1 drops the cold first scan: median of [0.5, 0.2, 0.25, 0.4] is 0.325 s
    warm = _values(ThroughputEvaluator(warmup=1).evaluate(_cases(scans, times)))
    assert warm["volumes_per_s"] == pytest.approx(1 / 0.325) and warm["n_timed"] == 4


def test_too_few_cases_use_what_there_is(tiny_cohort):
    cases = _cases(tiny_cohort.scans[:1], [0.5])
    assert _values(ThroughputEvaluator(warmup=1).evaluate(cases))["volumes_per_s"] == pytest.approx(2.0)
    assert transform_rate([0.5, 0.25], warmup=3) == pytest.approx(1 / 0.375)
    assert math.isnan(transform_rate([], warmup=1))


def test_missing_timing_gives_no_records(tiny_cohort):
    scans = tiny_cohort.scans[:3]
    oracle = [EvalCase(input=s, output=s, target=s) for s in scans]
    assert ThroughputEvaluator().evaluate(oracle) == []
    nan_memory = [
        EvalCase(input=s, output=s, target=None, timing={"fit_s": 1.0, "transform_s": 0.5, "peak_mem_mb": math.nan})
        for s in scans
    ]
    assert "peak_mem_mb" not in _values(ThroughputEvaluator().evaluate(nan_memory))


def test_bad_warmup_is_named(tiny_cohort):
    with pytest.raises(ConfigError, match="'warmup'"):
        ThroughputEvaluator(warmup=-1).evaluate(_cases(tiny_cohort.scans[:2], [1.0, 1.0]))


def test_declared_informational_and_device_dependent():
    ev = ThroughputEvaluator()
    assert [m.name for m in ev.metrics] == NAMES
    assert all(m.device_dependent and not m.ranked and m.axis is None for m in ev.metrics)
    assert ev.metric("fit_s").unit == "s" and ev.metric("peak_mem_mb").unit == "MiB"
    assert throughput.harmbench_register_evaluators() == [ThroughputEvaluator]


def test_conformance(tiny_cohort):
    # what the runner passes (harmbench.runner._transform_all)
    summary = {"transform_s_median": 0.6, "transform_s_iqr": 0.2, "n_timed": 5.0, "threads": 2.0, "adapt_s": math.nan}
    check_evaluator(ThroughputEvaluator(), _cases(tiny_cohort.scans[:3], [1.0, 0.5, 0.6], **summary))
