from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from harmbench_plugins.evaluators import site_removal
from harmbench_plugins.evaluators.site_removal import (
    SiteRemovalEvaluator,
    balanced_accuracy_shares,
    cross_validated_predictions,
    grouped_folds,
    site_features,
    within_subject_permutation,
)
from sklearn.metrics import balanced_accuracy_score

from harmbench.api import EvalCase
from harmbench.errors import ConfigError, DataError
from harmbench.testing import check_evaluator


def _source_scans(cohort, n_sites=3):
    sources = cohort.sites[1 : 1 + n_sites]
    return [s for s in cohort.scans if s.site in sources]


def _bacc(records):
    values = [r["value"] for r in records if r["metric"] == "site_bacc"]
    return float(np.mean(values))


def _p(records):
    (value,) = [r["value"] for r in records if r["metric"] == "site_perm_p"]
    return value


def _fast(**kw):
    """Few permutations and repeats: the tests that do not read the p-value need none of its resolution."""
    return SiteRemovalEvaluator(n_permutations=kw.pop("n_permutations", 4), n_repeats=kw.pop("n_repeats", 2), **kw)


def _chance(records):
    return sorted({r["value"] for r in records if r["metric"] == "site_chance"})


def test_identity_on_the_simulator_is_well_above_chance_and_significant(tiny_cohort):
    cases = [EvalCase(input=s, output=s, target=None) for s in _source_scans(tiny_cohort)]
    records = SiteRemovalEvaluator(n_permutations=19, n_repeats=2).evaluate(cases)
    assert _chance(records) == pytest.approx([1 / 3])
    assert _bacc(records) > 0.8, _bacc(records)
    assert _p(records) <= 0.05, _p(records)


def test_a_per_scan_rescale_does_not_hide_the_site(tiny_cohort):
    # Each output divided by its own brain median: no gain left, but contrast, blur and noise are.
    cases = [
        EvalCase(input=s, output=s.with_data(s.data / np.median(s.brain_values())), target=None)
        for s in _source_scans(tiny_cohort)
    ]
    assert _bacc(_fast().evaluate(cases)) > 0.8


def test_noise_alone_is_seen(tiny_cohort):
    # Every site's output is the subject's target scan with a site-specific noise level: only the texture
    # features can tell them apart reliably.
    target = tiny_cohort.sites[0]
    rng = np.random.default_rng(3)
    level = {site: 0.02 * (1 + i) for i, site in enumerate(tiny_cohort.sites)}
    cases = []
    for s in _source_scans(tiny_cohort):
        t = tiny_cohort.find(s.subject, target)
        sd = level[s.site] * float(np.percentile(t.brain_values(), 99))
        data = np.where(t.brain, np.abs(t.data + rng.normal(0.0, sd, t.shape)), 0.0)
        cases.append(EvalCase(input=s, output=t.with_data(data), target=None))
    assert _bacc(_fast().evaluate(cases)) > 0.6  # chance is 1/3; measured 0.72 with 2 repeats


def test_outputs_equal_to_the_target_scan_are_at_chance(tiny_cohort):
    # A perfect harmonizer: every site's scan of a subject becomes that subject's target-site scan. The
    # classifier then sees identical features for all sites of a held-out subject: exactly 1 in k is right.
    target = tiny_cohort.sites[0]
    cases = [
        EvalCase(input=s, output=tiny_cohort.find(s.subject, target), target=None) for s in _source_scans(tiny_cohort)
    ]
    records = SiteRemovalEvaluator(n_permutations=9, n_repeats=2).evaluate(cases)
    assert _bacc(records) == pytest.approx(1 / 3)
    assert _p(records) == 1.0  # every permutation is as good as the observed labelling


def test_the_same_scans_relabelled_as_sites_are_at_chance(tiny_cohort):
    base = tiny_cohort.by_site(tiny_cohort.sites[2])
    cases = [
        EvalCase(input=dataclasses.replace(s, site=f"copy-{i}"), output=s, target=None) for s in base for i in range(4)
    ]
    records = _fast().evaluate(cases)
    assert _chance(records) == pytest.approx([1 / 4])
    assert _bacc(records) == pytest.approx(1 / 4)


def test_record_mean_is_balanced_accuracy_on_unbalanced_data(tiny_cohort):
    # Unbalanced sites, and outputs that carry only part of the site (a weak site gain drowned in a
    # larger per-subject gain), so that the classifier makes some mistakes.
    scans = _source_scans(tiny_cohort)
    keep = [s for s in scans if not (s.site == tiny_cohort.sites[1] and s.subject in tiny_cohort.subjects[:3])]
    site_gain = {site: 1.0 + 0.03 * i for i, site in enumerate(tiny_cohort.sites)}
    rng = np.random.default_rng(0)
    subject_gain = {subj: rng.uniform(0.8, 1.2) for subj in tiny_cohort.subjects}
    target = tiny_cohort.sites[0]
    cases = []
    for s in keep:
        t = tiny_cohort.find(s.subject, target)
        noise = rng.normal(0.0, 0.02 * float(t.data.max()), t.shape).astype(np.float32)
        data = np.where(t.brain, t.data * site_gain[s.site] * subject_gain[s.subject] + noise, 0.0)
        cases.append(EvalCase(input=s, output=t.with_data(data), target=None))
    records = _fast().evaluate(cases)
    sites = [c.input.site for c in cases]
    subjects = [c.input.subject for c in cases]
    features = np.stack([site_features(c.output) for c in cases])
    repeats = grouped_folds(subjects, 5, 2, 0)
    assert len(repeats) == 2  # 6 subjects, 5 folds: shuffled, repeated
    expected = float(
        np.mean(
            [balanced_accuracy_score(sites, list(cross_validated_predictions(features, sites, f))) for f in repeats]
        )
    )
    assert 0.0 < expected < 1.0, expected
    assert _bacc(records) == pytest.approx(expected, abs=1e-12)
    per_scan = [r["value"] for r in records if r["metric"] == "site_bacc"]
    assert len(per_scan) == len(cases)


