"""Intensity-distribution metrics of HAIL: normalised 1-D Wasserstein distances.

Reference:
    Parida A, Jiang Z, Anwar SM, Foreman N, Stence N, Fisher MJ, Packer RJ,
    Avery RA, Linguraru MG. Harmonization across imaging locations (HAIL):
    one-shot learning for brain MRI. arXiv:2308.11047, 2023.

On brain voxels, ``W1(a, b)`` is the 1-D Wasserstein-1 (earth mover's)
distance between the two intensity distributions,
``W1 = ∫ |F_a(x) − F_b(x)| dx = ∫_0^1 |F_a⁻¹(q) − F_b⁻¹(q)| dq``. With ``i`` the
input, ``p`` the prediction and ``t`` the target:

- ``nwd_tp = W1(t, p) / W1(i, t)``: what is left of the site gap; ideal 0,
  identity gives 1. The metric of the leaderboard's *intensity* axis.
- ``nwd_ip = W1(i, p) / W1(i, t)``: how far the method moved the scan, relative
  to how far it had to go (HAIL's figure; 1 = moved exactly the site gap).
  Informational, never ranked: by the triangle inequality
  ``|nwd_ip − 1| ≤ nwd_tp``, so it is bounded by ``nwd_tp`` and ranking both
  would count the same thing twice.
- ``w1_target = W1(t, p)`` in intensity units; ideal 0.

The target is the same subject's scan at the target site when present
(traveling subject), else the pooled brain voxels of the target site's
training scans. When ``W1(i, t) = 0`` the normalised metrics are NaN.
"""

from __future__ import annotations

import math

import numpy as np

from harmbench import hookimpl
from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator
from harmbench.data.scan import Scan, array_digest


def wasserstein_1d(u: np.ndarray, v: np.ndarray, *, sorted_: bool = False) -> float:
    """Exact W1 between the empirical distributions of samples ``u`` and ``v`` (equal weights).

    Equals ``scipy.stats.wasserstein_distance(u, v)``. For equal sample sizes
    it is the mean absolute difference of the sorted samples (quantile
    coupling), which avoids scipy's merge of both samples.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    if u.size == 0 or v.size == 0:
        return math.nan
    if not sorted_:
        u, v = np.sort(u), np.sort(v)
    if u.size == v.size:
        return float(np.mean(np.abs(u - v)))
    points = np.concatenate([u, v])
    points.sort(kind="mergesort")
    cdf_u = np.searchsorted(u, points[:-1], side="right") / u.size
    cdf_v = np.searchsorted(v, points[:-1], side="right") / v.size
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(points)))


def _ratio(num: float, den: float) -> float:
    if not math.isfinite(den) or den <= 0.0:
        return math.nan
    return num / den


class WassersteinEvaluator(PerScanEvaluator):
    """HAIL's nWD(i,p), nWD(t,p) and W1(t,p) on brain voxels (Parida et al., arXiv 2308.11047)."""

    name = "wasserstein"
    version = "2.0"
    metrics = (
        MetricSpec(
            "nwd_ip",
            higher_is_better=None,
            ideal=None,
            main=False,
            description="W1(input, prediction) / W1(input, target) on brain voxels; 1 = moved exactly the site gap "
            "(informational: |nwd_ip - 1| <= nwd_tp)",
        ),
        MetricSpec(
            "nwd_tp",
            higher_is_better=False,
            ideal=0.0,
            description="W1(target, prediction) / W1(input, target) on brain voxels; identity = 1, perfect = 0",
            axis="intensity",
        ),
        MetricSpec(
            "w1_target",
            higher_is_better=False,
            unit="a.u.",
            ideal=0.0,
            main=False,
            description="W1(target, prediction) on brain voxels, in target intensity units",
        ),
    )

    def __init__(self) -> None:
        pass

    def _sorted(self, *scans: Scan) -> np.ndarray:
        """The scans' brain voxels, pooled and sorted; remembered by content, since every harmonizer's cell of a
        scenario shares its inputs and targets (about 0.6 MB per scan at the default profile)."""
        key = array_digest(*(a for s in scans for a in (s.data, s.brain)))
        memo: dict[str, np.ndarray] = self.__dict__.setdefault("_sorted_values", {})
        if key not in memo:
            memo[key] = np.sort(np.concatenate([s.brain_values() for s in scans]))
        return memo[key]

    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        if case.target is not None:
            target = self._sorted(case.target)
        elif case.target_pool:
            target = self._sorted(*case.target_pool)
        else:
            return {spec.name: math.nan for spec in self.metrics}
        inp = self._sorted(case.input)
        pred = np.sort(case.output.brain_values())
        w_it = wasserstein_1d(inp, target, sorted_=True)
        w_ip = wasserstein_1d(inp, pred, sorted_=True)
        w_tp = wasserstein_1d(target, pred, sorted_=True)
        return {"nwd_ip": _ratio(w_ip, w_it), "nwd_tp": _ratio(w_tp, w_it), "w1_target": w_tp}


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [WassersteinEvaluator]
