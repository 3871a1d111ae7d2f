"""Downstream segmentation of BlindHarmony: a target-site segmenter applied to harmonized scans.

Reference:
    Jeong H, Byun H, Kang DU, Lee J. BlindHarmony: "blind" harmonization for MR images via flow
    model. ICCV 2023 (arXiv:2305.10732) — the protocol: a segmentation network trained only on
    target-site images and their labels is applied to harmonized source-site images; the closer the
    harmonized images are to the target site, the better it segments them.

Protocol here. In ``prepare`` a small 3-D U-Net (`harmbench.nn.unet.UNet3d`) is trained on the
target site's training scans (every labelled ``target_site`` scan of ``train``; the runner gives the
evaluators every target-site scan of every training subject) with their tissue labels, and nothing
else — no source-site scan, no test subject. In ``evaluate`` it segments every harmonized test scan
(``case.output``) and is scored against the subject's ground-truth labels (``case.input.labels``; a
traveling subject's anatomy is the same at every site):

- ``dice_mean``: the mean over the three tissues of ``2 |P ∩ G| / (|P| + |G|)``, per scan;
- ``dice_gap_closed`` (the leaderboard's *downstream* axis), per scan:
  ``(dice(output) − dice(input)) / (dice(rescan) − dice(input))``, where ``input`` is the unharmonized
  source scan (what identity scores) and ``rescan`` the subject's target-site rescan (``case.rescan``,
  scored against its own labels): the share of the site's Dice gap the method closed — 0 for identity,
  1 at the scan-rescan ceiling (it can exceed 1, or fall below 0 when a method makes things worse). NaN
  where the case has no rescan, or where the gap ``dice(rescan) − dice(input)`` is below
  ``GAP_FLOOR`` = 0.02: the source scan then segments about as well as the target site's own rescan, there
  is no gap to close, and the ratio would only amplify noise;
- ``iou_csf``, ``iou_gm``, ``iou_wm``: ``|P ∩ G| / |P ∪ G|`` per tissue (Jaccard index), not on the
  summary board.

A tissue absent from both prediction and ground truth has an undefined (NaN) score.

Intensity normalisation — the target site's, fixed. Every scan the segmenter sees (training and evaluated
alike) is divided by one number learned from the target site in ``prepare``: the median over the
target-site training scans of each scan's 99th brain-voxel percentile (``scale_``), and set to 0 outside
its brain mask. No per-image normalisation and no instance normalisation in the network (``norm="none"``):
either would cancel a global intensity gain, and a pipeline trained at one site that meets another site's
intensities is exactly what harmonization exists for. So a model trained at the target site degrades at a
source site as it does in practice (identity's Dice on a source site is well below the rescan's), and
a harmonizer is rewarded for putting the scan in the target site's intensity scale *and* contrast. The
segmenter gets no intensity augmentation on purpose: it must know the target site's intensities only,
otherwise it would tolerate exactly the site differences it is meant to expose.

Other choices. Each scan is cropped to its brain's bounding box (plus a margin) in training and at
inference alike (less work, the same field of view in both). The network predicts the three tissues
inside the brain mask, which is given (scans are skull-stripped); the loss is cross-entropy plus soft
Dice over brain voxels (Dice so that CSF, a few per cent of the brain, counts). Training: Adam, one
whole (cropped) scan per step in a seeded order, random left-right flips (the only augmentation), a
fixed number of ``steps`` with the learning rate decayed by a cosine schedule. Defaults (120 steps, 8
base channels, 2 levels, learning rate 3e-3) are sized for the quick profile (the target site's ~12
training scans of 48×56×48 voxels): about 0.3 s a step on two CPU cores.
Weights are initialised and batches drawn inside `harmbench.nn.runtime.seeded` from the ``seed``
parameter, with deterministic kernels: on the CPU a re-run gives identical weights. On CUDA (``device="cuda"``)
training uses float16 autocast with a gradient scaler.

Caching: with a ``cache_dir`` the trained weights are saved as ``segmenter-<key>.npz`` (plain arrays,
no pickle), with ``scale_``. The key hashes the evaluator version, the parameters, the device kind
and the training scans' contents (keys, voxels, masks, labels), so a re-run loads the weights
instead of retraining, and any change retrains.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harmbench import hookimpl
from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator, check_number, params_hash
from harmbench.data.scan import TISSUES, Cohort, Scan, array_digest
from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.nn.runtime import (
    autocast,
    deterministic,
    grad_scaler,
    load_module_state,
    module_state,
    resolve_device,
    seeded,
)
from harmbench.nn.unet import UNet3d
from harmbench.progress import progress as progress_bar
from harmbench.results import atomic_path

log = logging.getLogger(__name__)

#: Brain-voxel percentile whose target-site median sets the segmenter's fixed scale (see the module docstring).
SCALE_PERCENTILE = 99.0
#: Smallest Dice gap (rescan − input) for which ``dice_gap_closed`` is defined (see the module docstring).
GAP_FLOOR = 0.02
#: Voxels kept around the brain's bounding box.
CROP_MARGIN = 2
#: Prefix of the network's arrays in the cached ``.npz``.
STATE_PREFIX = "unet"
N_TISSUES = len(TISSUES)


def site_scale(scans: Sequence[Scan]) -> float:
    """The target site's fixed intensity scale: the median over ``scans`` of each brain's 99th percentile."""
    per_scan = [float(np.percentile(s.brain_values(), SCALE_PERCENTILE)) for s in scans if s.brain.any()]
    scale = float(np.median(per_scan)) if per_scan else math.nan
    if not math.isfinite(scale) or scale <= 0.0:
        raise DataError(
            f"segmentation: the target-site training scans have no positive brain intensity scale ({scale!r})"
        )
    return scale


def normalise(scan: Scan, scale: float) -> np.ndarray:
    """The segmenter's input: ``data / scale`` inside the brain, 0 outside (float32); ``scale`` is the
    target site's (`site_scale`), the same for every scan."""
    return np.where(scan.brain, scan.data / np.float32(scale), np.float32(0.0)).astype(np.float32)


