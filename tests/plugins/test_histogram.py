from __future__ import annotations

import numpy as np
import pytest
from harmbench_plugins.evaluators.wasserstein import wasserstein_1d
from harmbench_plugins.harmonizers import histogram
from harmbench_plugins.harmonizers.histogram import PERCENTILES, HistogramHarmonizer, landmarks, piecewise_linear

from harmbench.data.scan import Cohort
from harmbench.errors import ConfigError, DataError
from harmbench.testing import check_harmonizer


@pytest.mark.parametrize("standard", ["reference", "site"])
def test_conformance(tiny_split, standard):
    train, target, reference, tests = tiny_split
    check_harmonizer(HistogramHarmonizer(standard=standard), train, target, reference, tests)


def test_invalid_standard_names_the_parameter(tiny_split):
    train, target, reference, _ = tiny_split
    with pytest.raises(ConfigError, match="standard"):
        HistogramHarmonizer(standard="mean").fit(train, target, reference)


def test_reference_standard_needs_a_reference(tiny_split):
    train, target, _, _ = tiny_split
    with pytest.raises(DataError, match="reference"):
        HistogramHarmonizer().fit(train, target, None)


def test_site_standard_is_mean_of_target_site_landmarks(tiny_cohort):
    target, other = tiny_cohort.sites[:2]
    train = Cohort(tiny_cohort.by_site(target)[:2] + tiny_cohort.by_site(other)[2:3], name="train")
    reference = train[0]
    h = HistogramHarmonizer(standard="site").fit(train, target, reference)
    expected = np.mean([landmarks(s) for s in train.by_site(target)], axis=0)
    np.testing.assert_allclose(h.get_state()["standard_landmarks"], expected)
    assert len(train.by_site(target)) == 2


def test_output_landmarks_match_the_standard(tiny_split):
    train, target, reference, tests = tiny_split
    h = HistogramHarmonizer().fit(train, target, reference)
    out = h.transform(tests[0], reference)
    std = landmarks(reference)
    np.testing.assert_allclose(landmarks(out)[1:-1], std[1:-1], rtol=0.02, atol=0.01 * std[-1])
    # Background stays what it was (zero) and the mask is untouched.
    np.testing.assert_array_equal(out.data[~tests[0].brain], tests[0].data[~tests[0].brain])


def test_lowers_w1_to_the_target_versus_identity(tiny_split, tiny_cohort):
    train, target, reference, tests = tiny_split
    h = HistogramHarmonizer().fit(train, target, reference)
    for scan in tests:
        truth = tiny_cohort.find(scan.subject, target)
        before = wasserstein_1d(scan.brain_values(), truth.brain_values())
        after = wasserstein_1d(h.transform(scan, reference).brain_values(), truth.brain_values())
        assert after < 0.5 * before, (scan.describe(), before, after)


def test_recovers_an_affine_intensity_change_exactly(tiny_cohort):
    reference = tiny_cohort[0]
    brain = reference.brain
    shifted = reference.with_data(np.where(brain, 1.7 * reference.data + 30.0, 0.0))
    h = HistogramHarmonizer().fit(Cohort([reference]), reference.site, reference)
    out = h.transform(shifted, reference)
    np.testing.assert_allclose(out.data[brain], np.maximum(reference.data[brain], 0), rtol=1e-4, atol=1e-3)


def test_piecewise_linear_extrapolates_linearly():
    src = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    std = 2 * src + 1
    values = np.array([-5.0, 0.5, 9.5, 20.0])
    np.testing.assert_allclose(piecewise_linear(values, src, std), 2 * values + 1)
    assert len(PERCENTILES) == 11


def test_negatives_are_clipped(tiny_cohort):
    reference = tiny_cohort[0]
    h = HistogramHarmonizer()
    h.set_state({"standard_landmarks": landmarks(reference) - landmarks(reference)[0] * 5})
    h.fitted_ = True
    out = h.transform(reference)
    assert out.data.min() >= 0.0 and np.isfinite(out.data).all()


def test_registered():
    assert histogram.harmbench_register_harmonizers() == [HistogramHarmonizer]
    assert HistogramHarmonizer.meta.name == "histogram" and HistogramHarmonizer.meta.uses_reference
