"""Fit time of `cyclegan` at the quick profile, and how it grows with the number of source sites.

Run with ``pytest -m benchmark --benchmark-enable tests/bench/test_bench_cyclegan.py``. Data: the protocol's unpaired
training split of ``simulate_cohort("quick", seed=0)`` (4 mm, 48×56×48; target ``siemens-3t-mprage``, the last two
sites unseen, so three seen source sites, as in the default suite).

* ``test_bench_cyclegan_fit_quick``: the default parameters, one generator pair per seen source site (three);
  one round, since a fit takes minutes. Target (issue 14): under 5 minutes on 2 CPU cores.
* ``test_bench_cyclegan_fit_vs_source_sites``: the same training restricted to the target site and the first
  1, 2 or 3 source sites, with ``SCALING_STEPS`` steps per pair to keep the sweep short. Pairs train one after
  the other, so the fit time should grow linearly with the number of source sites (MURD's argument against
  pairwise translation); ``extra_info`` records the seconds per pair.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from harmbench_plugins.harmonizers.cyclegan import CycleGANHarmonizer

from harmbench.data.sim import simulate_cohort
from harmbench.protocol import SplitData, make_split

pytestmark = pytest.mark.benchmark

TARGET_FIT_S = 300.0
#: Steps per pair in the scaling sweep (the default is 200).
SCALING_STEPS = 50


@pytest.fixture(scope="module")
def quick() -> SplitData:
    cohort = simulate_cohort("quick", seed=0)
    sites = cohort.sites
    unseen = sites[len(sites) - len(sites) // 3 :]
    return SplitData(make_split(cohort, sites[0], unseen, seed=0), cohort)


def test_bench_cyclegan_fit_quick(benchmark, quick):
    fitted: list[CycleGANHarmonizer] = []

    def fit() -> None:
        h = CycleGANHarmonizer().fit(quick.train, quick.target_site, rng=np.random.default_rng(0))
        fitted.append(h)

    benchmark.pedantic(fit, rounds=1, iterations=1, warmup_rounds=0)
    tests = quick.scenario_scans("seen")
    start = time.perf_counter()
    for scan in tests:
        fitted[0].transform(scan)
    benchmark.extra_info.update(
        {
            "n_train": len(quick.train),
            "transform_s_per_scan": (time.perf_counter() - start) / len(tests),
            **fitted[0].fit_info(),
        }
    )
    assert fitted[0].fit_info()["n_generator_pairs"] == 3
    assert benchmark.stats.stats.median < TARGET_FIT_S


@pytest.mark.parametrize("n_sources", [1, 2, 3])
def test_bench_cyclegan_fit_vs_source_sites(benchmark, quick, n_sources):
    target = quick.target_site
    sources = [s for s in quick.train.sites if s != target][:n_sources]
    train = quick.train.filter(lambda s: s.site == target or s.site in sources)
    fitted: list[CycleGANHarmonizer] = []
    cpu_s: list[float] = []

    def fit() -> None:
        start = time.process_time()
        h = CycleGANHarmonizer(steps=SCALING_STEPS).fit(train, target, rng=np.random.default_rng(0))
        cpu_s.append(time.process_time() - start)
        fitted.append(h)

    benchmark.pedantic(fit, rounds=1, iterations=1, warmup_rounds=0)
    info = fitted[0].fit_info()
    benchmark.extra_info.update(
        {
            "n_sources": n_sources,
            "n_parameters": info["n_parameters"],
            "s_per_pair": benchmark.stats.stats.median / n_sources,
            # process CPU time: what the fit costs without the wall-clock noise of a shared machine
            "cpu_s": cpu_s[0],
        }
    )
    assert info["n_generator_pairs"] == n_sources
    assert benchmark.stats.stats.median < TARGET_FIT_S