def first_largest(logits: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest of the ``C`` channels of a (C, ...) tensor, the first on ties: what
    ``argmax(dim=0)`` gives on finite values, about ten times faster on the CPU, where a reduction over the
    outer axis takes a slow strided path (40 ms for a 3-channel brain box at the default profile)."""
    best = logits[0]
    index = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for channel in range(1, logits.shape[0]):
        better = logits[channel] > best
        index.masked_fill_(better, channel)
        best = torch.where(better, logits[channel], best)
    return index


def brain_box(brain: np.ndarray, margin: int = CROP_MARGIN) -> tuple[slice, ...]:
    """Slices of the brain's bounding box grown by ``margin`` voxels (clipped to the volume)."""
    idx = np.argwhere(brain)
    if idx.size == 0:
        return tuple(slice(0, n) for n in brain.shape)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, brain.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def overlap_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``iou_<tissue>`` per tissue and ``dice_mean`` between two label volumes (1 CSF, 2 GM, 3 WM)."""
    values: dict[str, float] = {}
    dice = []
    for label, name in TISSUES.items():
        p, g = pred == label, truth == label
        inter = int(np.count_nonzero(p & g))
        total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
        union = total - inter
        values[f"iou_{name}"] = inter / union if union else math.nan
        if total:
            dice.append(2.0 * inter / total)
    values["dice_mean"] = float(np.mean(dice)) if dice else math.nan
    return values


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``1 −`` mean soft Dice over the classes, on voxels whose target is not ``ignore_index``.

    Dice weighs each tissue equally whatever its size; cross-entropy alone lets the network neglect
    CSF, a few per cent of a T1w brain at 4 mm.
    """
    valid = (target != ignore_index)[:, None]
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).movedim(-1, 1) * valid
    dims = (0, *range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + 1.0) / (denom + 1.0)).mean()


