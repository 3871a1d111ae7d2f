"""MURD: one multi-site model that disentangles anatomy (content) from site appearance (style).

Reference:
    Liu S, Yap P-T. Learning multi-site harmonization of magnetic resonance images without traveling human
    phantoms. Communications Engineering 3, 6 (2024). (Multi-site Unsupervised Representation
    Disentangler; official TensorFlow 1.x code on Zenodo.)

One model serves every site: a content encoder maps a slice to a site-invariant anatomy code, a style
encoder (one head per training site) and a style mapping network (random latent → one style code per
site) give site styles, and a generator recombines any content with any style. A multi-site discriminator
has one real/fake output per site. Harmonizing to a site is encoding the content and decoding it with that
site's style, so the fitted model does not depend on the target (``Meta.target_agnostic``): the runner
fits it once per training set and reuses it for every target.

Networks (``c = channels``, ``d = n_downsample``, ``r = n_res_blocks``; input and output are 2.5-D: three
adjacent axial slices as channels)::

    content encoder  7×7 conv → 2c, IN, LeakyReLU(0.2); d × [4×4 conv stride 2, ×2 channels, IN, LeakyReLU];
                     r residual blocks (3×3 conv, IN, LeakyReLU, 3×3 conv, IN); + N(0, 1) noise in training
    style encoder    4×4 conv stride 2 → c; ``style_blocks`` × pre-activation residual blocks with 2×2
                     average pooling, ×2 channels each (no normalisation); LeakyReLU; global average pool;
                     one linear head per training site → ``style_dim``
    mapping network  ``mapping_layers`` × [linear, LeakyReLU] with c·2^d units from a ``latent_dim`` normal
                     latent; one linear head per training site → ``style_dim``
    generator        ``style_injection="concat"`` (the authors'): style tiled over the content map and
                     concatenated, r residual blocks; ``"adain"``: r residual blocks whose instance norms are
                     AdaIN driven by the style. Then d × [4×4 transposed conv stride 2, ÷2 channels, IN,
                     LeakyReLU], 7×7 conv → 3 slices, tanh
    discriminator    4×4 conv stride 2 → 2c, LeakyReLU; 4×4 conv stride 2 → 4c, IN, LeakyReLU; 4×4 conv
                     → 8c, IN, LeakyReLU; global average pool; one logit per training site

Configurations: ``murd-paper`` is the authors' code (c = 32, d = 2, r = 4, 4 style blocks, 6 mapping layers
of 128 units, 16-d latent, 64-d style, concatenation, 256² slices, batch 1, 100 k iterations, EMA 0.999;
18.9 M inference weights + 0.66 M discriminator for 4 sites) for a GPU; ``murd`` (the default) is sized for 2
CPU cores: c = 4, d = 2, r = 1, 3 style blocks, 4 mapping layers, 8-d latent, 16-d style, AdaIN, native slice
size, batch 4, 200 steps (85.7 k inference weights + 10.9 k discriminator for 4 sites; ``fit_info()`` records
the counts of a fit).

Losses (generator side; the weights are parameters, defaults from the authors' code):

* adversarial, non-saturating (``adversarial_weight`` 1), on the fake's logit for its target site;
* style consistency ‖E_s(G(c, s̃), t) − s̃‖₁ with s̃ = M(z, t) (``style_weight`` 10);
* content consistency ‖E_c(G(c, s̃)) − c‖₁ (``content_weight`` 10);
* identity / reconstruction ‖G(c, E_s(x, y)) − x‖₁ (``identity_weight`` 10);
* cycle ‖G(E_c(G(c, s̃)), E_s(x, y)) − x‖₁ (``cycle_weight`` 10);
* gradient (edge) loss between x and its cycle reconstruction, L1 of forward differences (``gradient_weight``
  1 as in the code; the paper text gives 0.1);
* content alignment: mean squared content code, the KL divergence of N(c, 1) from N(0, 1) up to a constant,
  which with the noise layer pulls every site's content into one distribution (``alignment_weight`` 0.01);
* diversity: ‖G(c, M(z₁, t)) − G(c, M(z₂, t))‖₁ with the second output detached (``diversity_weight`` 1).
  The authors' code *adds* this term, so two latents of one site are pushed to give the same image (one
  style per site, which harmonization wants); StarGAN v2's diversity-sensitive loss is the opposite sign,
  available as a negative weight.

Discriminator: non-saturating loss on real (source site's logit) and fake (target site's logit), plus the
R1 penalty ``r1_weight`` · Σ‖∇ₓ D(x)‖² per image (weight 1, no ½, as in the code). Target sites of fakes
are drawn uniformly among the training sites, latents from N(0, I). Adam β = (0, 0.99), the mapping network
at ``mapping_lr_scale`` (0.01) × the learning rate; the learning rate decays linearly to 0 over the second
half of training (the authors decay from iteration 50 k of 100 k); inference uses exponential moving
averages of the encoders, mapping network and generator.

Target modes (``target_mode``):

* ``"site"`` — site-guided: the style code of the target site is the mean of the mapping network's output
  for that site over ``n_style_samples`` (1000) latents drawn at the end of ``fit`` (seeded), stored in the
  fitted state. The target must be a training site.
* ``"reference"`` — reference-guided: the style code is the style encoder's output for the one-shot
  reference scan, averaged over its brain slices; the head is the reference site's when it was a training
  site, otherwise the mean of all heads — so a target site never seen in training works too.

How the reference is used: ``Meta.uses_reference`` is True for both modes, so the runner always passes the
target-site reference scan. Reference mode reads its voxels; site mode reads only its ``site`` label, to
know which site's style to decode with (one fitted model serves every target, so the target cannot come
from ``fit``). Its output intensities are put back on the target site's scale with the median 95th
percentile of that site's training scans (site mode) or the reference's (reference mode).

Unseen source sites go through the content encoder like any other: no part of the encoding path is
site-specific (instance norms remove each slice's global contrast and scale first). Measured (``murd``
defaults, seed 0; simulated cohort at 8 mm, 10 subjects, 4 training sites with 8 unpaired training scans, 2
unseen sites; PSNR / SSIM of brain voxels against the same subject's target-site scan, mean over 6 seen and
4 unseen test scans): site mode 16.0 dB / 0.74 seen, 16.2 dB / 0.75 unseen; reference mode 16.4 / 0.75 seen,
16.5 / 0.76 unseen. So an unseen source is harmonized as well as a seen one — the content path holds for new
sites. For comparison, ``scale`` gives 16.2 / 0.85 seen and 19.6 / 0.92 unseen, ``histogram`` 16.1 / 0.85
and 19.5 / 0.92, identity 3.4 / 0.35 and 6.0 / 0.67: at this CPU budget MURD matches the global baselines'
PSNR on seen sites but blurs (lower SSIM), and it does not exploit that the simulator's unseen sites are
close to the target once rescaled.

Cost (``murd`` defaults, 4 training sites, 12 training scans, measured as process CPU time with one torch
thread because the machine was shared; wall time on two free cores is lower): training 0.40 s per step at the
quick profile (4 mm, 48×56 slices), 0.48 s at 3 mm (64×72): a fit is about 80 s and 96 s of CPU time;
transform 0.20 s and 0.43 s of CPU time per volume.

Pre- and post-processing: each volume is divided by the 95th percentile of its brain voxels, clipped to
[0, 2] and mapped linearly to [−1, 1] (tanh range), background (outside the brain mask) at −1. Axial slices
with three-slice context (edge slices repeated) go through the networks; each voxel's output is the mean
of the three predictions it gets from the windows it belongs to (the authors' reassembly). Voxels outside
the brain mask are returned unchanged.

Departures from the authors' code, and why:

* **Size** (the ``murd`` default): widths, depth, batch and steps scaled to a 2-CPU-core budget; the
  ``murd-paper`` configuration keeps the authors' sizes. For the same reason ``murd`` trains at a learning
  rate of 1e-3 (the authors: 1e-4 over 100 k iterations), with the same Adam β and mapping-network scale.
* **Style injection**: ``murd`` uses AdaIN residual blocks rather than concatenation; with few channels and
  few hundred steps the style acts through the normalisation statistics directly and trains faster.
  ``style_injection="concat"`` is the authors' choice (``murd-paper``).
* **EMA warm-up**: the moving-average decay is ``min(ema_decay, (1 + t) / (10 + t))`` so that a short
  training is not averaged with its random initialisation; ``murd`` uses 0.99, ``murd-paper`` 0.999.
* **Slice size**: ``murd-paper`` resizes slices to 256² (bilinear) as the authors' 256² PNGs; ``murd`` keeps the
  native in-plane size, zero-padded (background) to a multiple of the network stride.
* **Whole volumes**: the authors trained on PNG slices; here slices are drawn at random (with replacement)
  from brain-containing axial positions of every training volume (at least 5 % brain).
* **Site-guided style**: the authors' test code draws one truncated-normal latent (σ = 2) per run; the mean
  over many latents is deterministic and is what "the site's style" means for a benchmark.
* **Unseen target site in reference mode**: the authors' style heads are per site; for a reference from
  a site absent from training the heads' mean is used.

Device: CPU, or CUDA with float16 autocast and gradient scaling (the R1 term in float32); the CUDA path is
written but was not run when this was written (no GPU here). Determinism: weights, batches, latents and
the noise layer draw from a seed taken from ``fit``'s ``rng`` (`harmbench.nn.runtime.seeded`), with
deterministic algorithms and a fixed thread count; two CPU fits give bit-identical outputs. With
``checkpoint_dir`` set, ``fit`` saves its training state every ``checkpoint_every`` steps and resumes from it.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harmbench import hookimpl
from harmbench.api import Harmonizer, Meta, check_number
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.nn.checkpoint import TrainingCheckpoint
from harmbench.nn.gan2d import (
    AdaINResBlock2d,
    ConvNormAct2d,
    DownResBlock2d,
    MultiHeadLinear,
    ResBlock2d,
    UpConvNormAct2d,
    gradient_l1,
    r1_penalty,
    reflect_conv2d,
)
from harmbench.nn.runtime import (
    autocast,
    deterministic,
    grad_scaler,
    load_module_state,
    module_state,
    resolve_device,
    seed_from,
    seeded,
)
from harmbench.nn.slices import SliceSampler, crop_2d, pad_to_multiple_2d, volume_slices
from harmbench.progress import progress

log = logging.getLogger(__name__)

_CITATION = (
    "Liu S, Yap P-T. Learning multi-site harmonization of magnetic resonance images without traveling human "
    "phantoms. Communications Engineering 3, 6 (2024)."
)

#: Intensity percentile each volume is divided by, and the clip after division (then mapped to [-1, 1]).
PERCENTILE = 95.0
CLIP_MAX = 2.0
#: Adjacent slices on each side of the centre one (2.5-D input of three slices).
CONTEXT = 1
#: Axial slices: the last axis of the (x, y, z) volumes.
AXIS = 2
#: A slice is used in training when at least this share of its pixels is brain.
MIN_BRAIN_FRACTION = 0.05
#: Slices per batch at inference.
INFERENCE_BATCH = 16
TARGET_MODES = ("site", "reference")
INJECTIONS = ("adain", "concat")


# -- networks ------------------------------------------------------------------------------------------------------


class ContentEncoder(nn.Module):
    """Slices → site-invariant content map at 1/2^d resolution (module docstring)."""

    def __init__(self, in_channels: int, channels: int, n_downsample: int, n_res_blocks: int) -> None:
        super().__init__()
        width = 2 * channels
        layers: list[nn.Module] = [ConvNormAct2d(in_channels, width, 7)]
        for _ in range(n_downsample):
            layers.append(ConvNormAct2d(width, 2 * width, 4, stride=2))
            width *= 2
        layers += [ResBlock2d(width) for _ in range(n_res_blocks)]
        self.body = nn.Sequential(*layers)
        self.out_channels = width
        self.stride = 2**n_downsample

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        content = self.body(x)
        return content if noise is None else content + noise.to(content.dtype)


class StyleEncoder(nn.Module):
    """Slices → one style code per training site (``all_heads``) or for given sites (``forward``)."""

    def __init__(self, in_channels: int, channels: int, n_blocks: int, style_dim: int, n_sites: int) -> None:
        super().__init__()
        width = channels
        layers: list[nn.Module] = [reflect_conv2d(in_channels, width, 4, stride=2)]
        for _ in range(n_blocks):
            layers.append(DownResBlock2d(width, 2 * width))
            width *= 2
        self.body = nn.Sequential(*layers)
        self.heads = MultiHeadLinear(width, style_dim, n_sites)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x), 0.2).mean(dim=(2, 3))

    def all_heads(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads.all_heads(self.features(x))

    def forward(self, x: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(x), site)


class MappingNetwork(nn.Module):
    """Normal latent → one style code per training site."""

    def __init__(self, latent_dim: int, units: int, n_layers: int, style_dim: int, n_sites: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, units), nn.LeakyReLU(0.2)]
            width = units
        self.body = nn.Sequential(*layers)
        self.heads = MultiHeadLinear(width, style_dim, n_sites)

    def all_heads(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads.all_heads(self.body(z))

    def forward(self, z: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        return self.heads(self.body(z), site)


class Generator(nn.Module):
    """Content map + style code → three slices in [−1, 1] (module docstring)."""

    def __init__(
        self,
        content_channels: int,
        style_dim: int,
        n_res_blocks: int,
        n_upsample: int,
        out_channels: int,
        injection: str,
    ) -> None:
        super().__init__()
        self.injection = injection
        width = content_channels + style_dim if injection == "concat" else content_channels
        if injection == "concat":
            self.res = nn.ModuleList(ResBlock2d(width) for _ in range(n_res_blocks))
        else:
            self.res = nn.ModuleList(AdaINResBlock2d(width, style_dim) for _ in range(n_res_blocks))
        ups: list[nn.Module] = []
        for _ in range(n_upsample):
            ups.append(UpConvNormAct2d(width, width // 2))
            width //= 2
        self.up = nn.Sequential(*ups)
        self.out = reflect_conv2d(width, out_channels, 7)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        style = style.to(content.dtype)
        if self.injection == "concat":
            tiled = style[:, :, None, None].expand(-1, -1, *content.shape[2:])
            x = torch.cat([content, tiled], dim=1)
            for block in self.res:
                x = block(x)
        else:
            x = content
            for block in self.res:
                x = block(x, style)
        return torch.tanh(self.out(self.up(x)))


class MultiSiteDiscriminator(nn.Module):
    """Slices → one real/fake logit per training site; ``forward`` picks the given sites' logits."""

    def __init__(self, in_channels: int, channels: int, n_sites: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            reflect_conv2d(in_channels, 2 * channels, 4, stride=2),
            nn.LeakyReLU(0.2),
            ConvNormAct2d(2 * channels, 4 * channels, 4, stride=2),
            ConvNormAct2d(4 * channels, 8 * channels, 4),
        )
        self.heads = MultiHeadLinear(8 * channels, 1, n_sites)

    def forward(self, x: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        return self.heads(self.body(x).mean(dim=(2, 3)), site)[:, 0]


class _Networks(nn.Module):
    """The four networks used at inference (their EMA copies are what is kept)."""

    def __init__(self, content: ContentEncoder, style: StyleEncoder, mapping: MappingNetwork, gen: Generator) -> None:
        super().__init__()
        self.content, self.style, self.mapping, self.generator = content, style, mapping, gen


# -- preprocessing -------------------------------------------------------------------------------------------------


def brain_p95(scan: Scan) -> float:
    """The 95th percentile of the scan's brain intensities (positive and finite, else `DataError`)."""
    values = scan.data[scan.brain]
    if values.size == 0:
        raise DataError(f"murd: {scan.describe()} has an empty brain mask")
    p95 = float(np.percentile(values, PERCENTILE))
    if not math.isfinite(p95) or p95 <= 0:
        raise DataError(
            f"murd: the {PERCENTILE:g}th percentile of the brain intensities of {scan.describe()} is {p95!r}; "
            "MURD divides by it and needs it positive"
        )
    return p95


def normalise(scan: Scan) -> tuple[np.ndarray, float]:
    """``data / p95`` clipped to [0, 2] and mapped to [−1, 1]; −1 outside the brain. Returns it and p95."""
    p95 = brain_p95(scan)
    scaled = np.clip(scan.data / np.float32(p95), 0.0, CLIP_MAX) * (2.0 / CLIP_MAX) - 1.0
    return np.where(scan.brain, scaled, -1.0).astype(np.float32), p95


def _pad_background(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Pad in-plane to ``multiple`` with background (−1) rather than zero."""
    padded, crops = pad_to_multiple_2d(x + 1.0, multiple)
    return padded - 1.0, crops


# -- the harmonizer ------------------------------------------------------------------------------------------------


class MURDHarmonizer(Harmonizer):
    """MURD (Liu & Yap, Communications Engineering 2024): content/style disentangling multi-site GAN on 2.5-D
    slices; site-guided or reference-guided target style. See the module docstring.

    Parameters:
        target_mode: ``"site"`` (mean mapped style of the target site) or ``"reference"`` (style of the one-shot
            reference scan).
        channels: base width c (content encoder 2c·2^i, style encoder c·2^i, discriminator 2c–8c).
        n_downsample: stride-2 stages of the content encoder (and transposed ones of the generator).
        n_res_blocks: residual blocks in the content encoder and in the generator.
        style_blocks: down-sampling residual blocks of the style encoder.
        style_dim: length of a style code; latent_dim: length of the mapping network's latent.
        mapping_layers: hidden layers of the mapping network (c·2^d units each).
        style_injection: ``"adain"`` or ``"concat"`` (the authors').
        slice_size: resize slices to this square size for the networks (the paper: 256), or None for the native
            size padded to the stride.
        steps, batch_size, learning_rate, mapping_lr_scale, ema_decay: training (module docstring).
        *_weight: loss weights (module docstring; ``diversity_weight`` may be negative).
        n_style_samples: latents averaged into each site's style code (site mode).
        checkpoint_every: steps between training checkpoints when ``checkpoint_dir`` is set.
        device: ``"cpu"`` or ``"cuda[:N]"``; CUDA trains in mixed precision.
    """

    meta = Meta(
        name="murd",
        version="1.0",
        citation=_CITATION,
        description=(
            "One multi-site content/style disentangling GAN on 2.5-D slices (MURD); site-guided or "
            "reference-guided target style; one fitted model for every target."
        ),
        uses_reference=True,
        needs_source_sites=True,
        handles_unseen_sites=True,
        devices=("cpu", "cuda"),
        stochastic=True,
        target_agnostic=True,
    )

    def __init__(
        self,
        target_mode: str = "site",
        channels: int = 4,
        n_downsample: int = 2,
        n_res_blocks: int = 1,
        style_blocks: int = 3,
        style_dim: int = 16,
        latent_dim: int = 8,
        mapping_layers: int = 4,
        style_injection: str = "adain",
        slice_size: int | None = None,
        steps: int = 200,
        batch_size: int = 4,
        learning_rate: float = 1e-3,
        mapping_lr_scale: float = 0.01,
        ema_decay: float = 0.99,
        adversarial_weight: float = 1.0,
        content_weight: float = 10.0,
        style_weight: float = 10.0,
        identity_weight: float = 10.0,
        cycle_weight: float = 10.0,
        gradient_weight: float = 1.0,
        alignment_weight: float = 0.01,
        r1_weight: float = 1.0,
        diversity_weight: float = 1.0,
        content_noise_std: float = 1.0,
        n_style_samples: int = 1000,
        checkpoint_every: int = 100,
        device: str = "cpu",
    ) -> None:
        self.target_mode = target_mode
        self.channels = channels
        self.n_downsample = n_downsample
        self.n_res_blocks = n_res_blocks
        self.style_blocks = style_blocks
        self.style_dim = style_dim
        self.latent_dim = latent_dim
        self.mapping_layers = mapping_layers
        self.style_injection = style_injection
        self.slice_size = slice_size
        self.steps = steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.mapping_lr_scale = mapping_lr_scale
        self.ema_decay = ema_decay
        self.adversarial_weight = adversarial_weight
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.identity_weight = identity_weight
        self.cycle_weight = cycle_weight
        self.gradient_weight = gradient_weight
        self.alignment_weight = alignment_weight
        self.r1_weight = r1_weight
        self.diversity_weight = diversity_weight
        self.content_noise_std = content_noise_std
        self.n_style_samples = n_style_samples
        self.checkpoint_every = checkpoint_every
        self.device = device

    # -- parameters ------------------------------------------------------------------------------------------------

    @property
    def _stride(self) -> int:
        return 2 ** int(self.n_downsample)

    def _architecture(self) -> list[int]:
        return [
            int(self.channels),
            int(self.n_downsample),
            int(self.n_res_blocks),
            int(self.style_blocks),
            int(self.style_dim),
            int(self.latent_dim),
            int(self.mapping_layers),
            INJECTIONS.index(self.style_injection),
        ]

    def _validate(self) -> torch.device:
        name = self.meta.name
        if self.target_mode not in TARGET_MODES:
            raise ConfigError(
                f"{name}: parameter 'target_mode' must be one of {TARGET_MODES}, got {self.target_mode!r}"
            )
        if self.style_injection not in INJECTIONS:
            raise ConfigError(
                f"{name}: parameter 'style_injection' must be one of {INJECTIONS}, got {self.style_injection!r}"
            )
        for key in ("channels", "style_dim", "latent_dim", "steps", "batch_size", "n_style_samples"):
            check_number(name, key, getattr(self, key), integer=True, minimum=1)
        check_number(name, "checkpoint_every", self.checkpoint_every, integer=True, minimum=1)
        for key in ("n_downsample", "n_res_blocks", "style_blocks", "mapping_layers"):
            check_number(name, key, getattr(self, key), integer=True, minimum=0)
        if self.n_downsample > 4:
            raise ConfigError(f"{name}: parameter 'n_downsample' must be at most 4, got {self.n_downsample!r}")
        if self.slice_size is not None:
            check_number(name, "slice_size", self.slice_size, integer=True, minimum=1)
            if self.slice_size % self._stride:
                raise ConfigError(
                    f"{name}: parameter 'slice_size' must be a multiple of the network stride {self._stride}, "
                    f"got {self.slice_size!r}"
                )
        check_number(name, "learning_rate", self.learning_rate, minimum=0.0, strict=True)
        check_number(name, "mapping_lr_scale", self.mapping_lr_scale, minimum=0.0)
        check_number(name, "ema_decay", self.ema_decay, minimum=0.0)
        if self.ema_decay >= 1.0:
            raise ConfigError(f"{name}: parameter 'ema_decay' must be below 1, got {self.ema_decay!r}")
        for key in (
            "adversarial_weight",
            "content_weight",
            "style_weight",
            "identity_weight",
            "cycle_weight",
            "gradient_weight",
            "alignment_weight",
            "r1_weight",
            "content_noise_std",
        ):
            check_number(name, key, getattr(self, key), minimum=0.0)
        check_number(name, "diversity_weight", self.diversity_weight, minimum=-math.inf)
        try:
            return resolve_device(self.device)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{name}: parameter 'device': {exc}") from exc

    def _build(self, n_sites: int, device: torch.device) -> tuple[_Networks, MultiSiteDiscriminator]:
        c, d = int(self.channels), int(self.n_downsample)
        channels_in = 2 * CONTEXT + 1
        content = ContentEncoder(channels_in, c, d, int(self.n_res_blocks))
        style = StyleEncoder(channels_in, c, int(self.style_blocks), int(self.style_dim), n_sites)
        mapping = MappingNetwork(int(self.latent_dim), c * 2**d, int(self.mapping_layers), int(self.style_dim), n_sites)
        gen = Generator(
            content.out_channels, int(self.style_dim), int(self.n_res_blocks), d, channels_in, self.style_injection
        )
        nets = _Networks(content, style, mapping, gen).to(device)
        disc = MultiSiteDiscriminator(channels_in, c, n_sites).to(device)
        return nets, disc

    # -- slices ----------------------------------------------------------------------------------------------------

    def _to_network(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Slices (B, C, H, W) in [−1, 1] → the network's grid, and what `_from_network` needs to undo it."""
        if self.slice_size is None:
            return _pad_background(x, self._stride)
        size = (int(self.slice_size), int(self.slice_size))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False), tuple(x.shape[-2:])

    def _from_network(self, y: torch.Tensor, undo: Any) -> torch.Tensor:
        if self.slice_size is None:
            return crop_2d(y, undo)
        return F.interpolate(y, size=undo, mode="bilinear", align_corners=False)

    # -- fit -------------------------------------------------------------------------------------------------------

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> MURDHarmonizer:
        device = self._validate()
        name = self.meta.name
        if len(train) == 0:
            raise DataError(f"{name}: training cohort {train.name!r} is empty")
        shapes = {s.shape for s in train}
        if len(shapes) > 1:
            raise DataError(
                f"{name}: training scans of {train.name!r} have different shapes {sorted(shapes)}; MURD samples "
                "slices from one common grid"
            )
        sites = sorted(train.sites)
        site_index = {s: i for i, s in enumerate(sites)}
        volumes, masks, vol_site, p95s = [], [], [], {s: [] for s in sites}
        for scan in train:
            data, p95 = normalise(scan)
            volumes.append(data + 1.0)  # background 0, so the sampler's zero padding is background
            masks.append(scan.brain)
            vol_site.append(site_index[scan.site])
            p95s[scan.site].append(p95)
        try:
            sampler = SliceSampler(
                volumes,
                masks,
                axis=AXIS,
                context=CONTEXT,
                min_brain_fraction=MIN_BRAIN_FRACTION,
                multiple=self._stride if self.slice_size is None else 1,
            )
        except ValueError as exc:
            raise DataError(f"{name}: {exc}") from exc
        seed = seed_from(rng)
        with deterministic(), seeded(seed, device) as generator:
            nets, disc = self._build(len(sites), device)
            ema, losses, steps_run = self._train(nets, disc, sampler, torch.tensor(vol_site), generator, device)
            site_styles = self._site_styles(ema, len(sites), generator, device)
        self.sites_ = sites
        self.site_p95_ = np.array([float(np.median(p95s[s])) for s in sites], dtype=np.float64)
        self.site_styles_ = site_styles
        self.networks_ = ema.eval()
        self.device_ = device
        self._style_cache: tuple[str, torch.Tensor] | None = None
        n_disc = sum(p.numel() for p in disc.parameters())
        self.fit_info_ = {
            "n_parameters": int(sum(p.numel() for p in ema.parameters())),
            "n_discriminator_parameters": int(n_disc),
            "n_generator_pairs": 1,
            "n_sites": len(sites),
            "n_train_slices": int(sampler.eligible.sum()),
            "steps": int(steps_run),
            **{f"final_{k}": float(v) for k, v in losses.items()},
        }
        log.info("%s: trained on %d sites, last losses %s", name, len(sites), losses)
        self.fitted_ = True
        return self

    def fit_info(self) -> dict[str, int | float | str]:
        return dict(getattr(self, "fit_info_", {}))

    def _sample(
        self, sampler: SliceSampler, vol_site: torch.Tensor, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, _, vol = sampler.sample(int(self.batch_size), generator)
        x, _ = self._to_network(x - 1.0)
        return x.to(device), vol_site[vol].to(device)

    def _train(
        self,
        nets: _Networks,
        disc: MultiSiteDiscriminator,
        sampler: SliceSampler,
        vol_site: torch.Tensor,
        generator: torch.Generator,
        device: torch.device,
    ) -> tuple[_Networks, dict[str, float], int]:
        """The adversarial training loop (module docstring); returns the EMA networks and the last losses."""
        n_sites = int(vol_site.max()) + 1
        ema = copy.deepcopy(nets).requires_grad_(False)
        lr = float(self.learning_rate)
        betas = (0.0, 0.99)
        main_params = [*nets.content.parameters(), *nets.style.parameters(), *nets.generator.parameters()]
        opt_g = torch.optim.Adam(main_params, lr=lr, betas=betas)
        opt_m = torch.optim.Adam(nets.mapping.parameters(), lr=lr * float(self.mapping_lr_scale), betas=betas)
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=betas)
        scaler_g, scaler_d = grad_scaler(device), grad_scaler(device)
        objects = {
            "nets": nets,
            "ema": ema,
            "disc": disc,
            "opt_g": opt_g,
            "opt_m": opt_m,
            "opt_d": opt_d,
            "scaler_g": scaler_g,
            "scaler_d": scaler_d,
        }
        tag = f"{self.meta.name}-v1-{'-'.join(map(str, self._architecture()))}-sites{n_sites}"
        checkpoint = TrainingCheckpoint(self.checkpoint_dir, every=int(self.checkpoint_every), tag=tag)
        start = checkpoint.restore(objects, generator)
        total = int(self.steps)
        decay_start = total // 2
        w = {
            "adv": float(self.adversarial_weight),
            "cont": float(self.content_weight),
            "sty": float(self.style_weight),
            "id": float(self.identity_weight),
            "cyc": float(self.cycle_weight),
            "grad": float(self.gradient_weight),
            "kl": float(self.alignment_weight),
            "r1": float(self.r1_weight),
            "div": float(self.diversity_weight),
        }
        latent = int(self.latent_dim)
        losses: dict[str, float] = {}
        nets.train()
        disc.train()
        for step in progress(range(start, total), desc=f"{self.meta.name}: training"):
            factor = 1.0 if step < decay_start else (total - step) / max(total - decay_start, 1)
            for opt, base in ((opt_g, lr), (opt_d, lr), (opt_m, lr * float(self.mapping_lr_scale))):
                for group in opt.param_groups:
                    group["lr"] = base * factor
            x, y_src = self._sample(sampler, vol_site, generator, device)
            b = x.shape[0]
            y_trg = torch.randint(0, n_sites, (b,), generator=generator).to(device)
            z1 = torch.randn(b, latent, generator=generator).to(device)
            z2 = torch.randn(b, latent, generator=generator).to(device)

            # discriminator step
            with torch.no_grad(), autocast(device):
                noise = self._content_noise(nets, x, generator)
                fake = nets.generator(nets.content(x, noise), nets.mapping(z1, y_trg))
            x_real = x.detach().requires_grad_(True)
            d_real = disc(x_real, y_src)  # float32 even on CUDA: the R1 gradient needs the precision
            with autocast(device):
                d_fake = disc(fake.detach(), y_trg)
            loss_d = w["adv"] * (F.softplus(-d_real).mean() + F.softplus(d_fake.float()).mean())
            if w["r1"] > 0:
                loss_d = loss_d + w["adv"] * w["r1"] * r1_penalty(d_real, x_real)
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(loss_d).backward()
            scaler_d.step(opt_d)
            scaler_d.update()

            # generator, encoders and mapping network step
            with autocast(device):
                noise = self._content_noise(nets, x, generator)
                content = nets.content(x, noise)
                s_trg = nets.mapping(z1, y_trg)
                fake = nets.generator(content, s_trg)
                with torch.no_grad():
                    fake2 = nets.generator(content, nets.mapping(z2, y_trg))
                s_own = nets.style(x, y_src)
                s_fake = nets.style(fake, y_trg)
                noise_fake = self._content_noise(nets, x, generator)
                content_fake = nets.content(fake, noise_fake)
                x_id = nets.generator(content, s_own)
                x_cyc = nets.generator(content_fake, s_own)
                g_adv = F.softplus(-disc(fake, y_trg).float()).mean()
            terms = {
                "adv": g_adv,
                "cont": (content_fake.float() - content.float()).abs().mean(),
                "sty": (s_fake.float() - s_trg.float()).abs().mean(),
                "id": (x_id.float() - x).abs().mean(),
                "cyc": (x_cyc.float() - x).abs().mean(),
                "grad": gradient_l1(x, x_cyc.float()),
                "kl": content.float().pow(2).mean(),
                "div": (fake.float() - fake2.float()).abs().mean(),
            }
            loss_g = sum(w[k] * v for k, v in terms.items())
            opt_g.zero_grad(set_to_none=True)
            opt_m.zero_grad(set_to_none=True)
            disc.requires_grad_(False)
            scaler_g.scale(loss_g).backward()
            disc.requires_grad_(True)
            scaler_g.step(opt_g)
            scaler_g.step(opt_m)
            scaler_g.update()
            self._update_ema(ema, nets, step)
            losses = {"d": float(loss_d.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
            checkpoint.maybe_save(step + 1, objects, generator)
        checkpoint.clear()
        return ema, losses, total

    def _content_noise(self, nets: _Networks, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The authors' Gaussian noise layer on the content code (training only), from the seeded stream."""
        shape = (x.shape[0], nets.content.out_channels, *(n // nets.content.stride for n in x.shape[-2:]))
        return (float(self.content_noise_std) * torch.randn(shape, generator=generator)).to(x.device)

    def _update_ema(self, ema: _Networks, nets: _Networks, step: int) -> None:
        decay = min(float(self.ema_decay), (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for target, source in zip(ema.parameters(), nets.parameters(), strict=True):
                target.lerp_(source.detach(), 1.0 - decay)
            for target, source in zip(ema.buffers(), nets.buffers(), strict=True):
                target.copy_(source)

    @torch.no_grad()
    def _site_styles(
        self, ema: _Networks, n_sites: int, generator: torch.Generator, device: torch.device
    ) -> np.ndarray:
        """Each site's style code: the mean of the mapping network's output over ``n_style_samples`` latents."""
        z = torch.randn(int(self.n_style_samples), int(self.latent_dim), generator=generator).to(device)
        return ema.mapping.all_heads(z).float().mean(dim=0).cpu().numpy().astype(np.float32)  # (n_sites, style_dim)

    # -- transform -------------------------------------------------------------------------------------------------

    def _reference_style(self, reference: Scan) -> torch.Tensor:
        """Style code of the reference scan: the style encoder over its brain slices (head: module docstring)."""
        digest = hashlib.sha1(np.ascontiguousarray(reference.data).tobytes())
        digest.update(np.packbits(reference.brain).tobytes())
        digest.update(reference.site.encode())
        key = digest.hexdigest()
        cache = getattr(self, "_style_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        data, _ = normalise(reference)
        slices = volume_slices(data, AXIS, CONTEXT)
        fraction = volume_slices(reference.brain.astype(np.float32), AXIS, 0).mean(dim=(1, 2, 3))
        keep = fraction >= MIN_BRAIN_FRACTION
        if not bool(keep.any()):
            keep = fraction > 0
        codes = []
        for start in range(0, int(keep.sum()), INFERENCE_BATCH):
            x = slices[keep][start : start + INFERENCE_BATCH]
            x, _ = self._to_network(x)
            with autocast(self.device_):
                codes.append(self.networks_.style.all_heads(x.to(self.device_)).float())
        heads = torch.cat(codes).mean(dim=0)  # (n_sites, style_dim)
        style = heads[self.sites_.index(reference.site)] if reference.site in self.sites_ else heads.mean(dim=0)
        self._style_cache = (key, style)
        return style

    def _target(self, reference: Scan | None) -> tuple[torch.Tensor, float]:
        """The style code and the output intensity scale (95th percentile) for this reference."""
        name = self.meta.name
        if reference is None:
            raise DataError(
                f"{name}: transform() needs the target-site reference scan as 'reference' (site mode reads its "
                "site label, reference mode its style)"
            )
        if self.target_mode == "reference":
            return self._reference_style(reference), brain_p95(reference)
        if reference.site not in self.sites_:
            raise DataError(
                f"{name}: target_mode='site' harmonizes to a training site, but the reference is from "
                f"{reference.site!r} (trained on {', '.join(self.sites_)}); use target_mode='reference'"
            )
        k = self.sites_.index(reference.site)
        return torch.from_numpy(self.site_styles_[k]).to(self.device_), float(self.site_p95_[k])

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        with deterministic(), torch.no_grad():
            style, out_p95 = self._target(reference)
            data, _ = normalise(scan)
            pred = self._harmonize(data, scan.brain, style)
        result = np.array(scan.data, dtype=np.float32, copy=True)
        brain = scan.brain
        values = (np.clip(pred[brain], -1.0, 1.0) + 1.0) * (CLIP_MAX / 2.0) * out_p95
        result[brain] = np.maximum(values, 0.0).astype(np.float32)
        return scan.with_data(result)

    def reconstruct(self, scan: Scan) -> Scan:
        """The scan rebuilt from its own content and its own style code (style encoder, the head of its site, or
        the heads' mean for a site absent from training), in its own intensity scale: how much of an image the
        content/style split keeps. Voxels outside the brain are returned unchanged."""
        self.check_is_fitted()
        with deterministic(), torch.no_grad():
            style = self._reference_style(scan)
            data, p95 = normalise(scan)
            pred = self._harmonize(data, scan.brain, style)
        result = np.array(scan.data, dtype=np.float32, copy=True)
        values = (np.clip(pred[scan.brain], -1.0, 1.0) + 1.0) * (CLIP_MAX / 2.0) * p95
        result[scan.brain] = np.maximum(values, 0.0).astype(np.float32)
        return scan.with_data(result)

    def _harmonize(self, data: np.ndarray, brain: np.ndarray, style: torch.Tensor) -> np.ndarray:
        """Every 3-slice window that touches the brain through content encoder and generator; each voxel the mean
        of the predictions of the windows holding it (the authors' reassembly)."""
        slices = volume_slices(data, AXIS, CONTEXT)  # (n, 3, H, W)
        n = slices.shape[0]
        has_brain = torch.from_numpy(brain.any(axis=tuple(i for i in range(3) if i != AXIS)))
        near = has_brain.clone()
        for offset in range(1, CONTEXT + 1):
            near[offset:] |= has_brain[:-offset]
            near[:-offset] |= has_brain[offset:]
        positions = torch.nonzero(near).flatten()
        total = torch.zeros(n, *slices.shape[2:])
        count = torch.zeros(n)
        for start in range(0, positions.numel(), INFERENCE_BATCH):
            idx = positions[start : start + INFERENCE_BATCH]
            x, undo = self._to_network(slices[idx])
            x = x.to(self.device_)
            with autocast(self.device_):
                content = self.networks_.content(x)
                y = self.networks_.generator(content, style[None].expand(x.shape[0], -1))
            y = self._from_network(y.float(), undo).cpu()
            for channel in range(2 * CONTEXT + 1):
                target = idx + channel - CONTEXT
                valid = (target >= 0) & (target < n)
                total.index_add_(0, target[valid], y[valid, channel])
                count.index_add_(0, target[valid], torch.ones(int(valid.sum())))
        out = slices[:, CONTEXT].clone()
        done = count > 0
        out[done] = total[done] / count[done][:, None, None]
        return out.movedim(0, AXIS).contiguous().numpy()

    # -- state -----------------------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, np.ndarray]:
        self.check_is_fitted()
        state = {
            "architecture": np.array(self._architecture(), dtype=np.int64),
            "slice_size": np.array(-1 if self.slice_size is None else int(self.slice_size), dtype=np.int64),
            "sites": np.array(self.sites_, dtype=str),
            "site_p95": self.site_p95_.copy(),
            "site_styles": self.site_styles_.copy(),
        }
        state.update(module_state(self.networks_, "networks"))
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> MURDHarmonizer:
        device = self._validate()
        name = self.meta.name
        for key in ("architecture", "sites", "site_p95", "site_styles"):
            if key not in state:
                raise PluginError(f"{name}: saved state has no {key!r} entry")
        saved = [int(v) for v in np.asarray(state["architecture"]).ravel()]
        if saved != self._architecture():
            raise PluginError(
                f"{name}: saved state is for the architecture {saved} (channels, n_downsample, n_res_blocks, "
                f"style_blocks, style_dim, latent_dim, mapping_layers, injection), but the parameters give "
                f"{self._architecture()}"
            )
        sites = [str(s) for s in np.asarray(state["sites"]).ravel()]
        nets, _ = self._build(len(sites), device)
        try:
            load_module_state(nets, state, "networks")
        except ValueError as exc:
            raise PluginError(f"{name}: {exc}") from exc
        self.sites_ = sites
        self.site_p95_ = np.asarray(state["site_p95"], dtype=np.float64).copy()
        self.site_styles_ = np.asarray(state["site_styles"], dtype=np.float32).copy()
        self.networks_ = nets.eval()
        self.device_ = device
        self._style_cache = None
        self.fitted_ = True
        return self


#: The authors' configuration (their TensorFlow code): for a GPU, never run in CI.
PAPER_DEFAULTS: dict[str, Any] = {
    "channels": 32,
    "n_downsample": 2,
    "n_res_blocks": 4,
    "style_blocks": 4,
    "style_dim": 64,
    "latent_dim": 16,
    "mapping_layers": 6,
    "style_injection": "concat",
    "slice_size": 256,
    "steps": 100_000,
    "batch_size": 1,
    "learning_rate": 1e-4,
    "ema_decay": 0.999,
    "checkpoint_every": 1000,
}


class MURDPaperHarmonizer(MURDHarmonizer):
    """`MURDHarmonizer` with the authors' sizes and schedule (``PAPER_DEFAULTS``); every parameter still settable."""

    meta = Meta(
        name="murd-paper",
        version="1.0",
        citation=_CITATION,
        description="MURD at the authors' channel widths, 256² slices and 100 k iterations (a GPU configuration).",
        uses_reference=True,
        needs_source_sites=True,
        handles_unseen_sites=True,
        devices=("cpu", "cuda"),
        stochastic=True,
        target_agnostic=True,
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**{**PAPER_DEFAULTS, **params})


# get_params reads __init__'s signature: give the subclass the parent's parameters with the paper's defaults
MURDPaperHarmonizer.__init__.__signature__ = inspect.signature(MURDHarmonizer.__init__).replace(  # type: ignore[attr-defined]
    parameters=[
        p.replace(default=PAPER_DEFAULTS.get(p.name, p.default))
        for p in inspect.signature(MURDHarmonizer.__init__).parameters.values()
    ]
)


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [MURDHarmonizer, MURDPaperHarmonizer]
