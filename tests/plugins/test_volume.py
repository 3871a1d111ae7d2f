from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from harmbench_plugins.evaluators import volume
from harmbench_plugins.evaluators._tissue import brain_volumes, segment, tissue_volumes
from harmbench_plugins.evaluators.volume import VolumeEvaluator, ravd

from harmbench.api import EvalCase
from harmbench.errors import ConfigError
from harmbench.testing import check_evaluator

MAIN = ("ravd_gm", "ravd_wm", "ravd_csf")


def _scan(cohort, site_index=1):
    return cohort.find(cohort.subjects[-1], cohort.sites[site_index])


def test_identity_gives_zero(tiny_cohort):
    scan = _scan(tiny_cohort)
    values = VolumeEvaluator().evaluate_scan(EvalCase(input=scan, output=scan, target=None))
    assert all(values[m] == 0.0 for m in MAIN)
    assert all(math.isfinite(values[f"{m}_gt"]) for m in MAIN)


def test_segmenter_ignores_an_increasing_affine_intensity_change(tiny_cohort):
    scan = _scan(tiny_cohort)
    rescaled = scan.with_data(np.where(scan.brain, 2.5 * scan.data + 40.0, 0.0))
    values = VolumeEvaluator().evaluate_scan(EvalCase(input=scan, output=rescaled, target=None))
    assert all(values[m] < 1.0 for m in MAIN), values


def test_segmenter_finds_the_tissues(tiny_cohort):
    scan = _scan(tiny_cohort, site_index=0)
    seg = segment(scan.data, scan.brain)
    assert set(np.unique(seg[scan.brain])) == {1, 2, 3}
    assert not seg[~scan.brain].any()
    agreement = float(np.mean(seg[scan.brain] == scan.labels[scan.brain]))
    assert agreement > 0.5, agreement


def test_erased_anatomy_is_penalised(tiny_cohort):
    # A "harmonization" that paints white matter with the grey-matter intensity changes the anatomy.
    scan = _scan(tiny_cohort)
    data = scan.data.copy()
    data[scan.labels == 3] = np.median(scan.data[scan.labels == 2])
    values = VolumeEvaluator().evaluate_scan(EvalCase(input=scan, output=scan.with_data(data), target=None))
    assert max(values[m] for m in MAIN) > 20.0, values


def test_ground_truth_metrics(tiny_cohort):
    scan = _scan(tiny_cohort)
    ev = VolumeEvaluator()
    out = scan.with_data(scan.data * 1.1)
    values = ev.evaluate_scan(EvalCase(input=scan, output=out, target=None))
    seg = segment(out.data, out.brain)
    for label, name in ((1, "csf"), (2, "gm"), (3, "wm")):
        expected = abs(int((seg == label).sum()) - int((scan.labels == label).sum())) / (scan.labels == label).sum()
        assert values[f"ravd_{name}_gt"] == pytest.approx(100 * expected)
    unlabelled = dataclasses.replace(scan, labels=None)
    values = ev.evaluate_scan(EvalCase(input=unlabelled, output=unlabelled, target=None))
    assert all(math.isnan(values[f"{m}_gt"]) for m in MAIN)
    assert all(values[m] == 0.0 for m in MAIN)


def test_target_variant_is_zero_for_a_perfect_output_and_nan_without_target(tiny_cohort):
    scan, target = _scan(tiny_cohort), _scan(tiny_cohort, site_index=0)
    ev = VolumeEvaluator()
    perfect = ev.evaluate_scan(EvalCase(input=scan, output=scan.with_data(target.data), target=target))
    assert all(perfect[f"{m}_target"] == 0.0 for m in MAIN)
    identity = ev.evaluate_scan(EvalCase(input=scan, output=scan, target=target))
    assert max(identity[f"{m}_target"] for m in MAIN) > 0.0
    assert all(math.isnan(v) for k, v in ev.evaluate_scan(EvalCase(scan, scan, None)).items() if k.endswith("_target"))


