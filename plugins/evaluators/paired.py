"""Paired fidelity of BlindHarmony: PSNR and SSIM against the traveling subject's target-site scan.

References:
    Jeong H, Byun H, Kang DU, Lee J. BlindHarmony: "blind" harmonization for
    MR images via flow model. ICCV 2023 (arXiv:2305.10732) — the metrics' use.
    Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from
    error visibility to structural similarity. IEEE TIP 13(4):600–612, 2004 — SSIM.

Intensity convention — BlindHarmony's: every image is normalised on its own. The prediction is
divided by the 99th percentile of *its own* brain voxels, the target by the 99th percentile of *its
own*, and each is clipped to ``[0, 1]``; the data range is therefore ``L = 1``. (BlindHarmony normalises
each image to ``[0, 1]`` on its own; the 99th brain percentile instead of the maximum keeps a few
bright voxels from setting the scale.) A global gain therefore changes neither metric: PSNR and SSIM
score contrast, noise, blur and bias — what is left after a per-image rescale — while the intensity
scale itself is scored by ``wasserstein`` (``nwd_tp``). A pure gain scores exactly what identity scores.

Reference scan: the same subject's scan at the target site (the traveling subject's ``case.target``).
The ceiling on real data is the subject's target-site *rescan* scored against that target scan (the
leaderboard's ceiling row): two scans of one brain on one scanner differ by noise and position.

Region: the union of the prediction's and the target's brain masks, so that missing or invented brain at
the boundary counts.

- ``psnr = 10 log10(L² / max(MSE, MSE_FLOOR))`` over the region, in dB. ``MSE_FLOOR = (1/4096)²`` is
  one grey level of a 12-bit image (MR magnitude images are stored with 12 bits; BlindHarmony
  dequantises its inputs at that depth): differences below it are not measurable, so an exact copy
  reads ``PSNR_MAX_DB = 20 log10(4096) ≈ 72.2 dB`` — a finite value that a mean can hold, not a
  ceiling any real scan reaches (a same-site rescan is far below it).
- ``ssim``: the Wang et al. (2004) index with a 3-D Gaussian window (σ = 1.5
  voxels, truncated at 3.5 σ, population statistics), ``K1 = 0.01``,
  ``K2 = 0.03``, computed over the whole volume and averaged over the region.
  ``SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``,
  ``C1 = (K1 L)²``, ``C2 = (K2 L)²``. The metric of the leaderboard's *fidelity* axis.

An image whose brain 99th percentile is not positive (a blank output) is left unscaled (then clipped):
it scores what it looks like. Both are NaN when the case has no target (no traveling-subject scan).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from joblib import delayed
from scipy.ndimage import gaussian_filter

from harmbench import hookimpl
from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator
from harmbench.data.scan import Scan, array_digest
from harmbench.errors import DataError
from harmbench.parallel import check_jobs, effective_jobs, worker_pool

SCALE_PERCENTILE = 99.0
SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03


#: Smallest mean squared error PSNR resolves: one grey level of a 12-bit image, squared (see the module docstring).
MSE_FLOOR = (1.0 / 4096.0) ** 2
#: PSNR of identical images, ``10 log10(1 / MSE_FLOOR)`` ≈ 72.2 dB; an infinite value would poison every mean.
PSNR_MAX_DB = 10.0 * math.log10(1.0 / MSE_FLOOR)


def normalise(data: np.ndarray, scale: float) -> np.ndarray:
    """``data / scale`` clipped to ``[0, 1]`` (float64)."""
    return np.clip(np.asarray(data, dtype=np.float64) / scale, 0.0, 1.0)


def own_scale(data: np.ndarray, brain: np.ndarray) -> float:
    """The image's own brain 99th percentile; 1 where it is not positive (a blank image stays unscaled)."""
    values = np.asarray(data)[brain]
    scale = float(np.percentile(values, SCALE_PERCENTILE)) if values.size else 0.0
    return scale if math.isfinite(scale) and scale > 0.0 else 1.0


