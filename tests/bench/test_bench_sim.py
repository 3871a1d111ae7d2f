"""Speed of the simulator: one quick-profile subject scanned at every default site (target < 1 s)."""

from __future__ import annotations

import pytest

from harmbench.data import sim


@pytest.mark.benchmark
def test_bench_quick_subject_all_sites(benchmark):
    sites = sim.default_sites()
    sim.simulate_subject(0, sites=sites, profile="quick")  # warm-up: template load and grid caches
    counter = iter(range(1, 10**6))
    scans = benchmark(lambda: sim.simulate_subject(next(counter), sites=sites, profile="quick"))
    assert len(scans) == len(sites)
    assert benchmark.stats.stats.median < 1.0
