"""A fixed, deterministic 3-class tissue segmenter for T1w brain scans (CSF < GM < WM).

A 1-D Gaussian mixture on brain-voxel intensities, fitted per image by EM,
in the spirit of FSL FAST's intensity model (Zhang, Brady & Smith, IEEE TMI
20(1):45–57, 2001) without its Markov random field or bias correction.
Because the mixture is refitted to every image it adapts to the image's own
intensity scale: any increasing affine intensity change leaves the labels
unchanged, so volumes measured with it reflect anatomy, not intensity scale.

Determinism and fixed cost: EM runs on a histogram of ``BINS`` bins spanning
the 0.5th–99.5th brain percentiles (voxels outside fall in the end bins),
initialised with means at the 2nd / 35th / 80th percentiles (CSF is a
small, dark fraction of a T1w brain; GM the largest), a common standard
deviation of a sixth of their span and equal weights, for exactly
``ITERATIONS`` iterations. The mixture is an imperfect model of partial
volume and bias field, so EM run to convergence drifts away from the tissue
classes; the fixed, early stop is part of the segmenter's definition. On
harmbench-sim it agrees with the ground-truth labels on ~75–87 % of brain
voxels (2–8 mm), which is what the ``_gt`` metrics of the volume evaluator
have as their floor. Each voxel then gets the component of largest
posterior; components are ordered by mean, so label 1 = CSF, 2 = GM, 3 = WM.
"""

from __future__ import annotations

import numpy as np

BINS = 256
ITERATIONS = 100
INIT_PERCENTILES = (2.0, 35.0, 80.0)


def fit_mixture(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means, standard deviations and weights (each shape ``(3,)``, means ascending) of a 3-class GMM."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    if not hi > lo:
        hi = lo + 1.0
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=BINS, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    w = counts / counts.sum()
    width = edges[1] - edges[0]
    # A floor on the variance stops a component collapsing onto one bin.
    var_floor = width**2
    means = np.percentile(values, INIT_PERCENTILES)
    sd0 = max((means[-1] - means[0]) / 6.0, width)
    var = np.full(3, sd0**2)
    weights = np.full(3, 1.0 / 3.0)
    for _ in range(ITERATIONS):
        resp = _responsibilities(x, means, var, weights)
        nk = (w[:, None] * resp).sum(axis=0) + 1e-12
        weights = nk / nk.sum()
        means = (w[:, None] * resp * x[:, None]).sum(axis=0) / nk
        var = np.maximum((w[:, None] * resp * (x[:, None] - means) ** 2).sum(axis=0) / nk, var_floor)
    order = np.argsort(means)
    return means[order], np.sqrt(var[order]), weights[order]


def _log_joint(x: np.ndarray, means: np.ndarray, var: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.log(weights + 1e-300) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x[:, None] - means) ** 2 / var


def _responsibilities(x: np.ndarray, means: np.ndarray, var: np.ndarray, weights: np.ndarray) -> np.ndarray:
    logp = _log_joint(x, means, var, weights)
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def brain_labels(values: np.ndarray) -> np.ndarray:
    """uint8 labels (1 CSF, 2 GM, 3 WM) of the brain's intensities ``data[brain]`` from their own mixture."""
    values = np.asarray(values).astype(np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    means, sds, weights = fit_mixture(values)
    return (np.argmax(_log_joint(values, means, sds**2, weights), axis=1) + 1).astype(np.uint8)


def segment(data: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """uint8 labels (0 outside ``brain``, 1 CSF, 2 GM, 3 WM) from the per-image mixture."""
    labels = np.zeros(data.shape, dtype=np.uint8)
    labels[brain] = brain_labels(data[brain])
    return labels


def brain_volumes(values: np.ndarray) -> dict[int, int]:
    """``tissue_volumes(segment(data, brain))`` from the brain's intensities ``data[brain]`` alone: the same
    labels, counted without the volume around them."""
    return tissue_volumes(brain_labels(values))


def tissue_volumes(labels: np.ndarray) -> dict[int, int]:
    """Voxel counts of labels 1, 2, 3."""
    counts = np.bincount(labels.ravel(), minlength=4)
    return {k: int(counts[k]) for k in (1, 2, 3)}
