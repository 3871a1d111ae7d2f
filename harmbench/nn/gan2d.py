"""2-D pieces for slice-based image-to-image GANs: reflect-padded convolutions, instance-normalised
residual blocks, AdaIN residual blocks, down-sampling residual blocks, per-site linear heads and the
adversarial / R1 / image-gradient losses.

The layer types follow the multi-domain translation networks MURD builds on (Liu S, Yap P-T. Learning
multi-site harmonization of magnetic resonance images without traveling human phantoms. Communications
Engineering 2024; and StarGAN v2, Choi et al. CVPR 2020, for the per-domain heads and the R1 penalty of
Mescheder et al., ICML 2018). AdaIN is Huang & Belongie, ICCV 2017: a feature map is instance-normalised
and re-scaled/shifted per channel by an affine map of a style code.

Every module here is size-agnostic (fully convolutional or globally pooled), so a network built from them
runs on slices of any in-plane size that is a multiple of its stride.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AdaINResBlock2d",
    "ConvNormAct2d",
    "DownResBlock2d",
    "MultiHeadLinear",
    "ResBlock2d",
    "UpConvNormAct2d",
    "gradient_l1",
    "r1_penalty",
    "reflect_conv2d",
]

#: Negative slope of every LeakyReLU (the authors' choice throughout).
SLOPE = 0.2


def reflect_conv2d(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """A convolution preceded by reflection padding so that stride 1 keeps the size and stride 2 halves it.

    Reflection rather than zero padding keeps the image border from looking like an edge to the network.
    """
    total = max(kernel - stride, 0)
    before, after = total // 2, total - total // 2
    return nn.Sequential(
        nn.ReflectionPad2d((before, after, before, after)), nn.Conv2d(in_channels, out_channels, kernel, stride)
    )


class ConvNormAct2d(nn.Sequential):
    """Reflect-padded convolution → InstanceNorm (affine) → LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            reflect_conv2d(in_channels, out_channels, kernel, stride),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.LeakyReLU(SLOPE),
        )


class UpConvNormAct2d(nn.Sequential):
    """4×4 transposed convolution with stride 2 (doubles the size) → InstanceNorm (affine) → LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.LeakyReLU(SLOPE),
        )


class ResBlock2d(nn.Module):
    """``x + IN(conv(LeakyReLU(IN(conv(x)))))`` with 3×3 reflect-padded convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            reflect_conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.LeakyReLU(SLOPE),
            reflect_conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AdaIN2d(nn.Module):
    """Instance normalisation whose per-channel scale and shift are an affine map of a style code.

    ``scale = 1 + γ(s)`` so that a zero style leaves the normalised map unchanged at initialisation.
    """

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style).chunk(2, dim=1)
        return (1 + gamma[:, :, None, None]) * self.norm(x) + beta[:, :, None, None]


class AdaINResBlock2d(nn.Module):
    """`ResBlock2d` with both instance norms replaced by `AdaIN2d` driven by the style code."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv1 = reflect_conv2d(channels, channels, 3)
        self.norm1 = AdaIN2d(channels, style_dim)
        self.conv2 = reflect_conv2d(channels, channels, 3)
        self.norm2 = AdaIN2d(channels, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x), style), SLOPE)
        return x + self.norm2(self.conv2(h), style)


def _pool_if_possible(x: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling, skipped once a map is smaller than 2 pixels on a side (small test slices)."""
    if min(x.shape[-2:]) < 2:
        return x
    return F.avg_pool2d(x, 2)


class DownResBlock2d(nn.Module):
    """Pre-activation residual block that halves the size (no normalisation: its output is a style).

    ``conv3(LeakyReLU(x)) → LeakyReLU → conv3 → avgpool``, plus the shortcut ``conv1(avgpool(x))``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = reflect_conv2d(in_channels, out_channels, 3)
        self.conv2 = reflect_conv2d(out_channels, out_channels, 3)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, SLOPE))
        h = _pool_if_possible(self.conv2(F.leaky_relu(h, SLOPE)))
        return h + self.shortcut(_pool_if_possible(x))


class MultiHeadLinear(nn.Module):
    """``n_heads`` independent linear heads on one input; ``forward(x, head)`` picks one head per sample.

    One wide linear layer holds all heads (the same parameters as ``n_heads`` separate layers, one matmul).
    """

    def __init__(self, in_features: int, out_features: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.out_features = int(n_heads), int(out_features)
        self.linear = nn.Linear(in_features, self.n_heads * self.out_features)

    def all_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) → (B, n_heads, out)."""
        return self.linear(x).view(x.shape[0], self.n_heads, self.out_features)

    def forward(self, x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """(B, in), (B,) head indices → (B, out)."""
        out = self.all_heads(x)
        return out[torch.arange(x.shape[0], device=x.device), head.to(x.device)]


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Squared gradient norm of the real logits' mean w.r.t. the real images, summed per image, mean over the
    batch (Mescheder et al. 2018; the gradient of the mean as in the authors' TensorFlow code).

    ``real_images`` must have ``requires_grad`` set before the discriminator saw them.
    """
    (grad,) = torch.autograd.grad(real_logits.float().mean(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the forward-difference image gradients (both axes) of ``a`` and ``b``."""
    da_y, db_y = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    da_x, db_x = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    return (da_y - db_y).abs().mean() + (da_x - db_x).abs().mean()
