"""Paired fidelity of BlindHarmony: PSNR and SSIM against the traveling subject's target-site scan.

References:
    Jeong H, Byun H, Kang DU, Lee J. BlindHarmony: "blind" harmonization for
    MR images via flow model. ICCV 2023 (arXiv:2305.10732) — the metrics' use.
    Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from
    error visibility to structural similarity. IEEE TIP 13(4):600–612, 2004 — SSIM.

Intensity convention (one, for every method): both the prediction and the
target are divided by the 99th percentile of the *target's* brain voxels and
clipped to ``[0, 1]``; the data range is therefore ``L = 1``. Dividing by the
target's scale (never the prediction's) means a method is not rewarded for
rescaling its own output; the 99th percentile rather than the maximum keeps a
few bright voxels from deciding the scale.

Region: the union of the prediction's and the target's brain masks, so that
missing or invented brain at the boundary counts.

- ``psnr = 10 log10(L² / MSE)`` over the region, in dB
  (capped at ``PSNR_MAX_DB`` = 100 dB so that a perfect prediction still counts in a mean).
- ``ssim``: the Wang et al. (2004) index with a 3-D Gaussian window (σ = 1.5
  voxels, truncated at 3.5 σ, population statistics), ``K1 = 0.01``,
  ``K2 = 0.03``, computed over the whole volume and averaged over the region.
  ``SSIM = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``,
  ``C1 = (K1 L)²``, ``C2 = (K2 L)²``.

Both are NaN when the case has no target (no traveling-subject scan).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from harmbench import hookimpl
from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator
from harmbench.errors import DataError

SCALE_PERCENTILE = 99.0
SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03


#: PSNR of identical images; an infinite value would drop out of (or poison) every mean.
PSNR_MAX_DB = 100.0


def normalise(data: np.ndarray, scale: float) -> np.ndarray:
    """``data / scale`` clipped to ``[0, 1]`` (float64)."""
    return np.clip(np.asarray(data, dtype=np.float64) / scale, 0.0, 1.0)


def psnr(x: np.ndarray, y: np.ndarray, region: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio over ``region`` in dB, at most ``PSNR_MAX_DB`` (identical images)."""
    mse = float(np.mean((x[region] - y[region]) ** 2))
    if mse == 0.0:
        return PSNR_MAX_DB
    return min(PSNR_MAX_DB, 10.0 * math.log10(data_range**2 / mse))


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = 1.0, sigma: float = SIGMA) -> np.ndarray:
    """Voxel-wise SSIM (Wang et al. 2004) with a Gaussian window of ``sigma`` voxels in every axis."""

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, truncate=TRUNCATE, mode="reflect")

    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(x: np.ndarray, y: np.ndarray, region: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over ``region``."""
    return float(np.mean(ssim_map(x, y, data_range)[region]))


class PairedEvaluator(PerScanEvaluator):
    """BlindHarmony's paired PSNR / SSIM against the same subject's target-site scan (Jeong et al., ICCV 2023)."""

    name = "paired"
    version = "1.0"
    metrics = (
        MetricSpec(
            "psnr",
            higher_is_better=True,
            unit="dB",
            ideal=None,
            description="PSNR vs the traveling subject's target scan; both / target p99, clipped [0,1]; brain union",
        ),
        MetricSpec(
            "ssim",
            higher_is_better=True,
            ideal=1.0,
            description="3-D Gaussian-window SSIM (σ=1.5 voxels) vs the target scan, mean over the brain union",
        ),
    )

    def __init__(self) -> None:
        pass

    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        target, pred = case.target, case.output
        if target is None:
            return {"psnr": math.nan, "ssim": math.nan}
        if target.shape != pred.shape:
            raise DataError(
                f"paired: prediction for {case.input.describe()} has shape {pred.shape} but its target "
                f"{target.describe()} has {target.shape}; paired metrics need co-registered scans"
            )
        target_brain = target.brain_values()
        scale = float(np.percentile(target_brain, SCALE_PERCENTILE)) if target_brain.size else 0.0
        if not math.isfinite(scale) or scale <= 0.0:
            return {"psnr": math.nan, "ssim": math.nan}
        region = pred.brain | target.brain
        x = normalise(pred.data, scale)
        y = normalise(target.data, scale)
        return {"psnr": psnr(x, y, region), "ssim": ssim(x, y, region)}


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [PairedEvaluator]
