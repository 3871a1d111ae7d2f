from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pytest
from harmbench_plugins.harmonizers import identity
from harmbench_plugins.harmonizers.identity import IdentityHarmonizer

from harmbench.data.scan import Cohort
from harmbench.testing import check_harmonizer


def _split(cohort: Cohort):
    sites, subjects = cohort.sites, cohort.subjects
    target = sites[0]
    half = len(subjects) // 2
    train = Cohort([cohort.find(s, sites[i % len(sites)]) for i, s in enumerate(subjects[:half])], name="train")
    reference = cohort.find(subjects[0], target)
    tests = [cohort.find(s, site) for s in subjects[half:] for site in sites[1:3]]
    return train, target, reference, tests


def test_conformance(tiny_cohort):
    train, target, reference, tests = _split(tiny_cohort)
    check_harmonizer(IdentityHarmonizer(), train, target, reference, tests)


def test_output_equals_input_and_is_a_copy(tiny_cohort):
    train, target, _, tests = _split(tiny_cohort)
    h = IdentityHarmonizer().fit(train, target)
    scan = tests[0]
    out = h.transform(scan)
    np.testing.assert_array_equal(out.data, scan.data)
    assert out.data.dtype == np.float32
    assert out.data is not scan.data
    assert out.mask is scan.mask and out.key == scan.key


def test_registered_like_a_third_party_plugin():
    assert identity.harmbench_register_harmonizers() == [IdentityHarmonizer]
    assert IdentityHarmonizer.meta.name == "identity"
    assert not IdentityHarmonizer.meta.uses_reference
    eps = {ep.name: ep.value for ep in entry_points(group="harmbench")}
    assert eps.get("identity") == "harmbench_plugins.harmonizers.identity"


def test_unfitted_raises(tiny_cohort):
    from harmbench.errors import NotFittedError

    with pytest.raises(NotFittedError, match="identity"):
        IdentityHarmonizer().transform(tiny_cohort[0])
