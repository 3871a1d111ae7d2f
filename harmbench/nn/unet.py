"""A small 3-D U-Net for dense prediction on whole brain volumes.

References:
    Ronneberger O, Fischer P, Brox T. U-Net: convolutional networks for biomedical image
    segmentation. MICCAI 2015 (arXiv:1505.04597) — encoder/decoder with skip connections.
    Çiçek Ö, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. 3D U-Net: learning dense volumetric
    segmentation from sparse annotation. MICCAI 2016 (arXiv:1606.06650) — the 3-D version.

Structure: ``levels`` resolution steps. Each level is two 3×3×3 convolutions, each followed by
instance normalisation (with affine parameters) and LeakyReLU(0.1); 2×2×2 max pooling goes down, a
2×2×2 stride-2 transposed convolution goes up, and the upsampled features are concatenated with the
encoder's features of the same level (the skip connection). Channels double per level from
``base_channels``. A 1×1×1 convolution gives ``out_channels`` logits per voxel.

Instance normalisation rather than batch normalisation: the networks that use this module train
with a batch of one or a few volumes, where batch statistics are noise, and a model in ``eval()``
then behaves exactly as in training (no running statistics to drift). ``norm="none"`` drops the
normalisation layers: instance normalisation divides each feature map by its own spread, which
cancels a global intensity gain (and much of an offset) of the input — right for a model that should
ignore the intensity scale, wrong for one that must react to it (a downstream model trained at one
site, used to expose another site's intensities).

Any input size is accepted: the volume is zero-padded (split evenly before/after, the extra voxel
after) to a multiple of ``2**levels`` in every axis and the logits are cropped back, so the output
has the input's spatial shape. Zero is the background of a skull-stripped scan, so the padding looks
like more background.

Inference on the CPU: PyTorch sends a 3×3×3 convolution of a single small volume (batch 1 and
N·C·D·H ≤ 20480) to its native im2col kernel rather than oneDNN's, a heuristic tuned for 2-D images
that is 3–8× slower on these 3-D feature maps (measured at the default profile's 53×64×55 brain box:
a 16→16 convolution at half resolution 38 ms native vs 5 ms oneDNN; a whole forward 0.25 s vs about
0.14 s). Outside autograd the convolutions therefore call oneDNN directly (`Conv3d`); the result is
the same convolution up to float rounding (largest logit difference measured ~1e-6). Training keeps
PyTorch's choice, so trained weights do not depend on this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conv3d", "UNet3d", "pad_to_multiple"]

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last three axes of ``x`` to multiples of ``multiple``.

    Returns the padded tensor and the slices (for the last three axes) that crop it back.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    spatial = x.shape[-3:]
    pads: list[tuple[int, int]] = []
    crops: list[slice] = []
    for size in spatial:
        total = (-size) % multiple
        before = total // 2
        pads.append((before, total - before))
        crops.append(slice(before, before + size))
    if not any(sum(p) for p in pads):
        return x, tuple(crops)
    # F.pad takes (last axis before, last axis after, second-to-last before, ...).
    flat = [v for before_after in reversed(pads) for v in before_after]
    return F.pad(x, flat), tuple(crops)


#: The normalisation layers `UNet3d` offers (see the module docstring).
NORMS = ("instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True) if kind == "instance" else nn.Identity()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that, outside autograd, runs float32 CPU inputs through oneDNN whatever their size (see the
    module docstring); same parameters and state dict as ``nn.Conv3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            _ONEDNN
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
        ):
            return torch.mkldnn_convolution(
                x.contiguous(), self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)


def _conv_block(in_channels: int, out_channels: int, norm: str = "instance") -> nn.Sequential:
    return nn.Sequential(
        Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
        _norm(norm, out_channels),
        nn.LeakyReLU(0.1),
        Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
        _norm(norm, out_channels),
        nn.LeakyReLU(0.1),
    )


class UNet3d(nn.Module):
    """3-D U-Net: ``(N, in_channels, D, H, W)`` → ``(N, out_channels, D, H, W)`` logits, any ``D, H, W``.

    ``levels`` is the number of 2× downsamplings (0 gives a plain two-convolution network);
    ``base_channels`` the width of the full-resolution level (doubled per level); ``norm`` one of `NORMS`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 8,
        levels: int = 2,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"UNet3d: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("base_channels", base_channels, 1),
            ("levels", levels, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"UNet3d: {name} must be an integer >= {low}, got {value!r}")
        self.levels = levels
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.encoders = nn.ModuleList(
            [_conv_block(in_channels if i == 0 else widths[i - 1], widths[i], norm) for i in range(levels + 1)]
        )
        self.upsamplers = nn.ModuleList(
            [nn.ConvTranspose3d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in range(levels)]
        )
        self.decoders = nn.ModuleList([_conv_block(2 * widths[i], widths[i], norm) for i in range(levels)])
        self.head = Conv3d(widths[0], out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Spatial sizes the network handles without padding are multiples of this."""
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"UNet3d expects a (N, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        x, crop = pad_to_multiple(x, self.multiple)
        skips: list[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            if i < self.levels:
                skips.append(x)
                x = F.max_pool3d(x, kernel_size=2)
        for i in reversed(range(self.levels)):
            x = self.decoders[i](torch.cat([self.upsamplers[i](x), skips[i]], dim=1))
        return self.head(x)[(..., *crop)]
