"""Throughput: fit time, transform rate and peak memory of a harmonizer, on the device it ran on.

The runner measures, and this evaluator summarises, per (scenario, harmonizer) cell. Every
`EvalCase` carries the runner's ``timing``: ``fit_s`` (the harmonizer's one fit), ``transform_s``
(this scan's transform) and ``peak_mem_mb`` (peak memory of the fit and of the transform pass above
what was resident when each began: the process's peak resident set size on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA, where times come from CUDA events after
synchronisation; see `harmbench.timing`). Scenario-level records
(``subject = site = "*"``):

- ``fit_s``: seconds to fit (lower is better). The runner gives every case the same value; the median
  over the cases is reported, so that a case disagreeing would not decide it.
- ``volumes_per_s``: ``1 / median(transform_s)`` over the cases after dropping the first ``warmup``
  (default 1) timed cases as warm-up — the first transform pays one-off costs (lazy imports, allocator growth,
  kernel selection) that say nothing about the steady rate. Cases arrive in the order they were
  transformed. With ``warmup`` or fewer cases, all of them are used (a cold-start rate is still a
  rate; a warning is logged). The median, not the mean, so that one scan interrupted by the
  operating system does not move the figure.
- ``peak_mem_mb``: the largest ``peak_mem_mb`` over the cases, in MiB (lower is better).

A metric whose timing key is absent from every case (the runner's oracle row has no timing at all)
or not a finite number gets no record; non-finite values are ignored.

All three are ``device_dependent``: they describe the machine as much as the method, so the
leaderboard gives each device its own column. They are measurements, not functions of the seed: a
re-run on the same machine gives slightly different numbers, which is why they live in their own
suite (``throughput``) and never in the committed default leaderboard that CI regenerates and
compares byte for byte.
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


class ThroughputEvaluator(Evaluator):
    """Fit seconds, transform volumes per second (median after warm-up) and peak memory, per device."""

    name = "throughput"
    version = "1.0"
    metrics = (
        MetricSpec(
            "fit_s",
            higher_is_better=False,
            unit="s",
            device_dependent=True,
            description="seconds to fit the harmonizer once",
        ),
        MetricSpec(
            "volumes_per_s",
            higher_is_better=True,
            unit="1/s",
            device_dependent=True,
            description="transform rate: 1 / median per-scan transform seconds, after dropping warm-up scans",
        ),
        MetricSpec(
            "peak_mem_mb",
            higher_is_better=False,
            unit="MiB",
            device_dependent=True,
            description="peak memory during fit and transform (RSS on CPU, CUDA max allocated on GPU)",
        ),
    )

    def __init__(self, warmup: int = 1) -> None:
        self.warmup = warmup

    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        check_number(self.name, "warmup", self.warmup, integer=True, minimum=0)
        warmup = int(self.warmup)
        values: dict[str, float] = {}
        fit = _finite(cases, "fit_s")
        if fit:
            values["fit_s"] = float(np.median(fit))
        times = _finite(cases, "transform_s")
        if times:
            if len(times) <= warmup:
                log.warning(
                    "throughput: only %d timed transform(s) with warmup=%d; the rate includes warm-up scans",
                    len(times),
                    warmup,
                )
            rate = transform_rate(times, int(warmup))
            if math.isfinite(rate):
                values["volumes_per_s"] = rate
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
