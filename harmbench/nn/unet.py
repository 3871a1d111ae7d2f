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

On the CPU, PyTorch sends a 3×3×3 convolution of a single small volume (batch 1 and N·C·D·H ≤ 20480)
to its native im2col kernels rather than oneDNN's, forward and backward, a heuristic tuned for 2-D images
that is 3–10× slower on these 3-D feature maps (measured at the default profile's 53×64×55 brain box:
a 16→16 convolution at half resolution 38 ms native vs 5 ms oneDNN forward, and 45 + 32 ms native vs
4 + 4 ms for the two gradients; a whole inference 0.25 s vs about 0.12 s, and 0.10 s in channels-last
layout). `Conv3d` therefore calls oneDNN directly for its stride-1 convolutions, in inference and in
training; in training both gradients are also oneDNN forward convolutions (`_OneDNNConvolution`), since
oneDNN's own backward-weights kernel took twice as long as the forward convolution that computes the
same sums. A segmenter training step went from 0.66 to 0.30 s. The results are the same convolutions up
to float32 rounding (largest relative difference of outputs and gradients against float64 measured at
4e-6, against 1e-6 for PyTorch's kernels); a trained network is therefore another draw of the same
training, like one trained with another thread count.
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


#: stride and dilation of the convolutions `Conv3d` sends to oneDNN
_ONES = (1, 1, 1)


class _OneDNNConvolution(torch.autograd.Function):
    """A stride-1 convolution whose forward and backward passes are all oneDNN forward convolutions.

    PyTorch's backward of a small 3-D convolution (batch 1) runs its native kernels, and oneDNN's own
    backward-weights kernel is about twice as slow as a forward convolution that computes the same sums
    (measured on the segmenter's feature maps, see the module docstring). Both gradients are convolutions:
    the input's, of the output gradient with the flipped, transposed kernel; the kernel's, of the input with
    the output gradient, the batch taking the place of the channels.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, ...],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return torch.mkldnn_convolution(x, weight, bias, padding, _ONES, _ONES, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3, 4).transpose(0, 1).contiguous()
            padding = tuple(k - 1 - p for k, p in zip(weight.shape[2:], ctx.padding, strict=True))
            grad_x = torch.mkldnn_convolution(grad, flipped, None, padding, _ONES, _ONES, 1)
        if ctx.needs_input_grad[1]:
            # (C_in, N, ...) convolved with (C_out, N, ...): every input channel against every output channel's
            # gradient, summed over the batch, gives the kernel-sized (C_in, C_out, k, k, k) correlation
            channels_first = x.transpose(0, 1).contiguous(), grad.transpose(0, 1).contiguous()
            correlation = torch.mkldnn_convolution(*channels_first, None, ctx.padding, _ONES, _ONES, 1)
            grad_weight = correlation.transpose(0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_weight, grad_bias, None


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs float32 CPU inputs through oneDNN whatever their size, in inference and in
    training (see the module docstring); same parameters and state dict as ``nn.Conv3d``."""

    def _onednn(self, x: torch.Tensor) -> bool:
        return (
            _ONEDNN
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and self.stride == _ONES
            and self.dilation == _ONES
            and self.groups == 1
            and all(2 * p + 1 == k for k, p in zip(self.kernel_size, self.padding, strict=True))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._onednn(x):
            return super().forward(x)
        if not torch.is_grad_enabled():
            # channels-last at inference: a whole forward 12 % faster; in training it doubled the step time
            weight = self.weight.contiguous(memory_format=torch.channels_last_3d)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            return torch.mkldnn_convolution(x, weight, self.bias, self.padding, _ONES, _ONES, 1)
        return _OneDNNConvolution.apply(x.contiguous(), self.weight, self.bias, self.padding)


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
