"""Speed targets of the engine (run with `tox -e bench`, never in the unit tests).

- the default suite without the three GAN/flow methods (``CORE``: the suite as it was when the
  10-minute target was set, before BlindHarmony, MURD and CycleGAN joined it), cold: under 10 minutes
  on 2 cores — cohort simulation, the segmenter's training, two HAIL fits and every evaluator cell of
  30 test subjects included;
- the whole default suite, cold: under an hour on 2 cores (the deep methods' own fit targets are in
  their benchmarks);
- an unchanged re-run (everything cached): under 10 s.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from harmbench.runner import Runner
from harmbench.suite import Suite, load_suite

pytestmark = pytest.mark.benchmark

CORE = ("identity", "scale", "histogram", "ssimh", "combat", "combat-refit", "hail", "hail-no-consistency")


def core_suite() -> Suite:
    suite = load_suite()
    return suite.replace(harmonizers=tuple(c for c in suite.harmonizers if c.label in CORE))


def _cold(benchmark, tmp_path, suite: Suite) -> float:
    fresh = (tmp_path / f"cold{i}" for i in itertools.count())

    def setup():
        return (next(fresh),), {}

    benchmark.pedantic(lambda out: Runner(suite, out, progress=False).run(), setup=setup, rounds=1, iterations=1)
    return statistics.median(benchmark.stats.stats.data)


def test_core_default_run_cold(benchmark, tmp_path):
    assert _cold(benchmark, tmp_path, core_suite()) < 600


def test_default_run_cold(benchmark, tmp_path):
    assert _cold(benchmark, tmp_path, load_suite()) < 3600


def test_unchanged_rerun(benchmark, tmp_path):
    suite = core_suite()
    Runner(suite, tmp_path, progress=False).run()
    report = benchmark.pedantic(lambda: Runner(suite, tmp_path, progress=False).run(), rounds=5, iterations=1)
    assert report.cells_computed == 0
    assert statistics.median(benchmark.stats.stats.data) < 10
