"""Small 3-D torch building blocks shared by the deep harmonizers: conv blocks, masked statistics, AdaIN.

Adaptive instance normalisation (AdaIN) follows Huang X, Belongie S. Arbitrary style transfer in real-time
with adaptive instance normalization. ICCV 2017 (arXiv 1703.06868): a content feature map is whitened per
channel and re-coloured with the per-channel mean and standard deviation of a style feature map,

    AdaIN(x, y) = σ(y) · (x − μ(x)) / σ(x) + μ(y).

Brain MRI volumes are mostly background, and how much background a volume or a patch holds has nothing
to do with its style, so every statistic here can be restricted to a mask (the brain); without a mask
the statistics are over the whole spatial extent, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AdaIN3d",
    "ConvBlock3d",
    "UpBlock3d",
    "adain",
    "downsample_mask",
    "mean_std",
    "style_loss",
]

#: Added to variances before the square root (and to counts), so a constant channel gives a finite AdaIN.
EPS = 1e-5


class ConvBlock3d(nn.Sequential):
    """``n_convs`` 3×3×3 convolutions, each followed by LeakyReLU(0.2); the first may have a stride.

    A stride-2 first convolution halves every spatial dimension (a learned downsampling, which keeps the
    block fully convolutional). No normalisation layer: for style transfer the feature statistics are the
    style, and a normalisation layer inside the extractor would erase it.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, n_convs: int = 2) -> None:
        if n_convs < 1:
            raise ValueError(f"n_convs must be >= 1, got {n_convs}")
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers.append(
                nn.Conv3d(
                    in_channels if i == 0 else out_channels, out_channels, 3, stride=stride if i == 0 else 1, padding=1
                )
            )
            # leaky: with the few channels a CPU budget allows, dead ReLU channels cost too much capacity
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        super().__init__(*layers)


class UpBlock3d(nn.Sequential):
    """Nearest-neighbour ×2 upsampling then a `ConvBlock3d`.

    Upsample-then-convolve rather than a transposed convolution, to avoid checkerboard artefacts
    (Odena et al., Distill 2016), which in MRI would read as texture that is not anatomy.
    """

    def __init__(self, in_channels: int, out_channels: int, *, n_convs: int = 2) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"), ConvBlock3d(in_channels, out_channels, n_convs=n_convs)
        )


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A (N, 1, D, H, W) mask at 1/``factor`` resolution: cells at least half inside the mask.

    Matches the output grid of ``factor``-fold strided convolutions with padding 1 on a volume whose
    dimensions are multiples of ``factor`` (the caller pads to that).
    """
    mask = mask.float()
    if factor == 1:
        return mask
    return (F.avg_pool3d(mask, kernel_size=factor, stride=factor) >= 0.5).float()


def mean_std(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and standard deviation of ``x`` (N, C, *spatial), as (N, C, 1, …, 1).

    With ``mask`` (N, 1, *spatial, broadcast over channels) only the voxels inside it count; a sample whose
    mask is empty falls back to all voxels rather than dividing by zero. Computed in float32 even under
    autocast: float16 sums over ~10⁶ voxels lose the digits the style lives in.
    """
    x = x.float()
    dims = tuple(range(2, x.dim()))
    if mask is None:
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=False)
        return mean, torch.sqrt(var + eps)
    m = mask.float()
    count = m.sum(dim=dims, keepdim=True)
    empty = count < 1
    m = torch.where(empty, torch.ones_like(m), m)
    count = m.sum(dim=dims, keepdim=True)
    mean = (x * m).sum(dim=dims, keepdim=True) / count
    var = (((x - mean) ** 2) * m).sum(dim=dims, keepdim=True) / count
    return mean, torch.sqrt(var + eps)


def adain(
    content: torch.Tensor,
    style_mean: torch.Tensor,
    style_std: torch.Tensor,
    *,
    content_mean: torch.Tensor | None = None,
    content_std: torch.Tensor | None = None,
    content_mask: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017) from style statistics.

    ``content`` (N, C, *spatial) is whitened with its own statistics — given as ``content_mean`` /
    ``content_std``, or computed (inside ``content_mask`` when given) — and re-coloured with ``style_mean``
    / ``style_std`` (N, C, 1, …, 1). Passing the content statistics lets a caller train on patches while
    normalising with the statistics of the whole volume the patch came from, as inference will.
    """
    if (content_mean is None) != (content_std is None):
        raise ValueError("give both content_mean and content_std, or neither")
    if content_mean is None or content_std is None:
        content_mean, content_std = mean_std(content, content_mask, eps)
    return (content.float() - content_mean) / content_std * style_std + style_mean


class AdaIN3d(nn.Module):
    """`adain` as a module: ``AdaIN3d()(content, style, content_mask, style_mask)`` with both as feature maps."""

    def __init__(self, eps: float = EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self,
        content: torch.Tensor,
        style: torch.Tensor,
        content_mask: torch.Tensor | None = None,
        style_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        style_mean, style_std = mean_std(style, style_mask, self.eps)
        return adain(content, style_mean, style_std, content_mask=content_mask, eps=self.eps)


def style_loss(
    features: list[torch.Tensor],
    masks: list[torch.Tensor | None],
    target_means: list[torch.Tensor],
    target_stds: list[torch.Tensor],
) -> torch.Tensor:
    """Huang & Belongie's style loss: Σ over layers of ‖μ(φᵢ) − μᵢ*‖² + ‖σ(φᵢ) − σᵢ*‖² (mean over channels).

    ``features`` are the generated image's feature maps per layer, ``masks`` the masks their statistics
    are taken in, ``target_*`` the style image's statistics per layer.
    """
    if not (len(features) == len(masks) == len(target_means) == len(target_stds)):
        raise ValueError("style_loss needs one mask and one target mean/std per feature layer")
    total = features[0].new_zeros((), dtype=torch.float32)
    for feat, mask, mu, sigma in zip(features, masks, target_means, target_stds, strict=True):
        mean, std = mean_std(feat, mask)
        total = total + F.mse_loss(mean, mu.float()) + F.mse_loss(std, sigma.float())
    return total
