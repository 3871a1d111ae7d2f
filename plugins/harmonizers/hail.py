"""HAIL: one-shot harmonization by 3-D neural style transfer with adaptive instance normalisation.

Reference:
    Parida A, Jiang Z, Anwar SM, Foreman N, Stence N, Fisher MJ, Packer RJ, Avery RA, Linguraru MG.
    Harmonization Across Imaging Locations (HAIL): One-Shot Learning for Brain MRI. arXiv:2308.11047, 2023.
    Huang X, Belongie S. Arbitrary style transfer in real-time with adaptive instance normalization.
    ICCV 2017 (the AdaIN style-transfer network HAIL builds on).

What the paper describes, and what is built here:

1. **A 3-D feature extractor pre-trained to reconstruct images.** An encoder–decoder is trained to
   reconstruct the training scans of every seen site (the ``train`` cohort given to ``fit``): L1 loss on
   brain voxels, ``pretrain_steps`` Adam steps on random patches of ``pretrain_patch_size``.
2. **Neural style transfer with AdaIN to one target-site image.** The encoder is then frozen (it is the
   feature extractor, as VGG is in Huang & Belongie) and the decoder, initialised from stage 1, is trained
   for ``style_steps`` steps: the input's deepest encoder features are re-normalised by AdaIN to the
   per-channel mean/std of the style image's features and decoded. Losses:

   * content ``‖E(g(t)) − t‖²`` with ``t = AdaIN(E(x), E(s))`` (``content_weight``, default 1);
   * style: ``‖μ(Eᵢ(g(t))) − μ(Eᵢ(s))‖² + ‖σ(Eᵢ(g(t))) − σ(Eᵢ(s))‖²`` summed over every encoder layer
     ``i`` (``style_weight``, default 10, Huang & Belongie's balance);
   * consistency: ``‖g(t) − x‖₁`` on brain voxels when the input ``x`` and the style image ``s`` come
     from the same site, so that the network leaves an image alone when it already has the target's
     style — the paper's guard against over-correction (``consistency_weight``, default 5; ``0`` switches
     it off: the ``hail-no-consistency`` ablation).

   Style images in stage 2 are drawn from the training scans of *every* seen site, not only the target
   site: the decoder then learns to transfer to an arbitrary style, which is what the one-shot use needs
   (a new target site, or scans from a site never seen in training). Half of the pairs in each batch take
   the style from another scan of the content scan's own site (another subject where the site has one)
   — the pairs the consistency loss applies to — and half from a scan of a different site.
3. **One-shot at transform time.** ``transform(scan, reference)`` uses the one target-site reference
   scan as the style image. Nothing about the target site is learned in ``fit``, so the same fitted model
   harmonizes to any target and from any (also unseen) source site.

Network (``channels = c``, ``levels = L``; defaults c = 16, L = 1: 14.7 k weights; L = 2: 77 k)::

    encoder  layer 1: conv 3³ 1 → c, LeakyReLU(0.2)                     full resolution   (style layer)
             layer 2: conv 3³ c → c, LeakyReLU(0.2)                     full resolution   (style layer)
             level i = 1 … L−1: conv 3³ stride 2 + conv 3³, c·2ⁱ, LeakyReLU   1/2ⁱ resolution (style layer)
    AdaIN    on the deepest map (statistics inside the brain mask, see below)
    decoder  level i → i−1: nearest ×2 upsampling, 2 × [conv 3³ → c·2ⁱ⁻¹, LeakyReLU];
             then conv 3³ c → c, LeakyReLU; conv 3³ c → 1 (linear)

No skip connections (they would carry the source style around the AdaIN bottleneck) and no normalisation
layers (the feature statistics are the style). The network's stride is 2^(L−1), so ``transform`` pads the
volume with zeros to a multiple of it and crops back; inference is on the whole volume (fully
convolutional). Defaults: 200 reconstruction steps on 32³ patches, batch 2; 60 style steps, batch 2;
Adam, learning rate 2e-3.

Why one level by default: at the quick profile with L = 2 (AdaIN at half resolution) the CPU budget does not
train the decoder to reconstruct sharply (L1 0.07 of the normalised scale after 200 steps against 0.03
with L = 1), and the blur costs more than the transfer gains: measured nWD(t,p) 0.19 / 0.21 (seen /
unseen) with L = 2 against 0.06 / 0.06 with L = 1. A deeper extractor (``levels=2``/``3``) is the closer
match to the paper where there is time to train it (a GPU, more steps).

Data sizes: quick profile 48×56×48 (4 mm), standard 88×104×88 (2 mm), full ~176×208×176 (1 mm), tests
24×32×24 (8 mm). Stage 1 crops patches of at most ``pretrain_patch_size`` (32) per side; stage 2 of at most
``patch_size`` (64): the quick profile and the tests train stage 2 on whole volumes, standard and full on
64³ patches. Inference is always on the whole volume.

Preprocessing (the authors' convention): each volume is divided by the 95th percentile of its brain voxels
and clipped to [0, 5]; the output is rescaled by the reference's 95th percentile. Voxels outside the
scan's brain mask are returned unchanged, and outputs are clipped to [0, 5 × p95(reference)].

Departures from the paper, and why:

* **Size.** The paper trains a larger 3-D network in FP16 on an RTX A5000 on 180 scans. Here the quick
  profile must train on 2 CPU cores in about a minute (the default suite fits HAIL twice), so the network
  is one level of 16 channels by default (see above) and trains 260 steps. On CUDA it runs in mixed
  precision (autocast + GradScaler), as the paper does.
* **Masked statistics.** AdaIN's means/stds, and the style loss's, are taken inside the brain mask (at
  each level, the cells at least half inside it), not over the whole volume: how much background a volume
  or a patch holds is not style.
* **Whole-volume statistics for patches.** When training on patches, the AdaIN statistics of the content
  and of the style are those of the *whole* volumes they come from (the frozen encoder makes these
  computable once), so that training sees what whole-volume inference does. The style loss compares a
  patch's output statistics with the style volume's; with a patch smaller than the volume that target is
  approximate (exact at the quick profile and in the tests, where stage 2 trains on whole volumes).
* **Style sources.** The paper is not explicit about which images serve as styles in training; sampling
  them from every seen site (see 2.) is the choice that makes one-shot transfer to a new site plausible.
* **Loss form.** The consistency loss is an L1 distance on brain voxels in the normalised intensity
  scale; the paper gives no formula.

Stage 1 once: with the runner's ``shared_dir`` (`harmbench.api.Harmonizer.shared_dir`), stage 1's networks
and sampling generator are saved under a key of every stage-1 parameter, the seed, the data, the device
kind, torch's version and thread count, and a configuration that differs only in stage-2 parameters loads
them instead of pre-training again; its fit is bit-identical to one that pre-trained (tested).

Determinism: weights are initialised, and pairs and patches drawn, from a seed taken from the ``rng``
given to ``fit`` (`harmbench.nn.runtime.seed_from`, ``seeded``), with torch's deterministic algorithms on.
Two fits in different processes on one machine give bit-identical outputs; a different torch thread count
(e.g. ``OMP_NUM_THREADS=1`` against 2) changes float summation order in the convolutions and so the last
bits, and CUDA mixed precision is not bit-stable.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harmbench import hookimpl
from harmbench.api import Harmonizer, Meta, check_number, params_hash
from harmbench.data.scan import Cohort, Scan, array_digest
from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.nn.blocks import ConvBlock3d, UpBlock3d, adain, downsample_mask, mean_std, style_loss
from harmbench.nn.checkpoint import TrainingCheckpoint
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
from harmbench.progress import progress

log = logging.getLogger(__name__)

_CITATION = (
    "Parida A, Jiang Z, Anwar SM, et al. Harmonization Across Imaging Locations (HAIL): One-Shot Learning for "
    "Brain MRI. arXiv:2308.11047, 2023. "
    "Huang X, Belongie S. Arbitrary style transfer in real-time with adaptive instance normalization. ICCV 2017."
)

#: Intensity percentile each volume is divided by, and the clip range after division (the authors' convention).
PERCENTILE = 95.0
CLIP_MAX = 5.0
#: Share of stage-2 pairs whose style image comes from the content image's own site.
SAME_SITE_FRACTION = 0.5
#: Most levels the encoder may have (stride 2^(levels-1)); more would shrink the tests' volumes to nothing.
MAX_LEVELS = 4
#: oneDNN's 3-D convolutions on the CPU are several times faster on channels-last tensors.
CHANNELS_LAST = torch.channels_last_3d


# -- networks ------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """The feature extractor; returns the activation of every layer the style loss looks at.

    Level 0 is two single-convolution blocks at full resolution (two style layers, like VGG's relu1_1 and
    relu1_2 in Huang & Belongie); each further level is a stride-2 `ConvBlock3d` of two convolutions.
    The last returned map is the deepest, which AdaIN acts on.
    """

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(levels)]
        blocks = [ConvBlock3d(1, widths[0], n_convs=1), ConvBlock3d(widths[0], widths[0], n_convs=1)]
        blocks += [ConvBlock3d(widths[i - 1], widths[i], stride=2) for i in range(1, levels)]
        self.blocks = nn.ModuleList(blocks)
        #: downsampling factor of each returned map, for the masks its statistics are taken in
        self.factors = [1, 1, *(2**i for i in range(1, levels))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Mirror of `Encoder` from its deepest level: `UpBlock3d` per level, then a 3³ convolution to one channel."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(levels)]
        self.up = nn.Sequential(*(UpBlock3d(widths[i], widths[i - 1]) for i in range(levels - 1, 0, -1)))
        # mirrors the encoder's second full-resolution convolution
        self.refine = ConvBlock3d(widths[0], widths[0], n_convs=1)
        self.out = nn.Conv3d(widths[0], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.refine(self.up(x)))


# -- preprocessing -------------------------------------------------------------------------------------------------


def normalise(scan: Scan) -> tuple[np.ndarray, np.ndarray, float]:
    """The authors' convention: ``(data / p95 of brain voxels, clipped to [0, 5], 0 outside the brain)``.

    Returns the normalised volume (float32), the brain mask and the 95th percentile.
    """
    brain = scan.brain
    values = scan.data[brain]
    if values.size == 0:
        raise DataError(f"hail: {scan.describe()} has an empty brain mask")
    p95 = float(np.percentile(values, PERCENTILE))
    if not math.isfinite(p95) or p95 <= 0:
        raise DataError(
            f"hail: the {PERCENTILE:g}th percentile of the brain intensities of {scan.describe()} is {p95!r}; "
            "HAIL divides by it and needs it positive"
        )
    out = np.where(brain, np.clip(scan.data / np.float32(p95), 0.0, CLIP_MAX), 0.0).astype(np.float32)
    return out, brain, p95


def _pad_amounts(shape: Sequence[int], stride: int) -> list[int]:
    return [(-n) % stride for n in shape]


def _to_tensor(volume: np.ndarray, stride: int, device: torch.device) -> torch.Tensor:
    """(D, H, W) → (1, 1, D', H', W') zero-padded at the far end to multiples of ``stride``."""
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    pd, ph, pw = _pad_amounts(volume.shape, stride)
    if pd or ph or pw:
        t = F.pad(t, (0, pw, 0, ph, 0, pd))
    return t.to(device).contiguous(memory_format=CHANNELS_LAST)


def _masked_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``err`` (N, C, …) over the voxels of ``mask`` (N, 1, …), per sample → (N,)."""
    dims = tuple(range(1, err.dim()))
    count = (mask.sum(dim=dims) * err.shape[1]).clamp_min(1.0)
    return (err * mask).sum(dim=dims) / count


# -- the harmonizer ------------------------------------------------------------------------------------------------


class HAILHarmonizer(Harmonizer):
    """HAIL (Parida et al., arXiv 2308.11047): reconstruction-pretrained 3-D encoder, AdaIN style transfer to
    the one-shot target-site reference, content + style + consistency losses. See the module docstring.

    Parameters:
        channels: width of the first encoder level (doubles per level).
        levels: encoder levels; AdaIN acts on the deepest (stride 2^(levels-1)).
        patch_size: stage-2 (style) training patches have at most this many voxels per side (a multiple of
            the stride); smaller volumes are trained whole.
        pretrain_patch_size: the same for stage 1 (reconstruction is local, so small patches suffice).
        batch_size: volumes (or patches) per step, both stages.
        pretrain_steps: Adam steps of stage 1 (reconstruction).
        style_steps: Adam steps of stage 2 (style transfer; encoder frozen).
        learning_rate: Adam learning rate of both stages.
        content_weight, style_weight, consistency_weight: stage-2 loss weights (>= 0);
            ``consistency_weight=0`` removes the consistency loss.
        device: ``"cpu"`` or ``"cuda[:N]"``; CUDA trains in mixed precision.
    """

    meta = Meta(
        name="hail",
        version="1.0",
        citation=_CITATION,
        description=(
            "3-D encoder pre-trained to reconstruct, AdaIN style transfer to the one-shot target reference, "
            "content + style + consistency losses."
        ),
        uses_reference=True,
        needs_source_sites=True,
        handles_unseen_sites=True,
        devices=("cpu", "cuda"),
        stochastic=True,
    )

    def __init__(
        self,
        channels: int = 16,
        levels: int = 1,
        patch_size: int = 64,
        pretrain_patch_size: int = 32,
        batch_size: int = 2,
        pretrain_steps: int = 200,
        style_steps: int = 60,
        learning_rate: float = 2e-3,
        content_weight: float = 1.0,
        style_weight: float = 10.0,
        consistency_weight: float = 5.0,
        device: str = "cpu",
    ) -> None:
        self.channels = channels
        self.levels = levels
        self.patch_size = patch_size
        self.pretrain_patch_size = pretrain_patch_size
        self.batch_size = batch_size
        self.pretrain_steps = pretrain_steps
        self.style_steps = style_steps
        self.learning_rate = learning_rate
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.consistency_weight = consistency_weight
        self.device = device

    # -- parameters ------------------------------------------------------------------------------------------------

    @property
    def _stride(self) -> int:
        return 2 ** (self.levels - 1)

    def _validate(self) -> torch.device:
        check_number("hail", "channels", self.channels, integer=True, minimum=1)
        check_number("hail", "levels", self.levels, integer=True, minimum=1)
        if self.levels > MAX_LEVELS:
            raise ConfigError(f"hail: parameter 'levels' must be at most {MAX_LEVELS}, got {self.levels!r}")
        for name in ("patch_size", "pretrain_patch_size"):
            value = getattr(self, name)
            check_number("hail", name, value, integer=True, minimum=1)
            if value % self._stride or value < 4 * self._stride:
                raise ConfigError(
                    f"hail: parameter {name!r} must be a multiple of the network stride {self._stride} "
                    f"(2^(levels-1)) and at least {4 * self._stride}, got {value!r}"
                )
        check_number("hail", "batch_size", self.batch_size, integer=True, minimum=1)
        check_number("hail", "pretrain_steps", self.pretrain_steps, integer=True, minimum=0)
        check_number("hail", "style_steps", self.style_steps, integer=True, minimum=0)
        check_number("hail", "learning_rate", self.learning_rate, minimum=0.0, strict=True)
        for name in ("content_weight", "style_weight", "consistency_weight"):
            check_number("hail", name, getattr(self, name), minimum=0.0)
        weights = (self.content_weight, self.style_weight, self.consistency_weight)
        if self.style_steps > 0 and not any(weights):
            raise ConfigError(
                "hail: parameters 'content_weight', 'style_weight' and 'consistency_weight' are all 0, so stage 2 "
                "has no loss; set one of them, or style_steps=0"
            )
        try:
            return resolve_device(self.device)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"hail: parameter 'device': {exc}") from exc

    def _networks(self, device: torch.device) -> tuple[Encoder, Decoder]:
        encoder = Encoder(self.channels, self.levels).to(device, memory_format=CHANNELS_LAST)
        decoder = Decoder(self.channels, self.levels).to(device, memory_format=CHANNELS_LAST)
        return encoder, decoder

    # -- fit -------------------------------------------------------------------------------------------------------

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> HAILHarmonizer:
        device = self._validate()
        if len(train) == 0:
            raise DataError(f"hail: training cohort {train.name!r} is empty")
        shapes = {s.shape for s in train}
        if len(shapes) > 1:
            raise DataError(
                f"hail: training scans of {train.name!r} have different shapes {sorted(shapes)}; HAIL batches them "
                "and needs one common grid"
            )
        seed = seed_from(rng)
        with deterministic(), seeded(seed, device) as generator:
            encoder, decoder = self._networks(device)
            volumes, masks = self._training_tensors(train, device)
            sites = [s.site for s in train]
            stage1 = TrainingCheckpoint(self._stage1_dir(seed, volumes, masks, device), tag="hail stage 1")
            objects = {"encoder": encoder, "decoder": decoder}
            steps = int(self.pretrain_steps)
            if steps > 0 and stage1.restore(objects, generator) == steps:
                log.info("hail: stage 1 loaded from %s (trained by a configuration with the same stage 1)", stage1.path)
            else:
                self._pretrain(encoder, decoder, volumes, masks, generator, device)
                stage1.save(steps, objects, generator)
            self._style_train(encoder, decoder, volumes, masks, sites, generator, device)
        self.encoder_, self.decoder_ = encoder.eval(), decoder.eval()
        self.device_ = device
        self.target_site_ = target_site
        self._style_cache: tuple[str, list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        self.fitted_ = True
        return self

    def _stage1_dir(self, seed: int, volumes: torch.Tensor, masks: torch.Tensor, device: torch.device) -> Path | None:
        """Where stage 1's result is shared with other configurations (``shared_dir``), keyed on everything it
        depends on: configurations that differ only in stage-2 parameters (``hail`` and
        ``hail-no-consistency``) pre-train once. None without a ``shared_dir``."""
        if self.shared_dir is None:
            return None
        stage1_params = ("channels", "levels", "pretrain_patch_size", "batch_size", "pretrain_steps", "learning_rate")
        key = params_hash(
            {
                "version": self.meta.version,
                "params": {name: getattr(self, name) for name in stage1_params},
                "seed": int(seed),
                "device": device.type,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "data": array_digest(volumes.detach().cpu().contiguous().numpy(), masks.detach().cpu().numpy()),
            }
        )
        return Path(self.shared_dir) / f"stage1-{key}"

    def _training_tensors(self, train: Cohort, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        vols, masks = [], []
        for scan in train:
            data, brain, _ = normalise(scan)
            vols.append(_to_tensor(data, self._stride, device))
            masks.append(_to_tensor(brain.astype(np.float32), self._stride, device))
        return torch.cat(vols).contiguous(memory_format=CHANNELS_LAST), torch.cat(masks)

    @staticmethod
    def _draw_patches(
        tensors: Sequence[torch.Tensor], index: torch.Tensor, size: int, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """The same random crop (one per batch item) of each (N, C, D, H, W) tensor, at most ``size`` per side.

        The padded volume and ``size`` are multiples of the network stride, so every patch side is too; a
        volume no larger than ``size`` is returned whole.
        """
        shape = tuple(tensors[0].shape[2:])
        patch = tuple(min(int(size), n) for n in shape)
        if patch == shape:
            return [t[index] for t in tensors]
        out: list[list[torch.Tensor]] = [[] for _ in tensors]
        for i in index.tolist():
            starts = [
                int(torch.randint(0, n - p + 1, (1,), generator=generator)) for n, p in zip(shape, patch, strict=True)
            ]
            window = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
            for k, t in enumerate(tensors):
                out[k].append(t[(i, slice(None), *window)])
        return [torch.stack(parts).contiguous(memory_format=CHANNELS_LAST) for parts in out]

    def _level_masks(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """The brain mask at the resolution of each encoder feature map."""
        return [downsample_mask(mask, 2 ** max(i - 1, 0)) for i in range(self.levels + 1)]

    def _pretrain(
        self,
        encoder: Encoder,
        decoder: Decoder,
        volumes: torch.Tensor,
        masks: torch.Tensor,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        """Stage 1: encoder + decoder reconstruct the training scans of every site (L1 on brain voxels)."""
        params = [*encoder.parameters(), *decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=float(self.learning_rate))
        scaler = grad_scaler(device)
        n = volumes.shape[0]
        loss = torch.zeros(())
        for _ in progress(range(int(self.pretrain_steps)), desc="hail: pre-training the feature extractor"):
            index = torch.randint(0, n, (int(self.batch_size),), generator=generator)
            x, m = self._draw_patches((volumes, masks), index, int(self.pretrain_patch_size), generator)
            with autocast(device):
                recon = decoder(encoder(x)[-1])
            loss = _masked_mean((recon.float() - x).abs(), m).mean()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        log.info("hail: stage 1 (reconstruction) done, last L1 %.4f", float(loss.detach()))

    @torch.no_grad()
    def _volume_stats(
        self, encoder: Encoder, volumes: torch.Tensor, masks: torch.Tensor, device: torch.device
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level, the masked feature mean and std of each whole volume: [(N, C, 1, 1, 1) × 2] × levels."""
        per_scan = []
        for i in range(volumes.shape[0]):
            with autocast(device):
                feats = encoder(volumes[i : i + 1])
            per_scan.append([mean_std(f, m) for f, m in zip(feats, self._level_masks(masks[i : i + 1]), strict=True)])
        return [
            (torch.cat([s[level][0] for s in per_scan]), torch.cat([s[level][1] for s in per_scan]))
            for level in range(self.levels + 1)
        ]

    def _style_pairs(self, sites: Sequence[str], generator: torch.Generator) -> tuple[list[int], list[int], list[bool]]:
        """Content/style index pairs: `SAME_SITE_FRACTION` from the content's own site (another scan if it has
        one), the rest from another site (any scan when there is only one site)."""
        n = len(sites)
        by_site: dict[str, list[int]] = {}
        for i, site in enumerate(sites):
            by_site.setdefault(site, []).append(i)
        content, style, same = [], [], []
        for _ in range(int(self.batch_size)):
            c = int(torch.randint(0, n, (1,), generator=generator))
            own = by_site[sites[c]]
            others = [i for i in range(n) if sites[i] != sites[c]]
            if float(torch.rand((), generator=generator)) < SAME_SITE_FRACTION or not others:
                pool = [i for i in own if i != c] or own
            else:
                pool = others
            s = pool[int(torch.randint(0, len(pool), (1,), generator=generator))]
            content.append(c)
            style.append(s)
            same.append(sites[s] == sites[c])
        return content, style, same

    def _style_train(
        self,
        encoder: Encoder,
        decoder: Decoder,
        volumes: torch.Tensor,
        masks: torch.Tensor,
        sites: Sequence[str],
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        """Stage 2: frozen encoder, decoder trained with content + style + consistency losses (module docstring)."""
        if int(self.style_steps) == 0:
            return
        encoder.requires_grad_(False)
        encoder.eval()
        stats = self._volume_stats(encoder, volumes, masks, device)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=float(self.learning_rate))
        scaler = grad_scaler(device)
        deepest = self.levels
        wc, ws, wk = float(self.content_weight), float(self.style_weight), float(self.consistency_weight)
        terms = (torch.zeros(()),) * 3
        for _ in progress(range(int(self.style_steps)), desc="hail: training the style transfer"):
            c_idx, s_idx, same = self._style_pairs(sites, generator)
            ci, si = torch.tensor(c_idx), torch.tensor(s_idx)
            x, m = self._draw_patches((volumes, masks), ci, int(self.patch_size), generator)
            level_masks = self._level_masks(m)
            with autocast(device), torch.no_grad():
                content_feat = encoder(x)[deepest]
            c_mean, c_std = stats[deepest][0][ci], stats[deepest][1][ci]
            t = adain(
                content_feat, stats[deepest][0][si], stats[deepest][1][si], content_mean=c_mean, content_std=c_std
            )
            with autocast(device):
                out = decoder(t)
                out_feats = encoder(out)
            content = _masked_mean((out_feats[deepest].float() - t) ** 2, level_masks[deepest]).mean()
            style = style_loss(out_feats, level_masks, [s[0][si] for s in stats], [s[1][si] for s in stats])
            same_t = torch.tensor(same, dtype=torch.float32, device=device)
            consistency = (_masked_mean((out.float() - x).abs(), m) * same_t).mean()
            loss = wc * content + ws * style + wk * consistency
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            terms = (content.detach(), style.detach(), consistency.detach())
        log.info(
            "hail: stage 2 (style transfer) done, last content %.4f style %.4f consistency %.4f",
            *(float(v) for v in terms),
        )

    # -- transform -------------------------------------------------------------------------------------------------

    def _style_stats(self, reference: Scan) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The reference's masked feature statistics per level, cached for the last reference seen.

        The runner harmonizes every test scan with the same reference; the cache (keyed on the reference's
        voxels and mask) saves one encoder pass per scan and holds nothing ``get_state`` would need.
        """
        digest = hashlib.sha1(np.ascontiguousarray(reference.data).tobytes())
        digest.update(np.packbits(reference.brain).tobytes())
        key = digest.hexdigest()
        cache = getattr(self, "_style_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        data, brain, _ = normalise(reference)
        x = _to_tensor(data, self._stride, self.device_)
        m = _to_tensor(brain.astype(np.float32), self._stride, self.device_)
        with torch.no_grad(), autocast(self.device_):
            feats = self.encoder_(x)
        stats = [mean_std(f, lm) for f, lm in zip(feats, self._level_masks(m), strict=True)]
        self._style_cache = (key, stats)
        return stats

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        if reference is None:
            raise DataError(
                "hail is one-shot: transform() needs the target-site reference scan (the style image) as 'reference'"
            )
        _, _, ref_p95 = normalise(reference)
        data, brain, _ = normalise(scan)
        with deterministic(), torch.no_grad():
            style = self._style_stats(reference)
            x = _to_tensor(data, self._stride, self.device_)
            m = _to_tensor(brain.astype(np.float32), self._stride, self.device_)
            with autocast(self.device_):
                feats = self.encoder_(x)
            deepest = self.levels
            t = adain(feats[deepest], style[deepest][0], style[deepest][1], content_mask=self._level_masks(m)[deepest])
            with autocast(self.device_):
                out = self.decoder_(t)
        d, h, w = scan.shape
        pred = out[0, 0, :d, :h, :w].float().cpu().numpy()
        result = np.array(scan.data, dtype=np.float32, copy=True)
        # back to the target's scale via the reference's 95th percentile, as the authors do; the clip keeps the
        # training range (and non-negative magnitudes)
        result[brain] = (np.clip(pred[brain], 0.0, CLIP_MAX) * ref_p95).astype(np.float32)
        return scan.with_data(result)

    # -- state -----------------------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, np.ndarray]:
        self.check_is_fitted()
        state = {"architecture": np.array([int(self.channels), int(self.levels)], dtype=np.int64)}
        state.update(module_state(self.encoder_, "encoder"))
        state.update(module_state(self.decoder_, "decoder"))
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> HAILHarmonizer:
        device = self._validate()
        if "architecture" not in state:
            raise PluginError("hail: saved state has no 'architecture' entry")
        saved = [int(v) for v in np.asarray(state["architecture"]).ravel()]
        if saved != [int(self.channels), int(self.levels)]:
            raise PluginError(
                f"hail: saved state is for channels={saved[0]}, levels={saved[1]}, but the parameters are "
                f"channels={self.channels}, levels={self.levels}"
            )
        encoder, decoder = self._networks(device)
        try:
            load_module_state(encoder, state, "encoder")
            load_module_state(decoder, state, "decoder")
        except ValueError as exc:
            raise PluginError(f"hail: {exc}") from exc
        self.encoder_, self.decoder_ = encoder.eval(), decoder.eval()
        self.device_ = device
        self._style_cache = None
        self.fitted_ = True
        return self


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [HAILHarmonizer]
