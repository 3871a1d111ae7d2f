"""Fit time of `hail` at the quick profile (the default suite fits it twice: the method and its ablation).

Run with ``pytest -m benchmark --benchmark-enable tests/bench/test_bench_hail.py``. The fit uses the protocol's
unpaired training split of ``simulate_cohort("quick", seed=0)`` (12 scans of 4 seen sites, 48×56×48) with the
default parameters; one round, since a fit takes about a minute. Target: under 90 s on 2 CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from harmbench_plugins.harmonizers.hail import HAILHarmonizer

from harmbench.data.sim import simulate_cohort
from harmbench.protocol import SplitData, make_split

pytestmark = pytest.mark.benchmark

TARGET_FIT_S = 90.0


@pytest.fixture(scope="module")
def quick() -> SplitData:
    cohort = simulate_cohort("quick", seed=0)
    sites = cohort.sites
    unseen = sites[len(sites) - len(sites) // 3 :]
    return SplitData(make_split(cohort, sites[0], unseen, seed=0), cohort)


def test_bench_hail_fit_quick(benchmark, quick):
    fitted: list[HAILHarmonizer] = []

    def fit() -> None:
        h = HAILHarmonizer().fit(quick.train, quick.target_site, quick.reference, rng=np.random.default_rng(0))
        fitted.append(h)

    benchmark.pedantic(fit, rounds=1, iterations=1, warmup_rounds=0)
    start = time.perf_counter()
    tests = quick.scenario_scans("seen")
    for scan in tests:
        fitted[0].transform(scan, quick.reference)
    benchmark.extra_info.update(
        {"n_train": len(quick.train), "transform_s_per_scan": (time.perf_counter() - start) / len(tests)}
    )
    assert benchmark.stats.stats.median < TARGET_FIT_S