def test_each_distinct_image_is_segmented_once(tiny_cohort, monkeypatch):
    # inputs and targets are shared by every harmonizer's cell: segmented once per evaluator; a changed image is not
    calls = []
    monkeypatch.setattr(volume, "brain_volumes", lambda values: calls.append(1) or brain_volumes(values))
    scan, target = _scan(tiny_cohort), _scan(tiny_cohort, site_index=0)
    evaluator = VolumeEvaluator(n_jobs=1)
    first = evaluator.evaluate_scan(EvalCase(input=scan, output=scan, target=target))
    assert len(calls) == 2  # the input (= this output) and the target
    assert evaluator.evaluate_scan(EvalCase(input=scan, output=scan, target=target)) == first and len(calls) == 2
    changed = scan.with_data(np.where(scan.brain, scan.data * 0.5, 0.0).astype(scan.data.dtype))
    changed.data[tuple(np.argwhere(scan.brain)[0])] += 1.0
    evaluator.evaluate_scan(EvalCase(input=scan, output=changed, target=target))
    assert len(calls) == 3
    # a whole cell fits what is new to it first, once each, then scores from the memo
    other = _scan(tiny_cohort, site_index=2)
    evaluator.evaluate(
        [EvalCase(input=scan, output=other, target=target), EvalCase(input=other, output=other, target=None)]
    )
    assert len(calls) == 4


def test_brain_volumes_are_the_segmenters_volumes(tiny_cohort):
    for scan in tiny_cohort.scans[:4]:
        assert brain_volumes(scan.data[scan.brain]) == tissue_volumes(segment(scan.data, scan.brain))
    assert brain_volumes(np.empty(0, dtype=np.float32)) == {1: 0, 2: 0, 3: 0}


def test_scores_do_not_depend_on_n_jobs(tiny_cohort):
    # the tissue fits run in worker processes; the same fits, gathered in order
    scans = tiny_cohort.scans[:8]
    target = _scan(tiny_cohort, site_index=0)
    cases = [
        EvalCase(input=s, output=s.with_data(s.data * np.float32(0.5 + 0.1 * i) + np.float32(i)), target=target)
        for i, s in enumerate(scans)
    ]
    assert VolumeEvaluator(n_jobs=2).evaluate(cases) == VolumeEvaluator(n_jobs=1).evaluate(cases)
    with pytest.raises(ConfigError, match="volume: parameter 'n_jobs'"):
        VolumeEvaluator(n_jobs=-1).evaluate(cases)


def test_ravd_definition():
    assert ravd(110, 100) == pytest.approx(10.0)
    assert ravd(90, 100) == pytest.approx(10.0)
    assert math.isnan(ravd(5, 0))


def test_conformance(tiny_cohort):
    cases = [EvalCase(input=s, output=s, target=None) for s in tiny_cohort.scans[:2]]
    check_evaluator(VolumeEvaluator(), cases)


def test_registered_and_declared():
    assert volume.harmbench_register_evaluators() == [VolumeEvaluator]
    ev = VolumeEvaluator()
    names = [m.name for m in ev.metrics]
    assert sorted(names) == sorted([*MAIN, *(f"{m}_gt" for m in MAIN), *(f"{m}_target" for m in MAIN)])
    assert [m.name for m in ev.metrics if m.axis == "anatomy"] == ["ravd_gm_gt", "ravd_wm_gt"]
    assert all(ev.metric(m).main for m in ("ravd_gm_gt", "ravd_wm_gt"))
    # HAIL's against-input variant: informational (identity scores 0 by construction)
    assert not any(ev.metric(m).ranked or ev.metric(m).main for m in MAIN)
    ranked = [m for m in ev.metrics if m.name not in MAIN]
    assert all(m.unit == "%" and m.ideal == 0.0 and m.higher_is_better is False for m in ranked)
