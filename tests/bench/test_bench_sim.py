"""Speed of the simulator (run with `tox -e bench`, never in the unit tests).

- one quick-profile subject (4 mm) at every default site plus its target-site rescan: under 1 s;
- one default-profile subject (3 mm, what `harmbench run` uses) at every site plus its rescan: under 2 s;
- the whole default cohort (64 subjects × 6 sites + 64 rescans): under 60 s on 2 cores.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from harmbench.data import sim

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize(("profile", "limit_s"), [("quick", 1.0), ("default", 2.0)])
def test_bench_subject_all_sites_with_rescan(benchmark, profile, limit_s):
    sites = sim.default_sites()
    rescan = [sim.DEFAULT_TARGET_SITE]
    sim.simulate_subject(0, sites=sites, profile=profile, rescan_sites=rescan)  # warm-up: template and grid caches
    counter = itertools.count(1)
    scans = benchmark(lambda: sim.simulate_subject(next(counter), sites=sites, profile=profile, rescan_sites=rescan))
    assert len(scans) == len(sites) + 1
    assert benchmark.stats.stats.median < limit_s


def test_bench_default_cohort(benchmark):
    sim.simulate_subject(0, profile="default")  # template and grid caches, as a warm `harmbench run` would have
    cohort = benchmark.pedantic(lambda: sim.simulate_cohort("default", progress=False), rounds=1, iterations=1)
    assert len(cohort.subjects) == sim.PROFILES["default"].n_subjects
    assert statistics.median(benchmark.stats.stats.data) < 60
