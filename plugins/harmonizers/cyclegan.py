"""CycleGAN harmonization: unpaired 2-D slice translation from each source site to the target site.

References:
    Zhu J-Y, Park T, Isola P, Efros AA. Unpaired image-to-image translation using cycle-consistent
    adversarial networks. ICCV 2017 (arXiv 1703.10593).
    Modanwal G, Vellal A, Buda M, Mazurowski MA. MRI image harmonization using cycle-consistent generative
    adversarial network. SPIE Medical Imaging 2020 (CycleGAN between two scanners' breast MRI slices).
    Roca V, Kuchcinski G, Pruvo J-P, Manouvriez D, Lopes R. IGUANe: a 3D generalizable CycleGAN for
    multicenter harmonization of brain MR images. Medical Image Analysis 99, 103388, 2025.

What the papers do, and what is built here:

1. **One generator pair per source→target pair** (Zhu et al.; Modanwal et al. for two MRI scanners). For
   every seen source site ``s`` there are two generators, ``G_s``: source→target and ``F_s``:
   target→source, and two PatchGAN discriminators, ``D_target`` (real target slices vs ``G_s`` outputs)
   and ``D_s`` (real source slices vs ``F_s`` outputs). N source sites cost N independent generator pairs
   (and 2N discriminators): ``fit_info`` records ``n_generator_pairs`` and the weight counts, because this
   growth is the argument MURD (Liu et al., MICCAI 2021) and IGUANe make against pairwise CycleGANs.
2. **Losses** (Zhu et al. eq. 1–3 and section 5.2), with the paper's weights as defaults:

   * least-squares adversarial loss (LSGAN, Mao et al. 2017): generators minimise ``(D(G(a)) − 1)²``,
     discriminators ``½[(D(b) − 1)² + D(G(a))²]``, averaged over the PatchGAN output map;
   * cycle consistency ``‖F(G(a)) − a‖₁ + ‖G(F(b)) − b‖₁`` with weight ``cycle_weight`` (λ_cyc = 10);
   * identity ``‖G(b) − b‖₁ + ‖F(a) − a‖₁`` with weight ``identity_ratio · cycle_weight`` (Zhu et al.
     use 0.5·λ_cyc for photo↔painting, and the MRI applications keep it: a target-site image must pass
     through ``G`` unchanged, which is what stops a harmonizer from inventing contrast);
   * discriminators see a history of 50 generated images (``pool_size``, Shrivastava et al. 2017), half
     of each batch drawn from it, as in the paper;
   * Adam (lr 2e-4, β = (0.5, 0.999)); the learning rate is constant for the first half of the steps and
     decays linearly to zero over the second half (``decay_fraction``), the paper's schedule in steps
     rather than epochs.
3. **2-D axial slices, reassembled into volumes** (Modanwal et al. translate slices; IGUANe is 3-D).
   Training draws random axial slices that contain brain (`harmbench.nn.slices.SliceSampler`); ``transform``
   runs ``G_s`` over every axial slice that holds brain (`harmbench.nn.slices.predict_volume`) and stacks
   the slices back into the volume.
4. **Networks** (`harmbench.nn.cyclegan_nets`): the paper's ResNet generator (``generator="resnet"``:
   7×7 conv, ``n_down`` stride-2 convs, ``n_blocks`` residual blocks, transposed convs back, 7×7 conv,
   tanh; instance norm, reflection padding) or a U-Net with instance norm (``generator="unet"``, the
   family IGUANe uses, in 2-D); the 70×70 PatchGAN discriminator (``disc_layers=3``). Weights from
   N(0, 0.02).

Named configurations (each a plugin of its own):

* ``cyclegan`` — the CPU default: ResNet generator with 8 filters, 2 down-samplings and 3 residual
  blocks (68 k weights per generator), PatchGAN with 16 filters (175 k), batch 4, 200 steps per pair:
  0.48 M trained weights per pair, 1.45 M for the default suite's three source sites.
* ``cyclegan-paper`` — the paper's size for a GPU: ResNet-9-blocks with 64 filters (11.4 M weights per
  generator), PatchGAN with 64 filters (2.8 M), slices padded to 256×256, batch 1 as in the paper, 20 000
  steps per pair, mixed precision on CUDA: 28.3 M trained weights per pair, 84.8 M for three source sites.
* ``cyclegan-pooled`` / ``cyclegan-pooled-paper`` — see `CycleGANPooledHarmonizer`: one pair trained from
  every seen source site pooled into one source domain, so it also applies to unseen sites.

Preprocessing: each volume is divided by the 95th percentile of its brain voxels, clipped to [0, 2] and set
to 0 outside the brain mask (skull-stripped), then shifted to [-1, 1] (the paper's image range; background
−1). The generator's tanh output is shifted back and multiplied by the median 95th percentile of the
target site's training scans, so outputs are in the target site's scale without a reference scan. Voxels
outside the scan's brain mask are returned unchanged. A scan from the target site itself is returned
unchanged (there is nothing to translate); `CycleGANHarmonizer` refuses a scan from a site it has no
generator for (``handles_unseen_sites=False``: the runner marks the unseen scenario ``not_applicable``).

Departures from the papers, and why:

* **Size and length (default config).** The paper trains 200 epochs at batch 1 on 256² images with the
  11.4 M-weight generator; the default suite must fit three pairs on two CPU cores in minutes, so the
  default is the small ResNet above for 200 steps of batch 4 per pair. ``cyclegan-paper`` is the paper's
  size (never run in CI).
* **Intensity normalisation.** The paper maps 8-bit photographs to [-1, 1]; MRI has no fixed range, so the
  per-scan 95th-percentile scaling above is used (as IGUANe and HAIL normalise by a brain percentile), and
  the target site's median percentile restores the scale. A global gain difference between sites is
  therefore removed before the network sees the data (the ``scale`` baseline does that alone); the GAN
  learns the contrast and non-linear differences.
* **Slices, not volumes.** IGUANe's generator is 3-D; here, as in Zhu et al. and Modanwal et al., it is 2-D
  on axial slices (cheaper, and the slice pieces are shared with the other slice-based methods). Slices
  are zero-padded (in intensity, i.e. background) to multiples of the generator's stride and, for the
  paper size, to 256×256; there is no random resize-and-crop augmentation.
* **Steps, not epochs.** Training length is a number of steps per pair (each step: one batch from the
  source site and one from the target site), so fit time does not depend on the number of scans.
* **Brain masking.** Outside the brain mask the input is returned as it was: the benchmark scores brain
  voxels, and a GAN's background is free to drift.

Determinism: weights are initialised, slices drawn and the image history sampled from a seed taken from the
``rng`` given to ``fit`` (`harmbench.nn.runtime.seed_from`, ``seeded``) with torch's deterministic algorithms
on; two fits in one environment give bit-identical outputs. With ``checkpoint_dir`` set, the networks,
optimisers, histories and the sampler's generator are saved every ``checkpoint_every`` steps
(`harmbench.nn.checkpoint.TrainingCheckpoint`) and a killed fit resumes where it stopped, ending where an
uninterrupted fit ends. On CUDA training runs in mixed precision (autocast + GradScaler); that code path is
written but has not been run on a GPU here.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harmbench import hookimpl
from harmbench.api import Harmonizer, Meta, check_number, params_hash
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.nn.checkpoint import TrainingCheckpoint
from harmbench.nn.cyclegan_nets import PatchDiscriminator2d, ResnetGenerator2d, UnetGenerator2d, count_parameters
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
from harmbench.nn.slices import SliceSampler, crop_2d, predict_volume
from harmbench.progress import progress

log = logging.getLogger(__name__)

_CITATION = (
    "Zhu J-Y, Park T, Isola P, Efros AA. Unpaired image-to-image translation using cycle-consistent adversarial "
    "networks. ICCV 2017. Modanwal G, et al. MRI image harmonization using cycle-consistent generative adversarial "
    "network. SPIE Medical Imaging 2020. Roca V, et al. IGUANe: a 3D generalizable CycleGAN for multicenter "
    "harmonization of brain MR images. Medical Image Analysis 2025."
)

#: Each volume is divided by this percentile of its brain intensities ...
PERCENTILE = 95.0
#: ... and clipped to [0, CLIP_MAX]; the network sees ``value - 1`` so this range maps onto tanh's [-1, 1].
CLIP_MAX = 2.0
#: Axial slices (the volume's last axis).
AXIS = 2
#: A training slice must be at least this brain.
MIN_BRAIN_FRACTION = 0.05
#: Slices per forward pass in `transform`.
INFERENCE_BATCH = 16
GENERATORS = ("resnet", "unet")


# -- preprocessing -------------------------------------------------------------------------------------------------


def normalise(scan: Scan) -> tuple[np.ndarray, np.ndarray, float]:
    """``data / p95(brain)`` clipped to [0, `CLIP_MAX`], 0 outside the brain; returns it, the mask and the p95."""
    brain = scan.brain
    values = scan.data[brain]
    if values.size == 0:
        raise DataError(f"cyclegan: {scan.describe()} has an empty brain mask")
    p95 = float(np.percentile(values, PERCENTILE))
    if not math.isfinite(p95) or p95 <= 0:
        raise DataError(
            f"cyclegan: the {PERCENTILE:g}th percentile of the brain intensities of {scan.describe()} is {p95!r}; "
            "CycleGAN divides by it and needs it positive"
        )
    out = np.where(brain, np.clip(scan.data / np.float32(p95), 0.0, CLIP_MAX), 0.0).astype(np.float32)
    return out, brain, p95


def _canvas(height: int, width: int, minimum: int, stride: int) -> tuple[int, int]:
    """In-plane size slices are padded to: at least ``minimum`` and a multiple of ``stride`` on each side."""
    return tuple(int(math.ceil(max(n, minimum) / stride) * stride) for n in (height, width))  # type: ignore[return-value]


def _pad_to(x: torch.Tensor, canvas: tuple[int, int]) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Zero-pad the last two axes to ``canvas`` (split evenly, the odd pixel after); the crops that undo it."""
    pads, crops = [], []
    for size, full in zip(x.shape[-2:], canvas, strict=True):
        before = (full - size) // 2
        pads.append((before, full - size - before))
        crops.append(slice(before, before + size))
    if any(sum(p) for p in pads):
        x = F.pad(x, (*pads[1], *pads[0]))
    return x, (crops[0], crops[1])


