"""Speed targets of the engine (run with `tox -e bench`, never in the unit tests).

- the default suite (every harmonizer and evaluator it lists, two HAIL fits and the segmenter's
  training included) cold: under 6 minutes on 2 cores;
- an unchanged re-run (everything cached): under 10 s.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from harmbench.runner import Runner
from harmbench.suite import load_suite

pytestmark = pytest.mark.benchmark


def test_default_run_cold(benchmark, tmp_path):
    suite = load_suite()
    fresh = (tmp_path / f"cold{i}" for i in itertools.count())

    def setup():
        return (next(fresh),), {}

    benchmark.pedantic(lambda out: Runner(suite, out, progress=False).run(), setup=setup, rounds=1, iterations=1)
    assert statistics.median(benchmark.stats.stats.data) < 360


def test_unchanged_rerun(benchmark, tmp_path):
    suite = load_suite()
    Runner(suite, tmp_path, progress=False).run()
    report = benchmark.pedantic(lambda: Runner(suite, tmp_path, progress=False).run(), rounds=5, iterations=1)
    assert report.cells_computed == 0
    assert statistics.median(benchmark.stats.stats.data) < 10