def _fingerprint(scans: Sequence[Scan]) -> str:
    digest = hashlib.sha256()
    for s in scans:
        digest.update(s.key.encode())
        digest.update(str(s.shape).encode())
        for array in (s.data, s.brain, s.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class SegmentationEvaluator(PerScanEvaluator):
    """BlindHarmony's downstream segmentation (Jeong et al., ICCV 2023, arXiv 2305.10732).

    A 3-D U-Net trained only on target-site scans, in the target site's fixed intensity scale, segments
    each harmonized scan; mean Dice, the share of the Dice gap to the target-site rescan closed, and IoU
    per tissue against the ground-truth labels. Parameters: ``seed`` (weights and batch order),
    ``device`` (``"cpu"`` or ``"cuda[:N]"``), ``steps`` (training steps, one scan each),
    ``base_channels`` and ``levels`` (U-Net width and depth), ``learning_rate`` (Adam).
    """

    name = "segmentation"
    version = "2.0"
    metrics = (
        *(
            MetricSpec(
                f"iou_{tissue}",
                higher_is_better=True,
                ideal=1.0,
                main=False,
                description=f"IoU of {tissue.upper()} segmented by a target-site-only 3-D U-Net vs ground truth",
            )
            for tissue in TISSUES.values()
        ),
        MetricSpec(
            "dice_mean",
            higher_is_better=True,
            ideal=1.0,
            description="mean Dice over CSF, GM, WM of a 3-D U-Net trained on target-site scans in the target "
            "site's fixed intensity scale, vs ground truth",
        ),
        MetricSpec(
            "dice_gap_closed",
            higher_is_better=True,
            ideal=1.0,
            axis="downstream",
            description="(dice(output) - dice(input)) / (dice(rescan) - dice(input)) per scan: 0 = identity, 1 = the "
            f"target-site rescan; NaN without a rescan or a gap below {GAP_FLOOR}",
        ),
    )

    def __init__(
        self,
        seed: int = 0,
        device: str = "cpu",
        steps: int = 120,
        base_channels: int = 8,
        levels: int = 2,
        learning_rate: float = 0.003,
    ) -> None:
        self.seed = seed
        self.device = device
        self.steps = steps
        self.base_channels = base_channels
        self.levels = levels
        self.learning_rate = learning_rate

    # -- training --------------------------------------------------------------
    def _validate(self) -> None:
        check_number(self.name, "seed", self.seed, integer=True, minimum=0)
        check_number(self.name, "steps", self.steps, integer=True, minimum=1)
        check_number(self.name, "base_channels", self.base_channels, integer=True, minimum=1)
        check_number(self.name, "levels", self.levels, integer=True, minimum=0)
        check_number(self.name, "learning_rate", self.learning_rate, strict=True)
        if not isinstance(self.device, str):
            raise ConfigError(f"segmentation: parameter 'device' must be a string such as 'cpu', got {self.device!r}")
        try:
            resolve_device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"segmentation: parameter 'device' {self.device!r} is invalid: {exc}") from exc

    def _new_network(self) -> UNet3d:
        return UNet3d(
            in_channels=1,
            out_channels=N_TISSUES,
            base_channels=int(self.base_channels),
            levels=int(self.levels),
            norm="none",
        )

    def cache_key(self, scans: Sequence[Scan], target_site: str) -> str:
        """Hash of everything the trained weights depend on (see the module docstring)."""
        params = {k: v for k, v in self.get_params().items() if k != "device"}
        return params_hash(
            {
                "version": self.version,
                "params": params,
                "device": resolve_device(self.device).type,
                "target_site": target_site,
                "data": _fingerprint(scans),
            }
        )

    def prepare(self, train: Cohort, target_site: str, cache_dir: Path | None) -> None:
        """Train (or load from ``cache_dir``) the segmenter on ``target_site``'s labelled training scans."""
        self._validate()
        at_target = train.by_site(target_site)
        if not at_target:
            raise DataError(
                f"segmentation: the training cohort {train.name!r} has no scan from the target site {target_site!r} "
                f"(sites: {', '.join(train.sites) or 'none'}); the segmenter trains on target-site scans only"
            )
        scans = [s for s in at_target if s.labels is not None]
        if not scans:
            raise DataError(
                f"segmentation: none of the {len(at_target)} training scan(s) of the target site {target_site!r} "
                f"has tissue labels (e.g. {at_target[0].describe()}); the segmenter needs labelled target-site scans"
            )
        for s in scans:
            if s.labels.shape != s.shape:
                raise DataError(f"segmentation: labels of {s.describe()} have shape {s.labels.shape}, scan {s.shape}")
        self.device_ = resolve_device(self.device)
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"segmenter-{self.cache_key(scans, target_site)}.npz"
            loaded = self._load(path)
            if loaded is not None:
                log.info("segmentation: loaded the target-site segmenter from %s", path)
                model, self.scale_ = loaded
                self.model_, self.loaded_from_cache_, self.target_site_ = model.to(self.device_), True, target_site
                self._overlaps: dict[str, dict[str, float]] = {}
                return
        log.info("segmentation: training a 3-D U-Net on %d %s scan(s)", len(scans), target_site)
        self.scale_ = site_scale(scans)
        model = self.train_segmenter(scans, self.scale_)
        if path is not None:
            self._save(model, self.scale_, path)
        self.model_, self.loaded_from_cache_, self.target_site_ = model, False, target_site
        self._overlaps = {}

    def train_segmenter(self, scans: Sequence[Scan], scale: float | None = None) -> UNet3d:
        """Train a fresh U-Net on ``scans`` (their data and labels) as the module docstring describes; every scan
        is divided by ``scale`` (default: `site_scale` of ``scans``)."""
        self._validate()
        scale = site_scale(scans) if scale is None else float(scale)
        device = resolve_device(self.device)
        examples = []
        for s in scans:
            box = brain_box(s.brain)
            x = torch.from_numpy(normalise(s, scale)[box].copy())[None, None]
            # Background voxels are given by the mask, not learned: they are ignored by the loss.
            y = torch.from_numpy(np.where(s.brain, s.labels.astype(np.int64) - 1, -100)[box].copy())[None]
            examples.append((x.to(device), y.to(device)))
        with deterministic(), seeded(int(self.seed), device) as gen:
            model = self._new_network().to(device)
            model.train()
            optimiser = torch.optim.Adam(model.parameters(), lr=float(self.learning_rate))
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=int(self.steps))
            scaler = grad_scaler(device)
            order = torch.cat(
                [torch.randperm(len(examples), generator=gen) for _ in range(-(-int(self.steps) // len(examples)))]
            )
            flips = torch.rand(int(self.steps), generator=gen) < 0.5
            for step in progress_bar(range(int(self.steps)), desc="segmenter (target site)", unit="step"):
                x, y = examples[int(order[step])]
                if flips[step]:
                    x, y = x.flip(-3), y.flip(-3)  # axis 0 of the volume is left-right in the common space
                optimiser.zero_grad(set_to_none=True)
                with autocast(device):
                    logits = model(x)
                logits = logits.float()
                loss = F.cross_entropy(logits, y, ignore_index=-100) + soft_dice_loss(logits, y)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                schedule.step()
            log.info("segmentation: final training loss %.4f after %d steps", loss.item(), int(self.steps))
        model.eval()
        return model

    def _save(self, model: UNet3d, scale: float, path: Path) -> None:
        # a unique temporary name, renamed into place: two runs sharing a cache never write one file
        with atomic_path(path) as tmp:
            np.savez(tmp, **module_state(model, STATE_PREFIX), scale=np.array(scale, dtype=np.float64))

    def _load(self, path: Path) -> tuple[UNet3d, float] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
            scale = float(state.pop("scale"))
            model = load_module_state(self._new_network(), state, STATE_PREFIX)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("segmentation: ignoring the unreadable cached segmenter %s (%s); retraining", path, exc)
            return None
        model.eval()
        return model, scale

    # -- evaluation ------------------------------------------------------------
    def _prepared_model(self) -> UNet3d:
        model = getattr(self, "model_", None)
        if model is None:
            raise PluginError("segmentation: call prepare(train, target_site, cache_dir) before evaluating")
        return model

    def predict(self, scan: Scan) -> np.ndarray:
        """uint8 tissue labels of ``scan`` (0 outside its brain mask, 1 CSF, 2 GM, 3 WM)."""
        model = self._prepared_model()
        brain = scan.brain
        labels = np.zeros(scan.shape, dtype=np.uint8)
        if not brain.any():
            return labels
        box = brain_box(brain)
        x = torch.from_numpy(normalise(scan, self.scale_)[box].copy())[None, None].to(self.device_)
        with torch.no_grad(), autocast(self.device_):
            tissue = first_largest(model(x)[0].float()).cpu().numpy() + 1
        labels[box] = np.where(brain[box], tissue, 0)
        return labels

    def _overlap_of(self, scan: Scan, truth: np.ndarray) -> dict[str, float]:
        """`overlap_scores` of the segmenter's labels of ``scan`` against ``truth``, remembered by content: every
        harmonizer's cell of a scenario shares its inputs and rescans, a method that returns its input (identity)
        repeats them, and the segmenter is fixed once prepared."""
        self._prepared_model()
        key = f"{scan.key}:{array_digest(scan.data, scan.brain, truth)}"
        if key not in self._overlaps:
            self._overlaps[key] = overlap_scores(self.predict(scan), truth)
        return dict(self._overlaps[key])

    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        truth = case.input.labels
        if truth is None:
            raise DataError(
                f"segmentation: test scan {case.input.describe()} has no ground-truth tissue labels; "
                "the segmentation evaluator needs labelled test subjects"
            )
        if truth.shape != case.output.shape:
            raise DataError(
                f"segmentation: output for {case.input.describe()} has shape {case.output.shape} but the ground-truth "
                f"labels have {truth.shape}"
            )
        truth = np.asarray(truth)
        values = self._overlap_of(case.output, truth)
        values["dice_gap_closed"] = math.nan
        rescan = case.rescan
        if rescan is not None and rescan.labels is not None:
            dice_input = self._overlap_of(case.input, truth)["dice_mean"]
            gap = self._overlap_of(rescan, np.asarray(rescan.labels))["dice_mean"] - dice_input
            values["dice_gap_closed"] = gap_closed(values["dice_mean"], dice_input, gap)
        return values


def gap_closed(dice_output: float, dice_input: float, gap: float, floor: float = GAP_FLOOR) -> float:
    """``(dice_output − dice_input) / gap``; NaN when ``gap`` (rescan − input) is below ``floor`` or not finite."""
    if not (math.isfinite(gap) and math.isfinite(dice_output) and math.isfinite(dice_input)) or gap < floor:
        return math.nan
    return (dice_output - dice_input) / gap


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [SegmentationEvaluator]
