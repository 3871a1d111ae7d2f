"""Fit time of `murd` at the quick profile (one fit serves every target: the model is target-agnostic).

Run with ``pytest -m benchmark --benchmark-enable tests/bench/test_bench_murd.py``. The fit uses the protocol's
unpaired training split of ``simulate_cohort("quick", seed=0)`` (12 scans of 4 seen sites, 48×56×48) with the
default parameters; one round, since a fit takes minutes. Target (issue 13): under 5 minutes on 2 CPU cores.
The transform time per scan (site mode) is recorded in ``extra_info``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from harmbench_plugins.harmonizers.murd import MURDHarmonizer

from harmbench.data.sim import simulate_cohort
from harmbench.protocol import SplitData, make_split

pytestmark = pytest.mark.benchmark

TARGET_FIT_S = 300.0


@pytest.fixture(scope="module")
def quick() -> SplitData:
    cohort = simulate_cohort("quick", seed=0)
    sites = cohort.sites
    unseen = sites[len(sites) - len(sites) // 3 :]
    return SplitData(make_split(cohort, sites[0], unseen, seed=0), cohort)


def test_bench_murd_fit_quick(benchmark, quick):
    fitted: list[MURDHarmonizer] = []

    def fit() -> None:
        h = MURDHarmonizer().fit(quick.train, quick.target_site, quick.reference, rng=np.random.default_rng(0))
        fitted.append(h)

    benchmark.pedantic(fit, rounds=1, iterations=1, warmup_rounds=0)
    start = time.perf_counter()
    tests = quick.scenario_scans("seen")
    for scan in tests:
        fitted[0].transform(scan, quick.reference)
    benchmark.extra_info.update(
        {
            "n_train": len(quick.train),
            "transform_s_per_scan": (time.perf_counter() - start) / len(tests),
            **fitted[0].fit_info(),
        }
    )
    assert benchmark.stats.stats.median < TARGET_FIT_S
