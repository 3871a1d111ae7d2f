from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pytest
from harmbench_plugins.harmonizers import identity
from harmbench_plugins.harmonizers.identity import IdentityHarmonizer

from harmbench.testing import check_harmonizer


def test_conformance(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(IdentityHarmonizer(), train, target, reference, tests)


def test_output_equals_input_and_is_a_copy(tiny_split):
    train, target, _, tests = tiny_split
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
