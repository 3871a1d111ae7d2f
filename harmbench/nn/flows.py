"""Glow-style multi-scale normalizing flows over 2-D images, built from nflows pieces.

Used by the BlindHarmony harmonizer (Jeong et al., ICCV 2023, arXiv 2305.10732), whose public code trains
this family of flow (Durkan et al.'s neural spline flows in a Glow layout: Kingma & Dhariwal, NeurIPS 2018)
on target-site slices. What is here is method-independent:

- :func:`glow_spline_flow` builds the transform: per level a 2×2 squeeze, then ``steps`` steps of
  ActNorm → invertible 1×1 convolution → rational-quadratic spline coupling (a convolutional residual net
  predicts the spline parameters of half the channels from the other half), then a closing 1×1
  convolution; between levels half the channels are factored out (nflows' ``MultiscaleCompositeTransform``).
  The latent is the flat concatenation of every factored-out part and the last level's output.
- :class:`ImageFlow` pairs that transform with a standard-normal base distribution: ``log_prob``,
  ``encode`` (x → z) and ``decode`` (z → x).
- :func:`dequantize` / :func:`bits_per_dim`: uniform dequantisation of ``num_bits``-bit images scaled to
  [−0.5, 0.5] and the negative log-likelihood of the discrete image in bits per dimension, the usual
  training objective of image flows.

Images are (B, C, H, W) with H and W multiples of ``2**levels`` (pad with
:func:`harmbench.nn.slices.pad_to_multiple_2d`).
"""

from __future__ import annotations

import math

import torch
from nflows.nn.nets.resnet import ConvResidualNet
from nflows.transforms import (
    ActNorm,
    CompositeTransform,
    MultiscaleCompositeTransform,
    OneByOneConvolution,
    PiecewiseRationalQuadraticCouplingTransform,
    SqueezeTransform,
)
from torch import nn

__all__ = ["ImageFlow", "bits_per_dim", "dequantize", "glow_spline_flow", "quantize_centre"]


def _coupling(channels: int, hidden: int, blocks: int, bins: int, tail_bound: float, parity: int) -> nn.Module:
    mask = torch.ones(channels)
    mask[parity::2] = -1  # alternate which half is transformed from one step to the next

    def net(in_channels: int, out_channels: int) -> nn.Module:
        return ConvResidualNet(in_channels, out_channels, hidden_channels=hidden, num_blocks=blocks)

    return PiecewiseRationalQuadraticCouplingTransform(
        mask=mask, transform_net_create_fn=net, num_bins=bins, tails="linear", tail_bound=tail_bound
    )


def glow_spline_flow(
    shape: tuple[int, int, int],
    *,
    levels: int,
    steps: int,
    hidden: int,
    blocks: int = 2,
    bins: int = 8,
    tail_bound: float = 3.0,
) -> MultiscaleCompositeTransform:
    """The multi-scale flow for (C, H, W) images (module docstring); H and W must be multiples of 2**levels.

    Weights, and the fixed channel permutations of the 1×1 convolutions, are drawn from torch's global
    generator: build it inside :func:`harmbench.nn.runtime.seeded`.
    """
    c, h, w = shape
    if levels < 1 or steps < 1:
        raise ValueError(f"levels and steps must be >= 1, got {levels}, {steps}")
    if h % 2**levels or w % 2**levels:
        raise ValueError(f"image size {h}×{w} is not a multiple of 2**levels = {2**levels}")
    flow = MultiscaleCompositeTransform(num_transforms=levels)
    for _ in range(levels):
        squeeze = SqueezeTransform()
        c, h, w = squeeze.get_output_shape(c, h, w)
        parts: list[nn.Module] = [squeeze]
        for step in range(steps):
            parts += [ActNorm(c), OneByOneConvolution(c), _coupling(c, hidden, blocks, bins, tail_bound, step % 2)]
        parts.append(OneByOneConvolution(c))
        next_shape = flow.add_transform(CompositeTransform(parts), (c, h, w))
        if next_shape is not None:
            c, h, w = next_shape
    return flow


class ImageFlow(nn.Module):
    """A flow transform ``f`` with a standard-normal latent: ``log p(x) = log N(f(x)) + log|det ∂f/∂x|``."""

    def __init__(self, transform: MultiscaleCompositeTransform) -> None:
        super().__init__()
        self.transform = transform

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) → (z (B, D), log|det|)."""
        return self.transform(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) → x (B, C, H, W)."""
        x, _ = self.transform.inverse(z)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of each image (nats), (B,)."""
        z, logabsdet = self.encode(x)
        base = -0.5 * (z.pow(2).sum(dim=1) + z.shape[1] * math.log(2 * math.pi))
        return base + logabsdet


def dequantize(x01: torch.Tensor, num_bits: int, generator: torch.Generator) -> torch.Tensor:
    """[0, 1] images → ``num_bits``-bit levels plus uniform noise, scaled to [−0.5, 0.5).

    Values are quantised to ``2**num_bits`` levels, a uniform draw in [0, 1) is added (the noise is from
    ``generator``), the result divided by ``2**num_bits`` and shifted by −0.5.
    """
    levels = 2**num_bits
    q = torch.floor(x01.clamp(0.0, 1.0) * (levels - 1))
    noise = torch.rand(q.shape, generator=generator, dtype=q.dtype, device="cpu").to(q.device)
    return (q + noise) / levels - 0.5


def quantize_centre(x01: torch.Tensor, num_bits: int) -> torch.Tensor:
    """The deterministic counterpart of :func:`dequantize`: each level's centre, in [−0.5, 0.5)."""
    levels = 2**num_bits
    return (torch.floor(x01.clamp(0.0, 1.0) * (levels - 1)) + 0.5) / levels - 0.5


def bits_per_dim(log_prob: torch.Tensor, n_dims: int, num_bits: int) -> torch.Tensor:
    """Negative log-likelihood of the discrete ``num_bits``-bit images in bits per dimension, (B,).

    ``log_prob`` is the density of the dequantised images scaled by ``2**-num_bits``; the discrete
    probability of a level is that density times the bin width ``2**-num_bits`` per dimension.
    """
    return -(log_prob - n_dims * num_bits * math.log(2.0)) / (n_dims * math.log(2.0))