class ImagePool:
    """Shrivastava et al.'s history of generated images, as CycleGAN feeds its discriminators.

    Until ``size`` images are stored every query image is stored and returned; afterwards each image is,
    with probability ½, swapped for a random stored one (which is returned instead). Draws come from the
    caller's ``torch.Generator``. ``state_dict`` / ``load_state_dict`` let a training checkpoint keep it.
    """

    def __init__(self, size: int, generator: torch.Generator, device: torch.device) -> None:
        self.size = int(size)
        self.generator = generator
        self.device = device
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand((), generator=self.generator)) < 0.5:
                k = int(torch.randint(0, len(self.images), (1,), generator=self.generator))
                out.append(self.images[k].clone())
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.images:
            return {}
        return {"images": torch.stack(self.images).cpu()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        stored = state.get("images")
        self.images = [] if stored is None else [t.to(self.device) for t in stored]


def _lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target)


# -- the harmonizer ------------------------------------------------------------------------------------------------


class CycleGANHarmonizer(Harmonizer):
    """CycleGAN (Zhu et al. ICCV 2017) with one generator pair per seen source site → target site, on 2-D axial
    slices; LSGAN + cycle + identity losses. Cannot harmonize a site it has no pair for. See the module docstring.

    Parameters:
        generator: ``"resnet"`` (the paper's) or ``"unet"``.
        filters: generator width at full resolution.
        n_down: ResNet generator's stride-2 down-samplings (and transposed-conv up-samplings).
        n_blocks: ResNet generator's residual blocks.
        unet_levels: U-Net generator's stride-2 levels.
        disc_filters: PatchGAN discriminator's first-layer width.
        disc_layers: PatchGAN's stride-2 layers (3: 70×70 patches).
        slice_size: slices are zero-padded to at least this many pixels per side (0: only to the stride).
        batch_size: slices per domain per step.
        steps: training steps per generator pair.
        learning_rate: Adam learning rate (constant, then linear decay to 0 over ``decay_fraction`` of the steps).
        decay_fraction: share of the steps over which the learning rate decays linearly to 0.
        beta1: Adam's first-moment coefficient (the paper: 0.5).
        cycle_weight: λ_cyc, weight of the cycle-consistency loss.
        identity_ratio: the identity loss's weight as a multiple of ``cycle_weight`` (0: no identity loss).
        pool_size: generated images kept for the discriminators (0: none).
        checkpoint_every: steps between training checkpoints when the runner sets ``checkpoint_dir``.
        device: ``"cpu"`` or ``"cuda[:N]"``; CUDA trains in mixed precision.
    """

    meta = Meta(
        name="cyclegan",
        version="1.0",
        citation=_CITATION,
        description=(
            "CycleGAN, one generator pair per seen source site → target (2-D axial slices, ResNet generators, "
            "PatchGAN, LSGAN + cycle 10 + identity 5)."
        ),
        uses_reference=False,
        needs_source_sites=True,
        handles_unseen_sites=False,
        devices=("cpu", "cuda"),
        stochastic=True,
    )
    #: True: one pair from all seen source sites pooled (`CycleGANPooledHarmonizer`).
    pooled: ClassVar[bool] = False

    def __init__(
        self,
        generator: str = "resnet",
        filters: int = 8,
        n_down: int = 2,
        n_blocks: int = 3,
        unet_levels: int = 3,
        disc_filters: int = 16,
        disc_layers: int = 3,
        slice_size: int = 0,
        batch_size: int = 4,
        steps: int = 200,
        learning_rate: float = 2e-4,
        decay_fraction: float = 0.5,
        beta1: float = 0.5,
        cycle_weight: float = 10.0,
        identity_ratio: float = 0.5,
        pool_size: int = 50,
        checkpoint_every: int = 100,
        device: str = "cpu",
    ) -> None:
        self.generator = generator
        self.filters = filters
        self.n_down = n_down
        self.n_blocks = n_blocks
        self.unet_levels = unet_levels
        self.disc_filters = disc_filters
        self.disc_layers = disc_layers
        self.slice_size = slice_size
        self.batch_size = batch_size
        self.steps = steps
        self.learning_rate = learning_rate
        self.decay_fraction = decay_fraction
        self.beta1 = beta1
        self.cycle_weight = cycle_weight
        self.identity_ratio = identity_ratio
        self.pool_size = pool_size
        self.checkpoint_every = checkpoint_every
        self.device = device

    # -- configuration ---------------------------------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return self.meta.name

    def _validate(self) -> torch.device:
        name = self._name
        if self.generator not in GENERATORS:
            raise ConfigError(f"{name}: parameter 'generator' must be one of {GENERATORS}, got {self.generator!r}")
        check_number(name, "filters", self.filters, integer=True, minimum=1)
        check_number(name, "n_down", self.n_down, integer=True, minimum=0)
        check_number(name, "n_blocks", self.n_blocks, integer=True, minimum=0)
        check_number(name, "unet_levels", self.unet_levels, integer=True, minimum=1)
        check_number(name, "disc_filters", self.disc_filters, integer=True, minimum=1)
        check_number(name, "disc_layers", self.disc_layers, integer=True, minimum=1)
        check_number(name, "slice_size", self.slice_size, integer=True, minimum=0)
        check_number(name, "batch_size", self.batch_size, integer=True, minimum=1)
        check_number(name, "steps", self.steps, integer=True, minimum=0)
        check_number(name, "learning_rate", self.learning_rate, minimum=0.0, strict=True)
        check_number(name, "decay_fraction", self.decay_fraction, minimum=0.0)
        if self.decay_fraction > 1:
            raise ConfigError(f"{name}: parameter 'decay_fraction' must be in [0, 1], got {self.decay_fraction!r}")
        check_number(name, "beta1", self.beta1, minimum=0.0)
        if self.beta1 >= 1:
            raise ConfigError(f"{name}: parameter 'beta1' must be in [0, 1), got {self.beta1!r}")
        check_number(name, "cycle_weight", self.cycle_weight, minimum=0.0)
        check_number(name, "identity_ratio", self.identity_ratio, minimum=0.0)
        check_number(name, "pool_size", self.pool_size, integer=True, minimum=0)
        check_number(name, "checkpoint_every", self.checkpoint_every, integer=True, minimum=1)
        try:
            return resolve_device(self.device)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{name}: parameter 'device': {exc}") from exc

    def _architecture(self) -> list[int]:
        """The integers that fix the generator's shape (saved with the weights, checked on load)."""
        kind = GENERATORS.index(self.generator)
        return [kind, int(self.filters), int(self.n_down), int(self.n_blocks), int(self.unet_levels)]

    def _make_generator(self) -> nn.Module:
        if self.generator == "unet":
            return UnetGenerator2d(1, int(self.filters), int(self.unet_levels))
        return ResnetGenerator2d(1, int(self.filters), int(self.n_down), int(self.n_blocks))

    @property
    def _stride(self) -> int:
        return 2 ** int(self.unet_levels if self.generator == "unet" else self.n_down)

    def _domains(self, train: Cohort, target_site: str) -> list[tuple[str, list[str]]]:
        """(pair name, source sites) per generator pair: one per seen source site, or one pooled pair."""
        sources = [s for s in train.sites if s != target_site]
        if not sources:
            raise DataError(
                f"{self._name}: the training cohort {train.name!r} has no site other than the target {target_site!r}; "
                "CycleGAN needs source-site scans"
            )
        if self.pooled:
            return [("pooled", sources)]
        return [(site, [site]) for site in sources]

    # -- fit -------------------------------------------------------------------------------------------------------

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> CycleGANHarmonizer:
        device = self._validate()
        if len(train) == 0:
            raise DataError(f"{self._name}: training cohort {train.name!r} is empty")
        if target_site not in train.sites:
            raise DataError(f"{self._name}: the training cohort {train.name!r} has no scan of the target site")
        shapes = {s.shape for s in train}
        if len(shapes) > 1:
            raise DataError(
                f"{self._name}: training scans of {train.name!r} have different shapes {sorted(shapes)}; the slice "
                "sampler needs one common grid"
            )
        domains = self._domains(train, target_site)
        scans = list(train)
        normalised = [normalise(s) for s in scans]
        volumes = [v for v, _, _ in normalised]
        masks = [m for _, m, _ in normalised]
        target_index = [i for i, s in enumerate(scans) if s.site == target_site]
        target_p95 = float(np.median([normalised[i][2] for i in target_index]))
        sampler = SliceSampler(volumes, masks, axis=AXIS, min_brain_fraction=MIN_BRAIN_FRACTION)
        canvas = _canvas(*sampler.slices.shape[-2:], int(self.slice_size), self._stride)
        seed = seed_from(rng)
        with deterministic(), seeded(seed, device) as generator:
            pairs = [self._new_pair(device, generator) for _ in domains]
            losses = self._train(pairs, domains, scans, target_index, sampler, canvas, generator, device)
        self.generators_ = [pair["G"].eval() for pair in pairs]
        self.sources_ = [name for name, _ in domains]
        self.target_site_ = target_site
        self.target_p95_ = target_p95
        self.device_ = device
        n_gen = sum(count_parameters(p["G"]) + count_parameters(p["F"]) for p in pairs)
        n_disc = sum(count_parameters(p["D_source"]) + count_parameters(p["D_target"]) for p in pairs)
        self.info_ = {
            "n_generator_pairs": len(pairs),
            "n_parameters": n_gen + n_disc,
            "n_generator_parameters": n_gen,
            "n_discriminator_parameters": n_disc,
            "n_train_slices": int(sampler.eligible.sum()),
            "steps_per_pair": int(self.steps),
            "batch_size": int(self.batch_size),
            **{f"final_{k}": float(np.mean([loss[k] for loss in losses])) for k in losses[0]},
        }
        self.fitted_ = True
        return self

    def _new_pair(self, device: torch.device, generator: torch.Generator) -> dict[str, Any]:
        g, f = self._make_generator().to(device), self._make_generator().to(device)
        d_src = PatchDiscriminator2d(1, int(self.disc_filters), int(self.disc_layers)).to(device)
        d_tgt = PatchDiscriminator2d(1, int(self.disc_filters), int(self.disc_layers)).to(device)
        betas = (float(self.beta1), 0.999)
        lr = float(self.learning_rate)
        return {
            "G": g,
            "F": f,
            "D_source": d_src,
            "D_target": d_tgt,
            "opt_G": torch.optim.Adam([*g.parameters(), *f.parameters()], lr=lr, betas=betas),
            "opt_D": torch.optim.Adam([*d_src.parameters(), *d_tgt.parameters()], lr=lr, betas=betas),
            "scaler_G": grad_scaler(device),
            "scaler_D": grad_scaler(device),
            "pool_source": ImagePool(int(self.pool_size), generator, device),
            "pool_target": ImagePool(int(self.pool_size), generator, device),
        }

    def _learning_rate(self, step: int) -> float:
        """Constant, then linear decay to 0 over the last ``decay_fraction`` of the steps (the paper's schedule)."""
        total = int(self.steps)
        decay = round(float(self.decay_fraction) * total)
        start = total - decay
        if decay == 0 or step < start:
            return float(self.learning_rate)
        return float(self.learning_rate) * (1.0 - (step - start) / (decay + 1))

    def _train(
        self,
        pairs: list[dict[str, Any]],
        domains: Sequence[tuple[str, Sequence[str]]],
        scans: Sequence[Scan],
        target_index: Sequence[int],
        sampler: SliceSampler,
        canvas: tuple[int, int],
        generator: torch.Generator,
        device: torch.device,
    ) -> list[dict[str, float]]:
        """Train every pair in turn, ``steps`` each; checkpointed as one loop over all pairs' steps."""
        objects = {f"{i}.{k}": v for i, pair in enumerate(pairs) for k, v in pair.items()}
        tag = f"{self._name}:{params_hash(self.get_params())}:{[name for name, _ in domains]}:{len(scans)}"
        checkpoint = TrainingCheckpoint(self.checkpoint_dir, every=int(self.checkpoint_every), tag=tag)
        start = checkpoint.restore(objects, generator)
        steps = int(self.steps)
        losses: list[dict[str, float]] = []
        for index, ((name, sites), pair) in enumerate(zip(domains, pairs, strict=True)):
            source_index = [i for i, s in enumerate(scans) if s.site in set(sites)]
            last: dict[str, float] = {}
            first = max(start - index * steps, 0)
            for step in progress(range(first, steps), desc=f"{self._name}: training the pair for {name}"):
                last = self._step(pair, sampler, source_index, target_index, canvas, step, generator, device)
                checkpoint.maybe_save(index * steps + step + 1, objects, generator)
            losses.append(last or {"loss_G": math.nan, "loss_D": math.nan, "loss_cycle": math.nan})
            log.info("%s: pair %s trained, last losses %s", self._name, name, last)
        checkpoint.clear()
        return losses

    def _batch(
        self, sampler: SliceSampler, among: Sequence[int], canvas: tuple[int, int], generator: torch.Generator, device
    ) -> torch.Tensor:
        x, _, _ = sampler.sample(int(self.batch_size), generator, among=among)
        x, _ = _pad_to(x, canvas)
        return (x - 1.0).to(device)  # [0, 2] → the paper's [-1, 1], background −1

    def _step(
        self,
        pair: dict[str, Any],
        sampler: SliceSampler,
        source_index: Sequence[int],
        target_index: Sequence[int],
        canvas: tuple[int, int],
        step: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> dict[str, float]:
        g, f, d_src, d_tgt = pair["G"], pair["F"], pair["D_source"], pair["D_target"]
        opt_g, opt_d = pair["opt_G"], pair["opt_D"]
        lr = self._learning_rate(step)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        a = self._batch(sampler, source_index, canvas, generator, device)
        b = self._batch(sampler, target_index, canvas, generator, device)
        wc = float(self.cycle_weight)
        wi = float(self.identity_ratio) * wc

        # generators: the discriminators are fixed for this half-step
        d_src.requires_grad_(False)
        d_tgt.requires_grad_(False)
        with autocast(device):
            fake_b, fake_a = g(a), f(b)
            rec_a, rec_b = f(fake_b), g(fake_a)
            adversarial = _lsgan(d_tgt(fake_b), True) + _lsgan(d_src(fake_a), True)
            cycle = F.l1_loss(rec_a.float(), a) + F.l1_loss(rec_b.float(), b)
            loss_g = adversarial + wc * cycle
            if wi > 0:
                identity = F.l1_loss(g(b).float(), b) + F.l1_loss(f(a).float(), a)
                loss_g = loss_g + wi * identity
        opt_g.zero_grad(set_to_none=True)
        pair["scaler_G"].scale(loss_g).backward()
        pair["scaler_G"].step(opt_g)
        pair["scaler_G"].update()

        # discriminators: real vs (a history of) generated slices
        d_src.requires_grad_(True)
        d_tgt.requires_grad_(True)
        past_b = pair["pool_target"].query(fake_b.detach().float())
        past_a = pair["pool_source"].query(fake_a.detach().float())
        with autocast(device):
            loss_d = 0.5 * (_lsgan(d_tgt(b), True) + _lsgan(d_tgt(past_b), False))
            loss_d = loss_d + 0.5 * (_lsgan(d_src(a), True) + _lsgan(d_src(past_a), False))
        opt_d.zero_grad(set_to_none=True)
        pair["scaler_D"].scale(loss_d).backward()
        pair["scaler_D"].step(opt_d)
        pair["scaler_D"].update()
        return {"loss_G": float(loss_g.detach()), "loss_D": float(loss_d.detach()), "loss_cycle": float(cycle.detach())}

    # -- transform -------------------------------------------------------------------------------------------------

    def _generator_for(self, scan: Scan) -> nn.Module:
        if self.pooled:
            return self.generators_[0]
        if scan.site not in self.sources_:
            raise DataError(
                f"{self._name} has no generator pair for site {scan.site!r} ({scan.describe()}): it was not a source "
                f"site in training (sources: {', '.join(self.sources_)}); use cyclegan-pooled for unseen sites"
            )
        return self.generators_[self.sources_.index(scan.site)]

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        if scan.site == self.target_site_:
            return scan.with_data(np.array(scan.data, dtype=np.float32, copy=True))
        g = self._generator_for(scan)
        data, brain, _ = normalise(scan)
        canvas = _canvas(data.shape[0], data.shape[1], int(self.slice_size), self._stride)
        device = self.device_

        def translate(x: torch.Tensor) -> torch.Tensor:
            padded, crops = _pad_to(x, canvas)
            with autocast(device):
                y = g(padded - 1.0)
            return crop_2d(y.float() + 1.0, crops)

        with deterministic():
            pred = predict_volume(
                translate,
                data,
                axis=AXIS,
                batch_size=INFERENCE_BATCH,
                device=device,
                slice_mask=brain.any(axis=(0, 1)),
            )
        result = np.array(scan.data, dtype=np.float32, copy=True)
        result[brain] = (np.clip(pred[brain], 0.0, CLIP_MAX) * self.target_p95_).astype(np.float32)
        return scan.with_data(result)

    # -- provenance and state --------------------------------------------------------------------------------------

    def fit_info(self) -> dict[str, int | float | str]:
        self.check_is_fitted()
        return dict(self.info_)

    def get_state(self) -> dict[str, np.ndarray]:
        self.check_is_fitted()
        state: dict[str, np.ndarray] = {
            "architecture": np.array(self._architecture(), dtype=np.int64),
            "sources": np.array(self.sources_, dtype=str),
            "target_site": np.array(self.target_site_, dtype=str),
            "target_p95": np.array(self.target_p95_, dtype=np.float64),
            "info_keys": np.array(list(self.info_), dtype=str),
            "info_values": np.array([float(v) for v in self.info_.values()], dtype=np.float64),
        }
        for i, g in enumerate(self.generators_):
            state.update(module_state(g, f"G{i}"))
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> CycleGANHarmonizer:
        device = self._validate()
        for key in ("architecture", "sources", "target_site", "target_p95", "info_keys", "info_values"):
            if key not in state:
                raise PluginError(f"{self._name}: saved state has no {key!r} entry")
        saved = [int(v) for v in np.asarray(state["architecture"]).ravel()]
        if saved != self._architecture():
            raise PluginError(
                f"{self._name}: saved state is for generator/filters/n_down/n_blocks/unet_levels = {saved}, but the "
                f"parameters give {self._architecture()}"
            )
        sources = [str(s) for s in np.asarray(state["sources"]).ravel()]
        generators = []
        for i in range(len(sources)):
            g = self._make_generator().to(device)
            try:
                load_module_state(g, state, f"G{i}")
            except ValueError as exc:
                raise PluginError(f"{self._name}: {exc}") from exc
            generators.append(g.eval())
        self.generators_ = generators
        self.sources_ = sources
        self.target_site_ = str(np.asarray(state["target_site"]))
        self.target_p95_ = float(np.asarray(state["target_p95"]))
        keys = [str(k) for k in np.asarray(state["info_keys"]).ravel()]
        values = np.asarray(state["info_values"], dtype=np.float64).ravel()
        self.info_ = {
            k: (int(v) if k.startswith(("n_", "steps", "batch")) else float(v))
            for k, v in zip(keys, values, strict=True)
        }
        self.device_ = device
        self.fitted_ = True
        return self


class CycleGANPooledHarmonizer(CycleGANHarmonizer):
    """CycleGAN with ONE generator pair: every seen source site's training scans are pooled into a single source
    domain, translated to the target site (G) and back (F). The discriminator on the source side then learns
    "any non-target site", and G learns a map from the mixture of seen sites to the target; because G takes
    any scan, it is applied to scans from unseen sites too (``handles_unseen_sites=True``) — how well it
    transfers to a site outside the pooled mixture is what the unseen scenario measures. Same networks,
    losses and defaults as `CycleGANHarmonizer`; the cost no longer grows with the number of source sites.
    """

    meta = Meta(
        name="cyclegan-pooled",
        version="1.0",
        citation=_CITATION,
        description=(
            "CycleGAN with one generator pair from all seen source sites pooled → target (2-D axial slices); "
            "applied to unseen sites too."
        ),
        uses_reference=False,
        needs_source_sites=True,
        handles_unseen_sites=True,
        devices=("cpu", "cuda"),
        stochastic=True,
    )
    pooled: ClassVar[bool] = True


#: The paper's size (Zhu et al.: ResNet-9-blocks, 64 filters, 70×70 PatchGAN with 64 filters, 256² images,
#: batch 1); 20 000 steps per pair. For a GPU; never run in CI.
PAPER_DEFAULTS: dict[str, Any] = {
    "generator": "resnet",
    "filters": 64,
    "n_down": 2,
    "n_blocks": 9,
    "disc_filters": 64,
    "disc_layers": 3,
    "slice_size": 256,
    "batch_size": 1,
    "steps": 20000,
    "checkpoint_every": 1000,
    "device": "cuda",
}


def _with_defaults(init: Any, defaults: Mapping[str, Any]) -> inspect.Signature:
    """``init``'s signature with other defaults: the ``-paper`` classes keep every named parameter, so
    ``get_params`` / ``set_params`` (read from the signature) work as for the default configuration."""
    sig = inspect.signature(init)
    return sig.replace(
        parameters=[p.replace(default=defaults[p.name]) if p.name in defaults else p for p in sig.parameters.values()]
    )


class CycleGANPaperHarmonizer(CycleGANHarmonizer):
    """`CycleGANHarmonizer` at the paper's size (`PAPER_DEFAULTS`): a configuration for a GPU."""

    meta = Meta(
        name="cyclegan-paper",
        version="1.0",
        citation=_CITATION,
        description="cyclegan at Zhu et al.'s size: ResNet-9-blocks, 64 filters, 256² slices, 20 000 steps per pair.",
        uses_reference=False,
        needs_source_sites=True,
        handles_unseen_sites=False,
        devices=("cpu", "cuda"),
        stochastic=True,
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**{**PAPER_DEFAULTS, **params})

    __init__.__signature__ = _with_defaults(CycleGANHarmonizer.__init__, PAPER_DEFAULTS)  # type: ignore[attr-defined]


class CycleGANPooledPaperHarmonizer(CycleGANPooledHarmonizer):
    """`CycleGANPooledHarmonizer` at the paper's size (`PAPER_DEFAULTS`): a configuration for a GPU."""

    meta = Meta(
        name="cyclegan-pooled-paper",
        version="1.0",
        citation=_CITATION,
        description="cyclegan-pooled at Zhu et al.'s size: ResNet-9-blocks, 64 filters, 256² slices.",
        uses_reference=False,
        needs_source_sites=True,
        handles_unseen_sites=True,
        devices=("cpu", "cuda"),
        stochastic=True,
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**{**PAPER_DEFAULTS, **params})

    __init__.__signature__ = _with_defaults(CycleGANHarmonizer.__init__, PAPER_DEFAULTS)  # type: ignore[attr-defined]


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [CycleGANHarmonizer, CycleGANPooledHarmonizer, CycleGANPaperHarmonizer, CycleGANPooledPaperHarmonizer]
