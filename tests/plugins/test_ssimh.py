from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from harmbench_plugins.harmonizers import ssimh
from harmbench_plugins.harmonizers.ssimh import SSIMHHarmonizer
from scipy.fft import dctn

from harmbench.errors import ConfigError, DataError
from harmbench.testing import check_harmonizer


def test_conformance(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(SSIMHHarmonizer(), train, target, reference, tests)


def _full_mask(scan, offset):
    # With a mask covering the volume and a large positive offset nothing is masked or clipped,
    # so the output is exactly the inverse DCT of the swapped spectrum.
    data = scan.data + np.float32(offset)
    return dataclasses.replace(scan, data=data, mask=np.ones(scan.shape, dtype=bool))


@pytest.mark.parametrize(("axis", "block"), [(2, 3), (0, 2)])
def test_copies_the_low_frequency_block_exactly(tiny_split, axis, block):
    train, target, reference, tests = tiny_split
    big = 4.0 * max(float(tests[0].data.max()), float(reference.data.max()))
    scan, ref = _full_mask(tests[0], offset=big), _full_mask(reference, offset=0.5 * big)
    out = SSIMHHarmonizer(axis=axis, block=block).fit(train, target, ref).transform(scan, ref)

    def spectrum(a):
        return dctn(np.moveaxis(a.astype(np.float64), axis, 0), axes=(1, 2), norm="ortho")

    s_out, s_ref, s_in = spectrum(out.data), spectrum(ref.data), spectrum(scan.data)
    tol = 1e-5 * np.abs(s_ref).max()
    np.testing.assert_allclose(s_out[:, :block, :block], s_ref[:, :block, :block], atol=tol)
    high = np.ones(s_out.shape[1:], dtype=bool)
    high[:block, :block] = False
    np.testing.assert_allclose(s_out[:, high], s_in[:, high], atol=tol)
    assert not np.allclose(s_in[:, :block, :block], s_ref[:, :block, :block], atol=tol)


def test_background_kept_and_no_negatives(tiny_split):
    train, target, reference, tests = tiny_split
    out = SSIMHHarmonizer().fit(train, target, reference).transform(tests[0], reference)
    brain = tests[0].brain
    np.testing.assert_array_equal(out.data[~brain], tests[0].data[~brain])
    assert out.data[brain].min() >= 0


def test_needs_a_reference_of_the_same_shape(tiny_split):
    train, target, reference, tests = tiny_split
    h = SSIMHHarmonizer().fit(train, target, reference)
    with pytest.raises(DataError, match="reference"):
        h.transform(tests[0], None)
    small = dataclasses.replace(reference, data=reference.data[:-1], mask=None, labels=None, source="small-ref")
    with pytest.raises(DataError) as err:
        h.transform(tests[0], small)
    assert "small-ref" in str(err.value) and tests[0].describe() in str(err.value)


@pytest.mark.parametrize("params", [{"block": 0}, {"axis": 3}, {"block": 2.5}])
def test_invalid_params(tiny_split, params):
    train, target, reference, _ = tiny_split
    with pytest.raises(ConfigError, match=next(iter(params))):
        SSIMHHarmonizer(**params).fit(train, target, reference)


def test_registered():
    assert ssimh.harmbench_register_harmonizers() == [SSIMHHarmonizer]
    assert SSIMHHarmonizer.meta.name == "ssimh" and SSIMHHarmonizer.meta.uses_reference
    assert SSIMHHarmonizer().get_params() == {"axis": 2, "block": 3}