def test_shares_formula():
    shares = balanced_accuracy_shares(["a", "a", "a", "b"], ["a", "b", "a", "a"])
    assert shares == pytest.approx([4 / 6, 0.0, 4 / 6, 0.0])
    assert shares.mean() == pytest.approx(balanced_accuracy_score(["a", "a", "a", "b"], ["a", "b", "a", "a"]))
    assert balanced_accuracy_shares(["a", "b"], ["a", "b"]) == pytest.approx([1.0, 1.0])


def test_folds_group_subjects():
    subjects = ["a", "a", "b", "b", "c", "c"]
    (loso,) = grouped_folds(subjects, 5, 5, 0)  # fewer subjects than folds: leave one subject out, once
    assert [list(f) for f in loso] == [[0, 1], [2, 3], [4, 5]]
    many = [f"s{i}" for i in range(12) for _ in range(2)]
    repeats = grouped_folds(many, 4, 3, 0)
    assert len(repeats) == 3 and [f.tolist() for f in repeats[0]] != [f.tolist() for f in repeats[1]]
    for folds in repeats:
        assert sorted(np.concatenate(folds).tolist()) == list(range(24))
        assert all(len({many[i] for i in f} & {many[i] for i in g}) == 0 for f in folds for g in folds if f is not g)


def test_within_subject_permutation_keeps_each_subjects_sites():
    sites = ["x", "y", "z"] * 4
    subjects = [s for s in "abcd" for _ in range(3)]
    permuted = within_subject_permutation(sites, subjects, np.random.default_rng(0))
    for subject in "abcd":
        idx = [i for i, s in enumerate(subjects) if s == subject]
        assert sorted(permuted[i] for i in idx) == ["x", "y", "z"]
    assert permuted != sites


def test_deterministic(tiny_cohort):
    cases = [EvalCase(input=s, output=s, target=None) for s in _source_scans(tiny_cohort)]
    assert _fast().evaluate(cases) == _fast().evaluate(cases)


def test_scores_do_not_depend_on_n_jobs(tiny_cohort):
    # features and fits run in worker processes; the same computations, gathered in order
    scans = _source_scans(tiny_cohort)
    noisy = [s.with_data(s.data * np.float32(1.0 + 0.1 * i)) for i, s in enumerate(scans)]
    cases = [EvalCase(input=s, output=o, target=None) for s, o in zip(scans, noisy, strict=True)]
    assert _fast(n_jobs=2).evaluate(cases) == _fast(n_jobs=1).evaluate(cases)


def test_clear_errors(tiny_cohort):
    one_site = [EvalCase(input=s, output=s, target=None) for s in tiny_cohort.by_site(tiny_cohort.sites[1])]
    with pytest.raises(DataError, match="at least 2"):
        SiteRemovalEvaluator().evaluate(one_site)
    subject = tiny_cohort.subjects[0]
    one_subject = [EvalCase(input=s, output=s, target=None) for s in tiny_cohort.scans if s.subject == subject]
    with pytest.raises(DataError, match="subject"):
        SiteRemovalEvaluator().evaluate(one_subject)
    cases = [EvalCase(input=s, output=s, target=None) for s in _source_scans(tiny_cohort)]
    with pytest.raises(ConfigError, match="'n_quantiles'"):
        SiteRemovalEvaluator(n_quantiles=1).evaluate(cases)
    with pytest.raises(ConfigError, match="'C'"):
        SiteRemovalEvaluator(C=0).evaluate(cases)
    with pytest.raises(ConfigError, match="'n_splits'"):
        SiteRemovalEvaluator(n_splits=1).evaluate(cases)
    with pytest.raises(ConfigError, match="'n_permutations'"):
        SiteRemovalEvaluator(n_permutations=0).evaluate(cases)
    with pytest.raises(ConfigError, match="site_removal: parameter 'n_jobs'"):
        SiteRemovalEvaluator(n_jobs=0).evaluate(cases)


def test_declared_and_registered():
    ev = SiteRemovalEvaluator()
    assert ev.metric("site_bacc").higher_is_better is False and ev.metric("site_bacc").main
    assert ev.metric("site_bacc").axis == "site"
    assert not ev.metric("site_perm_p").ranked and not ev.metric("site_perm_p").main
    chance = ev.metric("site_chance")
    assert chance.higher_is_better is None and chance.ideal is None and not chance.ranked
    assert site_removal.harmbench_register_evaluators() == [SiteRemovalEvaluator]


def test_conformance(tiny_cohort):
    check_evaluator(_fast(), [EvalCase(input=s, output=s, target=None) for s in _source_scans(tiny_cohort)])


@pytest.mark.parametrize("where", ["inner", "edge", "empty"])
def test_gradient_magnitude_is_numpys_gradient_at_the_voxels(where):
    # computed on a box for speed, but bit-identical to np.gradient's central differences, edges included
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 100.0, size=(12, 14, 10))
    mask = np.zeros(data.shape, dtype=bool)
    if where == "inner":
        mask[3:9, 2:11, 4:8] = rng.random((6, 9, 4)) < 0.7
    elif where == "edge":
        mask[0:5, 5:14, 3:6] = True
    expected = np.sqrt(sum(g * g for g in np.gradient(data)))[mask]
    got = site_removal.gradient_magnitude(data, mask)
    assert got.shape == expected.shape and np.array_equal(got, expected)
