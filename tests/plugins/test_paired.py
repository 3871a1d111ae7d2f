from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from harmbench_plugins.evaluators import paired
from harmbench_plugins.evaluators.paired import PSNR_MAX_DB, PairedEvaluator, ssim_map

from harmbench.api import EvalCase
from harmbench.errors import ConfigError, DataError
from harmbench.testing import check_evaluator


def _pair(cohort):
    subj = cohort.subjects[-1]
    return cohort.find(subj, cohort.sites[1]), cohort.find(subj, cohort.sites[0])


def _noisy(scan, sd, seed=0):
    noise = np.random.default_rng(seed).normal(0.0, sd, scan.shape)
    return scan.with_data(np.where(scan.brain, np.maximum(scan.data + noise, 0), 0))


def test_perfect_prediction(tiny_cohort):
    a, t = _pair(tiny_cohort)
    values = PairedEvaluator().evaluate_scan(EvalCase(input=a, output=a.with_data(t.data), target=t))
    assert values["psnr"] == pytest.approx(PSNR_MAX_DB) and math.isfinite(values["psnr"])
    assert PSNR_MAX_DB == pytest.approx(20 * math.log10(4096))
    assert values["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_closer_prediction_scores_better(tiny_cohort):
    a, t = _pair(tiny_cohort)
    scale = float(np.percentile(t.brain_values(), 99))
    ev = PairedEvaluator()
    good = ev.evaluate_scan(EvalCase(input=a, output=_noisy(t, 0.02 * scale), target=t))
    bad = ev.evaluate_scan(EvalCase(input=a, output=_noisy(t, 0.2 * scale), target=t))
    assert 20 < good["psnr"] < 60 and bad["psnr"] < good["psnr"] - 10
    assert 0 < bad["ssim"] < good["ssim"] < 1


def test_psnr_follows_the_documented_convention(tiny_cohort):
    # One voxel differing by 0.1 of the target's p99 inside a brain of n voxels: PSNR = 10 log10(n / 0.01).
    _, t = _pair(tiny_cohort)
    scale = float(np.percentile(t.brain_values(), 99))
    data = t.data.copy()
    idx = tuple(np.argwhere(t.brain & (t.data < 0.5 * scale))[0])
    data[idx] += 0.1 * scale
    values = PairedEvaluator().evaluate_scan(EvalCase(input=t, output=t.with_data(data), target=t))
    n = int(t.brain.sum())
    assert values["psnr"] == pytest.approx(10 * math.log10(n / 0.01), rel=1e-4)


def test_invariant_to_a_common_rescaling(tiny_cohort):
    a, t = _pair(tiny_cohort)
    ev = PairedEvaluator()
    base = ev.evaluate_scan(EvalCase(input=a, output=a, target=t))
    scaled = ev.evaluate_scan(
        EvalCase(input=a, output=a.with_data(a.data * 3), target=t.with_data(t.data * 3)),
    )
    assert scaled["psnr"] == pytest.approx(base["psnr"], rel=1e-5)
    assert scaled["ssim"] == pytest.approx(base["ssim"], rel=1e-5)


def test_a_gain_on_the_output_alone_changes_nothing(tiny_cohort):
    # Each image is normalised on its own (BlindHarmony's convention): a global gain is not fidelity.
    a, t = _pair(tiny_cohort)
    ev = PairedEvaluator()
    base = ev.evaluate_scan(EvalCase(input=a, output=a, target=t))
    gained = ev.evaluate_scan(EvalCase(input=a, output=a.with_data(a.data * 0.37), target=t))
    assert gained["psnr"] == pytest.approx(base["psnr"], rel=1e-6)
    assert gained["ssim"] == pytest.approx(base["ssim"], rel=1e-6)


def test_ssim_map_matches_the_formula_on_constant_images():
    x = np.full((9, 9, 9), 0.4)
    y = np.full((9, 9, 9), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.4 * 0.6 + c1) / (0.4**2 + 0.6**2 + c1)
    np.testing.assert_allclose(ssim_map(x, y), expected, rtol=1e-10)


def test_nan_without_target_and_error_on_shape_mismatch(tiny_cohort):
    a, t = _pair(tiny_cohort)
    ev = PairedEvaluator()
    assert all(math.isnan(v) for v in ev.evaluate_scan(EvalCase(input=a, output=a, target=None)).values())
    small = dataclasses.replace(t, data=t.data[:-1], mask=None, labels=None)
    with pytest.raises(DataError, match="shape"):
        ev.evaluate_scan(EvalCase(input=a, output=a, target=small))


def test_conformance(tiny_cohort):
    a, t = _pair(tiny_cohort)
    check_evaluator(
        PairedEvaluator(), [EvalCase(input=a, output=a, target=t), EvalCase(input=t, output=t, target=None)]
    )


def test_registered_and_declared():
    assert paired.harmbench_register_evaluators() == [PairedEvaluator]
    ev = PairedEvaluator()
    assert [m.name for m in ev.metrics] == ["psnr", "ssim"]
    assert ev.metric("psnr").unit == "dB" and ev.metric("ssim").ideal == 1.0
    assert all(m.higher_is_better for m in ev.metrics)
    assert ev.metric("ssim").axis == "fidelity" and ev.metric("psnr").axis is None


def test_each_target_is_prepared_once_with_the_same_figures(tiny_cohort, monkeypatch):
    # every harmonizer's cell scores against the same target scans: their normalisation and local moments
    # are remembered by content, and the figures are exactly those of the plain functions
    a, t = _pair(tiny_cohort)
    other = tiny_cohort.find(tiny_cohort.subjects[0], tiny_cohort.sites[0])
    calls = []
    real = paired.local_moments
    monkeypatch.setattr(paired, "local_moments", lambda img, *args: calls.append(1) or real(img, *args))
    ev = PairedEvaluator()
    outputs = [a, _noisy(a, 5.0, seed=1), a.with_data(a.data * 2.0)]
    values = [ev.evaluate_scan(EvalCase(input=a, output=out, target=t)) for out in outputs]
    assert len(calls) == 1 + len(outputs)  # the target once, each output once
    for out, got in zip(outputs, values, strict=True):
        x = paired.normalise(out.data, paired.own_scale(out.data, out.brain))
        y = paired.normalise(t.data, paired.own_scale(t.data, t.brain))
        region = out.brain | t.brain
        assert got == {"psnr": paired.psnr(x, y, region), "ssim": paired.ssim(x, y, region)}
    before = len(calls)
    ev.evaluate_scan(EvalCase(input=a, output=a, target=other))
    assert len(calls) == before + 2  # a new target, then the output


def test_scores_do_not_depend_on_n_jobs(tiny_cohort):
    # with worker processes the cases go out grouped by target; the same figures, in the same order
    subjects = tiny_cohort.subjects[:3]
    cases = []
    for k, subject in enumerate(subjects):
        target = tiny_cohort.find(subject, tiny_cohort.sites[0])
        for site in tiny_cohort.sites[1:3]:
            scan = tiny_cohort.find(subject, site)
            cases.append(EvalCase(input=scan, output=_noisy(scan, 2.0 + k, seed=k), target=target))
    cases.insert(2, EvalCase(input=cases[0].input, output=cases[0].input, target=None))
    parallel = PairedEvaluator(n_jobs=2).evaluate(cases)
    assert parallel == PairedEvaluator(n_jobs=1).evaluate(cases)
    assert math.isnan(parallel[4]["value"]) and parallel[4]["metric"] == "psnr"  # the case without a target
    with pytest.raises(ConfigError, match="paired: parameter 'n_jobs'"):
        PairedEvaluator(n_jobs=0).evaluate(cases)
    small = dataclasses.replace(cases[0].target, data=cases[0].target.data[:-1], mask=None, labels=None)
    with pytest.raises(DataError, match="shape"):
        PairedEvaluator(n_jobs=2).evaluate(
            [*cases, EvalCase(input=cases[0].input, output=cases[0].input, target=small)]
        )