def psnr(x: np.ndarray, y: np.ndarray, region: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio over ``region`` in dB; the MSE is floored at ``MSE_FLOOR · data_range²``."""
    mse = float(np.mean((x[region] - y[region]) ** 2))
    return 10.0 * math.log10(data_range**2 / max(mse, MSE_FLOOR * data_range**2))


def _blur(a: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    return gaussian_filter(a, sigma=sigma, truncate=TRUNCATE, mode="reflect")


def local_moments(a: np.ndarray, sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-window mean and (population) variance of ``a`` at every voxel."""
    mean = _blur(a, sigma)
    return mean, _blur(a * a, sigma) - mean * mean


def _ssim_from_moments(
    x: np.ndarray,
    x_moments: tuple[np.ndarray, np.ndarray],
    y: np.ndarray,
    y_moments: tuple[np.ndarray, np.ndarray],
    data_range: float = 1.0,
    sigma: float = SIGMA,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """The SSIM map from both images' local moments; only at ``region``'s voxels (flat) when it is given."""
    (mx, vx), (my, vy) = x_moments, y_moments
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    cxy = _blur(x * y, sigma) - mx * my
    if region is not None:
        # the formula is voxel-wise: the same values, for the voxels that are averaged
        mx, vx, my, vy, cxy = mx[region], vx[region], my[region], vy[region], cxy[region]
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = 1.0, sigma: float = SIGMA) -> np.ndarray:
    """Voxel-wise SSIM (Wang et al. 2004) with a Gaussian window of ``sigma`` voxels in every axis."""
    return _ssim_from_moments(x, local_moments(x, sigma), y, local_moments(y, sigma), data_range, sigma)


def ssim(x: np.ndarray, y: np.ndarray, region: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over ``region``."""
    return float(np.mean(ssim_map(x, y, data_range)[region]))


class PairedEvaluator(PerScanEvaluator):
    """BlindHarmony's paired PSNR / SSIM against the same subject's target-site scan (Jeong et al., ICCV 2023).

    Parameter: ``n_jobs``, worker processes for the cases, grouped by target scan
    (`harmbench.parallel.worker_pool`; None: the run's thread budget); the scores do not depend on it.
    """

    name = "paired"
    version = "2.0"
    metrics = (
        MetricSpec(
            "psnr",
            higher_is_better=True,
            unit="dB",
            ideal=None,
            description="PSNR vs the same subject's target-site scan; each image / its own brain p99, clipped [0,1]; "
            "brain union; exact copy = 72.2 dB (12-bit MSE floor)",
        ),
        MetricSpec(
            "ssim",
            higher_is_better=True,
            ideal=1.0,
            description="3-D Gaussian-window SSIM (σ=1.5 voxels) vs the same subject's target-site scan; each image / "
            "its own brain p99, clipped [0,1]; mean over the brain union",
            axis="fidelity",
        ),
    )

    def __init__(self, n_jobs: int | None = None) -> None:
        self.n_jobs = n_jobs

    def _validate(self) -> None:
        check_jobs(self.name, self.n_jobs)

    def _target_side(self, target: Scan) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The target normalised, with its local moments; remembered by content, since every harmonizer's
        cell of a scenario scores against the same target scans (about 7 MB per target, float64)."""
        memo: dict[str, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = self.__dict__.setdefault("_targets", {})
        key = array_digest(target.data, target.brain)
        if key not in memo:
            memo[key] = _target_side(target.data, target.brain)
        return memo[key]

    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        self._validate()
        for case in cases:
            _check_shapes(case)
        # With worker processes, the cases go out in groups that share a target scan: each worker works out its
        # target's side once per group (in-process the memo of `_target_side` keeps it for the whole run).
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(cases):
            if case.target is not None:
                groups.setdefault(array_digest(case.target.data, case.target.brain), []).append(i)
        if effective_jobs(self.n_jobs, len(groups)) == 1:
            return super().evaluate(cases)
        members = list(groups.values())
        scored = worker_pool(self.n_jobs, len(members))(
            delayed(_score_against)(
                cases[idx[0]].target.data,
                cases[idx[0]].target.brain,
                [(cases[i].output.data, cases[i].output.brain) for i in idx],
            )
            for idx in members
        )
        values: list[dict[str, float]] = [{"psnr": math.nan, "ssim": math.nan} for _ in cases]
        for idx, group in zip(members, scored, strict=True):
            for i, v in zip(idx, group, strict=True):
                values[i] = v
        return [
            {"subject": case.input.subject, "site": case.input.site, "metric": spec.name, "value": float(v[spec.name])}
            for case, v in zip(cases, values, strict=True)
            for spec in self.metrics
        ]

    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        target, pred = case.target, case.output
        if target is None:
            return {"psnr": math.nan, "ssim": math.nan}
        _check_shapes(case)
        y, y_moments = self._target_side(target)
        return _scores(pred.data, pred.brain, target.brain, y, y_moments)


def _check_shapes(case: EvalCase) -> None:
    target, pred = case.target, case.output
    if target is not None and target.shape != pred.shape:
        raise DataError(
            f"paired: prediction for {case.input.describe()} has shape {pred.shape} but its target "
            f"{target.describe()} has {target.shape}; paired metrics need co-registered scans"
        )


def _target_side(data: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    y = normalise(data, own_scale(data, brain))
    return y, local_moments(y)


def _scores(
    pred: np.ndarray,
    pred_brain: np.ndarray,
    target_brain: np.ndarray,
    y: np.ndarray,
    y_moments: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    """PSNR and SSIM of one prediction against a target's normalised image ``y`` and its local moments."""
    region = pred_brain | target_brain
    x = normalise(pred, own_scale(pred, pred_brain))
    similarity = _ssim_from_moments(x, local_moments(x), y, y_moments, region=region)
    return {"psnr": psnr(x, y, region), "ssim": float(np.mean(similarity))}


def _score_against(
    target: np.ndarray, target_brain: np.ndarray, predictions: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[dict[str, float]]:
    """`_scores` of each (data, brain) prediction against one target scan (a worker's task)."""
    y, y_moments = _target_side(target, target_brain)
    return [_scores(data, brain, target_brain, y, y_moments) for data, brain in predictions]


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [PairedEvaluator]
