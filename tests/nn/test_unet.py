from __future__ import annotations

import numpy as np
import pytest
import torch

from harmbench.nn.runtime import load_module_state, module_state, seeded
from harmbench.nn.unet import Conv3d, UNet3d, pad_to_multiple


@pytest.mark.parametrize("shape", [(8, 8, 8), (7, 9, 11), (5, 12, 3), (3, 2, 5)])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_output_has_the_input_shape(shape, levels):
    net = UNet3d(in_channels=2, out_channels=3, base_channels=2, levels=levels)
    out = net(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)
    assert torch.isfinite(out).all()


def test_pad_to_multiple_pads_evenly_and_crops_back():
    x = torch.arange(7 * 9 * 8, dtype=torch.float32).reshape(1, 1, 7, 9, 8)
    padded, crop = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 8, 12, 8)
    assert crop == (slice(0, 7), slice(1, 10), slice(0, 8))  # 1 extra voxel goes after; 3 split 1 + 2
    assert torch.equal(padded[(..., *crop)], x)
    assert padded.sum() == x.sum()  # the padding is zeros
    same, crop = pad_to_multiple(x, 1)
    assert same is x and crop == (slice(0, 7), slice(0, 9), slice(0, 8))


def test_depth_and_width():
    net = UNet3d(in_channels=1, out_channels=4, base_channels=3, levels=2)
    assert net.multiple == 4
    assert [m[0].out_channels for m in net.encoders] == [3, 6, 12]
    assert net.head.out_channels == 4


def test_learns_and_backpropagates():
    with seeded(0) as gen:
        net = UNet3d(out_channels=2, base_channels=4, levels=1)
        x = torch.rand(1, 1, 6, 7, 5, generator=gen)
    y = (x[:, 0] > 0.5).long()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        first = first if first is not None else loss.item()
        opt.step()
    assert loss.item() < 0.5 * first


def test_seeded_initialisation_and_state_round_trip():
    with seeded(3):
        a = UNet3d(base_channels=2, levels=1)
    with seeded(3):
        b = UNet3d(base_channels=2, levels=1)
    x = torch.rand(1, 1, 5, 6, 7)
    assert torch.equal(a(x), b(x))
    state = module_state(a, "unet")
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    with seeded(4):
        c = UNet3d(base_channels=2, levels=1)
    assert not torch.equal(a(x), c(x))
    load_module_state(c, state, "unet")
    assert torch.equal(a(x), c(x))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"levels": -1}, "levels"), ({"base_channels": 0}, "base_channels"), ({"out_channels": 1.5}, "out_channels")],
)
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        UNet3d(**kwargs)


def test_wrong_rank_is_refused():
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        UNet3d(levels=1)(torch.rand(1, 8, 8, 8))


CASES = [((1, 8), 3, (20, 24, 22)), ((16, 16), 3, (9, 11, 10)), ((8, 3), 1, (7, 6, 5))]


@pytest.mark.parametrize(("channels", "kernel", "shape"), CASES)
def test_inference_convolution_is_the_same_convolution(channels, kernel, shape):
    # Outside autograd the convolution runs on oneDNN, whatever PyTorch's size heuristic would pick: the same
    # numbers up to float rounding.
    generator = torch.Generator().manual_seed(0)
    conv = Conv3d(*channels, kernel_size=kernel, padding=kernel // 2)
    plain = torch.nn.Conv3d(*channels, kernel_size=kernel, padding=kernel // 2)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, channels[0], *shape, generator=generator)
    with torch.no_grad():
        inferred, reference = conv(x), plain(x)
    assert inferred.shape == reference.shape
    assert torch.allclose(inferred, reference, atol=1e-5, rtol=1e-5)
    assert set(conv.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("channels", "kernel", "shape"), CASES)
def test_training_convolution_has_the_same_gradients(channels, kernel, shape, batch):
    # In training the forward and both gradients are oneDNN forward convolutions: against nn.Conv3d in float64,
    # the same output and gradients up to float32 rounding (largest relative difference measured 3.8e-6 here,
    # against 1e-6 for nn.Conv3d in float32; the bound leaves 5x for other CPUs, a wrong gradient is off by O(1)).
    generator = torch.Generator().manual_seed(1)
    conv = Conv3d(*channels, kernel_size=kernel, padding=kernel // 2)
    exact = torch.nn.Conv3d(*channels, kernel_size=kernel, padding=kernel // 2).double()
    exact.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    x = torch.randn(batch, channels[0], *shape, generator=generator)
    upstream = torch.randn(batch, channels[1], *shape, generator=generator)
    x32, x64 = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    out32, out64 = conv(x32), exact(x64)
    (out32 * upstream).sum().backward()
    (out64 * upstream.double()).sum().backward()
    pairs = [(out32.detach(), out64.detach()), (x32.grad, x64.grad)]
    pairs += [(conv.weight.grad, exact.weight.grad), (conv.bias.grad, exact.bias.grad)]
    for got, want in pairs:
        assert got.shape == want.shape
        assert float((got.double() - want).abs().max() / want.abs().max()) < 2e-5


def test_convolutions_oneDNN_cannot_take_are_nn_conv3d_bit_for_bit():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 10, 9, 8, generator=generator)
    for kwargs in ({"stride": 2, "padding": 1}, {"padding": 0}, {"padding": 1, "padding_mode": "reflect"}):
        conv = Conv3d(4, 5, kernel_size=3, **kwargs)
        plain = torch.nn.Conv3d(4, 5, kernel_size=3, **kwargs)
        plain.load_state_dict(conv.state_dict())
        assert torch.equal(conv(x), plain(x)), kwargs
