"""2-D slice pieces: slicing with context, sampling, padding and volume reassembly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmbench.nn.slices import SliceSampler, crop_2d, pad_to_multiple_2d, predict_volume, volume_slices


def _volume(shape=(5, 6, 7)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volume_slices_with_context_repeat_the_edges(axis):
    vol = _volume()
    s = volume_slices(vol, axis=axis, context=1)
    n = vol.shape[axis]
    assert s.shape[:2] == (n, 3)
    moved = np.moveaxis(vol, axis, 0)
    for k in range(n):
        np.testing.assert_array_equal(s[k, 1].numpy(), moved[k])
        np.testing.assert_array_equal(s[k, 0].numpy(), moved[max(k - 1, 0)])
        np.testing.assert_array_equal(s[k, 2].numpy(), moved[min(k + 1, n - 1)])


def test_pad_and_crop_round_trip():
    x = torch.randn(2, 3, 13, 10)
    padded, crops = pad_to_multiple_2d(x, 8)
    assert padded.shape[-2:] == (16, 16)
    torch.testing.assert_close(crop_2d(padded, crops), x)
    same, crops = pad_to_multiple_2d(x[..., :8, :8], 8)
    assert same.shape[-2:] == (8, 8) and crops == (slice(0, 8), slice(0, 8))


@pytest.mark.parametrize("axis", [0, 2])
def test_predict_volume_reassembles_the_volume(axis):
    vol = _volume((6, 9, 11))
    out = predict_volume(lambda x: x[:, 1:2] * 2.0, vol, axis=axis, context=1, batch_size=4, multiple=4)
    np.testing.assert_allclose(out, vol * 2.0)
    keep = np.zeros(vol.shape[axis], dtype=bool)
    keep[2] = True
    partial = predict_volume(lambda x: x[:, :1] * 0.0, vol, axis=axis, slice_mask=keep)
    expected = vol.copy()
    np.moveaxis(expected, axis, 0)[2] = 0.0
    np.testing.assert_array_equal(partial, expected)


def test_predict_volume_refuses_a_wrong_output_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        predict_volume(lambda x: x.repeat(1, 2, 1, 1), _volume())


def test_sampler_draws_brain_slices_reproducibly_and_among_volumes():
    vols = [_volume(), _volume() + 1000.0]
    masks = [np.zeros((5, 6, 7), bool) for _ in vols]
    masks[0][:, :, 2:5] = True
    masks[1][:, :, 3] = True
    sampler = SliceSampler(vols, masks, context=1, multiple=4)
    x, m, v = sampler.sample(32, torch.Generator().manual_seed(0))
    assert x.shape == (32, 3, 8, 8) and m.shape == (32, 1, 8, 8)
    # only slices with brain, and each channel stack is the slice and its neighbours
    centre = x[:, 1, 1:6, 1:7]
    for i in range(32):
        z = int(centre[i, 0, 0].item() - (1000.0 if v[i] == 1 else 0.0)) % 7
        assert (2 <= z <= 4) if v[i] == 0 else z == 3
    again = sampler.sample(32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again[0], x)
    _, _, only = sampler.sample(16, torch.Generator().manual_seed(1), among=[1])
    assert set(only.tolist()) == {1}


def test_sampler_refuses_volumes_without_brain():
    with pytest.raises(ValueError, match="no slice"):
        SliceSampler([_volume()], [np.zeros((5, 6, 7), bool)])
