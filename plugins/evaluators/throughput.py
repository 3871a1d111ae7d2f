"""Throughput: fit time, adapt time, transform rate with its spread, and peak memory, on the device it ran on.

The runner measures (`harmbench.timing`), and this evaluator summarises, per (scenario, harmonizer) cell.
How the runner measures, so that figures can be compared:

- one thread budget for every library — BLAS/OpenMP (numpy, scipy, scikit-learn) and torch alike —
  around the fit, the ``adapt`` step and the transforms; the count is reported as ``threads``;
- the transforms: one untimed warm-up call (one-off costs: lazy imports, allocator growth, kernel
  selection), then every scan timed on its own, and further timed calls (cycling over the scans) until
  there are at least ``harmbench.timing.MIN_TIMED`` = 5 timings;
- transductive methods (``meta.transductive``): their ``adapt`` step over the scenario's sites is timed
  as ``adapt_s``;
- peak memory above what was resident when each stage began (the process's RSS high-water mark on the
  CPU, ``torch.cuda.max_memory_allocated`` on CUDA), never below ``harmbench.timing.MEMORY_FLOOR_MB``
  = 1 MiB: the RSS high-water mark does not resolve less (it moves in pages and does not see memory a
  process reuses from its own heap), so a figure at the floor reads "at most about 1 MiB", not 0.

Every `EvalCase` carries the runner's ``timing``: ``fit_s``, ``transform_s`` (this scan's own
transform), ``transform_s_median`` and ``transform_s_iqr`` (over all timed calls of the pass),
``n_timed``, ``adapt_s`` (NaN for inductive methods), ``threads`` and ``peak_mem_mb`` (the larger of the
fit's and the transform pass's). Scenario-level records (``subject = site = "*"``):

- ``fit_s``: seconds to fit once;
- ``adapt_s``: seconds of the transductive ``adapt`` step (NaN for inductive methods);
- ``transform_s``: median seconds per scan after warm-up; ``transform_s_iqr``: their interquartile range
  (the spread: two methods whose medians differ by less than it are not told apart by this run);
- ``volumes_per_s``: ``1 / transform_s``;
- ``n_timed``: how many timed calls the median is over;
- ``peak_mem_mb``: the largest ``peak_mem_mb`` over the cases, in MiB;
- ``threads``: the thread budget the figures were taken under.

A case without the summary keys (another runner, a hand-made case) falls back to its own
``transform_s`` values: the median and interquartile range over the cases after dropping the first
``warmup`` (default 0: the runner has already warmed up). A metric whose timing is absent from every
case (the oracle row has no timing) or not finite gets no record.

Every metric is ``device_dependent`` (the leaderboard gives each device its own column) and
informational: timings are shown, never ranked, because a re-run on the same machine moves them by
about their spread. They are measurements, not functions of the seed, which is why they live in their
own suite (``throughput``) and never in the committed default leaderboard.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harmbench import hookimpl
from harmbench.api import EvalCase, Evaluator, MetricSpec, check_number

log = logging.getLogger(__name__)


def _finite(cases: Sequence[EvalCase], key: str) -> list[float]:
    """The finite values of ``timing[key]`` over the cases, in case order."""
    out = []
    for case in cases:
        value = case.timing.get(key) if case.timing else None
        if value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            out.append(value)
    return out


def transform_rate(transform_s: Sequence[float], warmup: int = 1) -> float:
    """Volumes per second: ``1 / median`` of the times after the first ``warmup`` (all of them if too few).

    NaN for an empty sequence or a median that is not positive.
    """
    times = list(transform_s)
    steady = times[warmup:] if len(times) > warmup else times
    if not steady:
        return math.nan
    median = float(np.median(steady))
    return 1.0 / median if median > 0 else math.nan


def _spec(name: str, unit: str, description: str, main: bool = True) -> MetricSpec:
    return MetricSpec(
        name, higher_is_better=None, ideal=None, unit=unit, main=main, device_dependent=True, description=description
    )


class ThroughputEvaluator(Evaluator):
    """Fit and adapt seconds, median transform seconds with their spread, volumes per second and peak memory,
    per device, under one stated thread budget (informational: shown, not ranked)."""

    name = "throughput"
    version = "2.0"
    metrics = (
        _spec("fit_s", "s", "seconds to fit the harmonizer once (lower is faster)"),
        _spec("adapt_s", "s", "seconds of the transductive adapt step over the scenario's sites"),
        _spec("transform_s", "s", "median seconds per scan after a warm-up call, over >= 5 timed calls", main=False),
        _spec("transform_s_iqr", "s", "interquartile range of the timed transforms (the spread)"),
        _spec("volumes_per_s", "1/s", "1 / median transform seconds (higher is faster)"),
        _spec("n_timed", "", "number of timed transform calls", main=False),
        _spec("peak_mem_mb", "MiB", "peak memory above baseline during fit and transform, floor 1 MiB"),
        _spec("threads", "", "thread budget for numpy/BLAS/OpenMP and torch alike", main=False),
    )

    def __init__(self, warmup: int = 0) -> None:
        self.warmup = warmup

    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        check_number(self.name, "warmup", self.warmup, integer=True, minimum=0)
        values: dict[str, float] = {}
        for key in ("fit_s", "adapt_s", "threads"):
            found = _finite(cases, key)
            if found:
                values[key] = float(np.median(found))
        if "fit_s" in values and "adapt_s" not in values:
            values["adapt_s"] = math.nan  # an inductive method: no adapt step to time
        median, iqr = _finite(cases, "transform_s_median"), _finite(cases, "transform_s_iqr")
        n = _finite(cases, "n_timed")
        if median:
            values["transform_s"] = float(np.median(median))
            if iqr:
                values["transform_s_iqr"] = float(np.median(iqr))
            if n:
                values["n_timed"] = float(np.median(n))
        else:
            times = _finite(cases, "transform_s")
            warmup = int(self.warmup)
            steady = times[warmup:] if len(times) > warmup else times
            if steady:
                if len(times) <= warmup:
                    log.warning("throughput: only %d timed transform(s), warmup=%d; using them all", len(times), warmup)
                values["transform_s"] = float(np.median(steady))
                values["transform_s_iqr"] = float(np.subtract(*np.percentile(steady, [75, 25])))
                values["n_timed"] = float(len(steady))
        if values.get("transform_s", 0.0) > 0.0:
            values["volumes_per_s"] = 1.0 / values["transform_s"]
        memory = _finite(cases, "peak_mem_mb")
        if memory:
            values["peak_mem_mb"] = max(memory)
        return [
            {"subject": "*", "site": "*", "metric": spec.name, "value": float(values[spec.name])}
            for spec in self.metrics
            if spec.name in values
        ]


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [ThroughputEvaluator]
