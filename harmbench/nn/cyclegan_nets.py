"""2-D networks of CycleGAN: ResNet and U-Net generators with instance norm, the PatchGAN discriminator.

Zhu J-Y, Park T, Isola P, Efros AA. Unpaired image-to-image translation using cycle-consistent adversarial
networks. ICCV 2017 (arXiv 1703.10593), section 4 and appendix 7.2; the generator follows Johnson et al.
(ECCV 2016), the discriminator Isola et al.'s PatchGAN (pix2pix, CVPR 2017).

- :class:`ResnetGenerator2d` (the paper's generator): ``c7s1-k``, ``n_down`` stride-2 3×3 convolutions
  doubling the width, ``n_blocks`` residual blocks, as many stride-2 transposed convolutions back up, and a
  7×7 convolution to one channel with ``tanh``. Reflection padding, instance norm, ReLU. The paper's size is
  ``filters=64, n_down=2, n_blocks=9`` for 256×256 images (11.4 M weights for one channel in and out).
- :class:`UnetGenerator2d`: an encoder–decoder with skip connections (pix2pix's alternative generator;
  IGUANe, Medical Image Analysis 2025, uses a 3-D U-Net), ``levels`` stride-2 levels, each level two 3×3
  convolutions with instance norm and LeakyReLU(0.2), nearest upsampling on the way back, ``tanh`` output.
- :class:`PatchDiscriminator2d`: ``C64-C128-C256-C512`` of 4×4 convolutions (stride 2 except the last),
  instance norm on all but the first, LeakyReLU(0.2), then a 4×4 convolution to one logit per patch. With
  ``n_layers=3`` each output sees a 70×70 patch. The output is a map, not a scalar: the least-squares GAN
  loss is averaged over it.

Every generator maps ``(B, C, H, W)`` in [-1, 1] to ``(B, 1, H, W)`` in (-1, 1); ``H`` and ``W`` must be
multiples of :attr:`stride` (the caller pads). Weights are initialised from N(0, 0.02) as in the paper
(normalisation layers are affine-free, so there is nothing else to initialise).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "PatchDiscriminator2d",
    "ResnetGenerator2d",
    "UnetGenerator2d",
    "count_parameters",
    "init_weights",
]

#: Standard deviation of the paper's Gaussian weight initialisation.
INIT_STD = 0.02


def init_weights(module: nn.Module, std: float = INIT_STD) -> nn.Module:
    """Zhu et al.'s initialisation: every convolution's weights from N(0, std), biases zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of trainable weights."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def _norm(channels: int) -> nn.Module:
    # affine-free instance norm, as the paper's code; statistics per image, never running averages, so
    # training and inference normalise the same way
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class _ResidualBlock(nn.Module):
    """Two 3×3 convolutions (reflection padding, instance norm, ReLU between) plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator2d(nn.Module):
    """Johnson et al.'s ResNet generator as CycleGAN uses it (see the module docstring)."""

    def __init__(self, in_channels: int = 1, filters: int = 64, n_down: int = 2, n_blocks: int = 9) -> None:
        super().__init__()
        if filters < 1 or n_down < 0 or n_blocks < 0 or in_channels < 1:
            raise ValueError(
                f"ResnetGenerator2d needs in_channels, filters >= 1 and n_down, n_blocks >= 0; got "
                f"{in_channels}, {filters}, {n_down}, {n_blocks}"
            )
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, filters, 7),
            _norm(filters),
            nn.ReLU(inplace=True),
        ]
        width = filters
        for _ in range(n_down):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), _norm(2 * width), nn.ReLU(inplace=True)]
            width *= 2
        layers += [_ResidualBlock(width) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.stride = 2**n_down
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _unet_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        _norm(out_channels),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        _norm(out_channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


class UnetGenerator2d(nn.Module):
    """A 2-D U-Net generator: ``filters·2^i`` channels at level ``i`` (0 … ``levels``), skips by concatenation."""

    def __init__(self, in_channels: int = 1, filters: int = 64, levels: int = 4) -> None:
        super().__init__()
        if filters < 1 or levels < 1 or in_channels < 1:
            raise ValueError(
                f"UnetGenerator2d needs in_channels, filters, levels >= 1; got {in_channels}, {filters}, {levels}"
            )
        widths = [filters * 2**i for i in range(levels + 1)]
        self.inc = _unet_block(in_channels, widths[0])
        self.down = nn.ModuleList(_unet_block(widths[i], widths[i + 1], stride=2) for i in range(levels))
        self.up = nn.ModuleList(_unet_block(widths[i + 1] + widths[i], widths[i]) for i in range(levels - 1, -1, -1))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Sequential(nn.Conv2d(widths[0], 1, 1), nn.Tanh())
        self.stride = 2**levels
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = skips.pop()
        for block in self.up:
            h = block(torch.cat([self.upsample(h), skips.pop()], dim=1))
        return self.out(h)


class PatchDiscriminator2d(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 4×4 convolutions from ``filters`` (width doubling, at most 8×), one
    stride-1 convolution, then one logit per patch (see the module docstring)."""

    def __init__(self, in_channels: int = 1, filters: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if filters < 1 or n_layers < 1 or in_channels < 1:
            raise ValueError(
                f"PatchDiscriminator2d needs in_channels, filters, n_layers >= 1; got {in_channels}, {filters}, "
                f"{n_layers}"
            )
        layers: list[nn.Module] = [nn.Conv2d(in_channels, filters, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = filters
        for i in range(1, n_layers + 1):
            nxt = filters * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(width, nxt, 4, stride=stride, padding=1), _norm(nxt), nn.LeakyReLU(0.2, True)]
            width = nxt
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
