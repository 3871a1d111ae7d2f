"""Training time of the `segmentation` evaluator's target-site U-Net at the quick profile.

Run with ``pytest -m benchmark --benchmark-enable tests/bench/test_bench_segmentation.py``. One round
trains the segmenter from scratch (``prepare`` without a cache) on the quick profile's target-site
training scans, as a suite run does once per dataset and target; the target is meant to stay at about a
minute on two CPU cores. The trained segmenter's mean Dice on the target-site test scans (its ceiling)
goes into the benchmark's ``extra_info``.
"""

from __future__ import annotations

import numpy as np
import pytest
from harmbench_plugins.evaluators.segmentation import SegmentationEvaluator

from harmbench.api import EvalCase
from harmbench.data.sim import DEFAULT_TARGET_SITE, DEFAULT_UNSEEN_SITES, simulate_cohort
from harmbench.protocol import SplitData, make_split

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def quick() -> SplitData:
    cohort = simulate_cohort("quick", seed=0, progress=False)
    return SplitData(make_split(cohort, DEFAULT_TARGET_SITE, DEFAULT_UNSEEN_SITES, seed=0), cohort)


def test_bench_segmenter_training(benchmark, quick):
    evaluator = SegmentationEvaluator(seed=0)
    benchmark.pedantic(
        lambda: evaluator.prepare(quick.train, quick.target_site, None), rounds=1, iterations=1, warmup_rounds=0
    )
    assert not evaluator.loaded_from_cache_
    targets = [quick.paired_target(s) for s in quick.scenario_scans("seen")]
    cases = [EvalCase(input=t, output=t, target=t) for t in {t.key: t for t in targets if t is not None}.values()]
    records = evaluator.evaluate(cases)
    ceiling = float(np.mean([r["value"] for r in records if r["metric"] == "dice_mean"]))
    benchmark.extra_info.update(
        {
            "n_training_scans": len(quick.train.by_site(quick.target_site)),
            "steps": evaluator.steps,
            "ceiling_dice_mean": ceiling,
        }
    )
    assert ceiling > 0.7, ceiling
