"""The `scale` baseline: one global gain per scan, nothing else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from harmbench_plugins.harmonizers.scale import ScaleHarmonizer

from harmbench.errors import ConfigError, DataError
from harmbench.testing import check_harmonizer


def test_conformance(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(ScaleHarmonizer(), train, target, reference, tests[:3])


def test_matches_the_reference_percentile_and_undoes_a_pure_gain(tiny_split):
    train, target, reference, tests = tiny_split
    h = ScaleHarmonizer().fit(train, target, reference)
    scan = tests[0]
    out = h.transform(scan, reference)
    np.testing.assert_allclose(np.percentile(out.brain_values(), 95), np.percentile(reference.brain_values(), 95))
    # a pure global gain on the input changes nothing in the output
    gained = dataclasses.replace(scan, data=scan.data * np.float32(3.7))
    np.testing.assert_allclose(h.transform(gained, reference).data, out.data, rtol=1e-5)
    # contrast is untouched: the output is the input times one number inside the brain
    ratio = out.data[scan.brain] / scan.data[scan.brain]
    assert np.ptp(ratio[np.isfinite(ratio)]) < 1e-4 * ratio.mean()
    np.testing.assert_array_equal(out.data[~scan.brain], scan.data[~scan.brain])


def test_bad_parameters_and_inputs_are_named(tiny_split):
    train, target, reference, tests = tiny_split
    with pytest.raises(ConfigError, match="percentile"):
        ScaleHarmonizer(percentile=0).fit(train, target, reference)
    with pytest.raises(ConfigError, match="percentile"):
        ScaleHarmonizer(percentile=101).fit(train, target, reference)
    h = ScaleHarmonizer().fit(train, target, reference)
    with pytest.raises(DataError, match="reference"):
        h.transform(tests[0], None)
    blank = tests[0].with_data(np.zeros(tests[0].shape, np.float32))
    with pytest.raises(DataError, match="percentile"):
        h.transform(blank, reference)
