from __future__ import annotations

import numpy as np
import pytest
import torch

from harmbench.nn.blocks import AdaIN3d, ConvBlock3d, UpBlock3d, adain, downsample_mask, mean_std, style_loss


def _rand(*shape: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale + shift


def test_adain_output_has_the_style_statistics_per_channel():
    content = _rand(2, 3, 6, 7, 5, seed=1, scale=4.0, shift=-2.0)
    style = _rand(2, 3, 4, 5, 6, seed=2, scale=0.3, shift=5.0) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1)
    out = AdaIN3d()(content, style)
    out_mean, out_std = mean_std(out)
    style_mean, style_std = mean_std(style)
    torch.testing.assert_close(out_mean, style_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_std, style_std, atol=1e-4, rtol=1e-4)
    # and the per-channel statistics really differ, so the check is not trivially true
    assert float((style_std[0, 2] - style_std[0, 0]).abs()) > 0.2


def test_adain_with_masks_matches_statistics_inside_the_masks():
    content = _rand(1, 2, 8, 8, 8, seed=3, scale=2.0, shift=1.0)
    style = _rand(1, 2, 8, 8, 8, seed=4, scale=0.5, shift=3.0)
    cmask = torch.zeros(1, 1, 8, 8, 8)
    cmask[..., 2:6, 1:7, 3:8] = 1
    smask = torch.zeros(1, 1, 8, 8, 8)
    smask[..., :4, :, :] = 1
    style = style + 100.0 * (1 - smask)  # the background must not leak into the style statistics
    out = AdaIN3d()(content, style, cmask, smask)
    inside = out[0][:, cmask[0, 0].bool()]
    target = style[0][:, smask[0, 0].bool()]
    np.testing.assert_allclose(inside.mean(1).numpy(), target.mean(1).numpy(), atol=1e-4)
    np.testing.assert_allclose(inside.std(1, unbiased=False).numpy(), target.std(1, unbiased=False).numpy(), rtol=1e-3)


def test_adain_with_given_content_statistics_uses_them():
    content = _rand(1, 1, 4, 4, 4, seed=5)
    out = adain(
        content,
        torch.full((1, 1, 1, 1, 1), 2.0),
        torch.full((1, 1, 1, 1, 1), 3.0),
        content_mean=torch.zeros(1, 1, 1, 1, 1),
        content_std=torch.ones(1, 1, 1, 1, 1),
    )
    torch.testing.assert_close(out, content * 3.0 + 2.0)
    with pytest.raises(ValueError, match="content_mean and content_std"):
        adain(content, torch.zeros(1, 1, 1, 1, 1), torch.ones(1, 1, 1, 1, 1), content_mean=torch.zeros(1, 1, 1, 1, 1))


def test_mean_std_masked_matches_numpy_and_survives_an_empty_mask():
    x = _rand(2, 3, 5, 5, 5, seed=6)
    mask = torch.zeros(2, 1, 5, 5, 5)
    mask[0, 0, 1:4, 1:4, 1:4] = 1  # sample 1 has an empty mask: all voxels count
    mean, std = mean_std(x, mask, eps=0.0)
    sel = x[0][:, mask[0, 0].bool()].numpy()
    np.testing.assert_allclose(mean[0].flatten().numpy(), sel.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std[0].flatten().numpy(), sel.std(1), rtol=1e-5)
    np.testing.assert_allclose(mean[1].flatten().numpy(), x[1].reshape(3, -1).mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(std).all() and mean.shape == (2, 3, 1, 1, 1)


def test_downsample_mask_keeps_cells_half_inside():
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2, :2, :2] = 1  # one full cell
    mask[..., 2:, 2:, 2] = 1  # half a cell
    mask[..., 0, 2, 2] = 1  # one voxel of a cell
    small = downsample_mask(mask, 2)
    assert small.shape == (1, 1, 2, 2, 2)
    assert small[0, 0, 0, 0, 0] == 1 and small[0, 0, 1, 1, 1] == 1 and small[0, 0, 0, 1, 1] == 0
    assert float(small.sum()) == 2
    assert torch.equal(downsample_mask(mask, 1), mask)


def test_style_loss_is_zero_at_the_target_and_positive_elsewhere():
    feats = [_rand(1, 2, 4, 4, 4, seed=7), _rand(1, 4, 2, 2, 2, seed=8)]
    masks = [None, None]
    stats = [mean_std(f) for f in feats]
    zero = style_loss(feats, masks, [s[0] for s in stats], [s[1] for s in stats])
    assert float(zero) == pytest.approx(0.0, abs=1e-10)
    moved = style_loss(feats, masks, [s[0] + 1.0 for s in stats], [s[1] for s in stats])
    assert float(moved) == pytest.approx(2.0, rel=1e-5)  # mean-squared error 1 on each of two layers
    with pytest.raises(ValueError, match="one mask"):
        style_loss(feats, [None], [s[0] for s in stats], [s[1] for s in stats])


def test_conv_blocks_shapes():
    x = torch.zeros(1, 2, 8, 6, 4)
    assert ConvBlock3d(2, 5)(x).shape == (1, 5, 8, 6, 4)
    assert ConvBlock3d(2, 5, stride=2)(x).shape == (1, 5, 4, 3, 2)
    assert UpBlock3d(2, 3, n_convs=1)(x).shape == (1, 3, 16, 12, 8)
    with pytest.raises(ValueError, match="n_convs"):
        ConvBlock3d(1, 1, n_convs=0)
