"""Site removal: can a classifier still tell which site a harmonized scan came from?

A cross-validated classifier predicts the *source* site (``case.input.site``) of each harmonized
test scan (``case.output``) of one (scenario, harmonizer) cell. Site classifiers of this kind are a
common check of harmonization (e.g. the ComBat and deep-harmonization literature reports
site-prediction accuracy before and after).

Metrics:

- ``site_bacc`` — the headline, the leaderboard's *site* axis: balanced accuracy (mean per-site
  recall) of the classifier, averaged over ``n_repeats`` repeats of grouped cross-validation. Lower is
  better; chance is ``1/k`` for ``k`` source sites, which is what a perfect harmonization reaches (every
  site's scan of a subject becomes the same image, so exactly one in ``k`` is guessed right). Values
  below chance are noise of a small cross-validation, not a better removal: read them as "at chance",
  together with ``site_perm_p``.
- ``site_perm_p`` (informational, one record per cell): the permutation-test p-value of ``site_bacc``
  against chance. The null hypothesis is that the images carry no site information beyond the
  subject: the site labels are shuffled *within each subject* (so every subject keeps one scan per
  site it has), the first repeat's cross-validation is rerun ``n_permutations`` times (default 50; the
  observed statistic is that repeat's too), and
  ``p = (1 + #{permuted ≥ observed}) / (1 + n_permutations)``. Small p: the site is still detectable.
- ``site_chance`` (informational): ``1/k``.

Records, so that the board can bootstrap over subjects: ``site_bacc`` has one record per scan, and
their mean is the headline. With ``N`` scans, ``k`` sites and ``n_c`` scans of site ``c``, scan ``i`` of
site ``c`` gets ``1{prediction correct} · N / (k · n_c)`` averaged over the repeats; the mean over scans
is ``(1/k) Σ_c (correct_c / n_c)`` averaged over the repeats, the balanced accuracy (when the sites are
balanced a scan's value is just its share of correct predictions across the repeats). A subject's
records therefore carry its share of correctly predicted scans, and resampling subjects resamples them
together. ``site_chance`` is ``1/k`` on every scan; ``site_perm_p`` is one cell-level record
(``subject = site = "*"``).

Known weakness — read ``site_bacc`` beside the anatomy metrics (``volume``, ``segmentation``,
``paired``): destroying the image also removes the site. A method that outputs the same blank volume
for every scan, or noise, scores chance here. A low ``site_bacc`` means "the site is hidden", not
"the scan is good".

Features (`site_features`), on the brain voxels of each output, in the scan's own intensity units — a
global gain (vendor gain, receive chain) is itself a site effect that harmonization has to remove, so
a method that leaves it in place must be caught — and also relative to the scan's brain median, so
that a method that only removes the gain is still caught by what it leaves:

- intensity: quantiles at ``n_quantiles`` evenly spaced levels from 1 % to 99 %, absolute and divided
  by the median (contrast, offsets, spread);
- texture: gradient magnitude (central differences, per voxel) on the brain eroded by one voxel (so the
  brain's edge does not count) at the 10/25/50/75/90 % quantiles, absolute and relative (blur and
  sharpness); local noise, the robust spread (1.4826 × median absolute deviation) of the residual
  from a 3×3×3 mean filter on the eroded brain, absolute and relative (noise level).

Each feature is standardised (zero mean, unit variance, fitted on the training fold only) so that no
single feature dominates; that rescales feature columns across scans, not images.

Classifier: L2-regularised multinomial logistic regression (``C``, lbfgs, deterministic). Folds are
grouped by subject (``case.input.subject``): every scan of a test subject is predicted by a model that
never saw that subject at any site, so the classifier cannot recognise anatomy (the traveling
subject's brain) instead of the site. Repeated grouped K-fold: in each of ``n_repeats`` repeats the
subjects are shuffled (seeded by ``seed``) and dealt into ``n_splits`` folds; with ``n_splits`` or fewer
subjects the folds are leave-one-subject-out, identical in every repeat, and run once. A training fold
that holds a single site predicts that site.

Needs at least two source sites and two subjects; fewer is an error that says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from joblib import delayed
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harmbench import hookimpl
from harmbench.api import EvalCase, Evaluator, MetricSpec, check_number
from harmbench.data.scan import Scan
from harmbench.errors import DataError
from harmbench.parallel import check_jobs, worker_pool

#: Lowest and highest quantile level of the intensity features.
QUANTILE_RANGE = (0.01, 0.99)
#: Quantile levels of the gradient-magnitude features.
GRADIENT_LEVELS = (0.10, 0.25, 0.50, 0.75, 0.90)
#: Normal-consistency factor of the median absolute deviation.
MAD_TO_SD = 1.4826


def intensity_features(scan: Scan, n_quantiles: int = 21) -> np.ndarray:
    """Brain-voxel intensity quantiles at ``n_quantiles`` evenly spaced levels in ``QUANTILE_RANGE``."""
    values = scan.brain_values()
    if values.size == 0:
        raise DataError(f"site_removal: {scan.describe()} has an empty brain mask")
    levels = np.linspace(*QUANTILE_RANGE, n_quantiles)
    return np.quantile(values, levels)


def texture_features(scan: Scan) -> np.ndarray:
    """Gradient-magnitude quantiles (``GRADIENT_LEVELS``) and the local-noise spread on the eroded brain."""
    data = np.asarray(scan.data, dtype=np.float64)
    brain = scan.brain
    inner = ndimage.binary_erosion(brain)
    if not inner.any():
        inner = brain
    residual = data - ndimage.uniform_filter(data, size=3, mode="nearest")
    r = residual[inner]
    noise = MAD_TO_SD * float(np.median(np.abs(r - np.median(r))))
    return np.concatenate([np.quantile(gradient_magnitude(data, inner), GRADIENT_LEVELS), [noise]])


def gradient_magnitude(data: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``|∇data|`` by central differences (``np.gradient``'s, unit spacing) at the voxels of ``where``, flat.

    Computed on the bounding box of ``where`` only, with ``np.gradient``'s formula and summation order, so the
    values are bit-identical to ``np.sqrt(sum(g * g for g in np.gradient(data)))[where]`` for less work; where
    the box reaches the volume's edge (one-sided differences there) the whole volume is differentiated.
    """
    idx = np.nonzero(where)
    if not idx[0].size:
        return np.empty(0, dtype=np.result_type(data.dtype, np.float64))
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    if any(a < 1 or b > n - 1 for a, b, n in zip(lo, hi, data.shape, strict=True)):
        return np.sqrt(sum(g * g for g in np.gradient(data)))[where]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    total: np.ndarray | int = 0
    for axis in range(data.ndim):
        after, before = list(box), list(box)
        after[axis] = slice(lo[axis] + 1, hi[axis] + 1)
        before[axis] = slice(lo[axis] - 1, hi[axis] - 1)
        after, before = tuple(after), tuple(before)
        g = (data[after] - data[before]) / 2.0
        total = total + g * g
    return np.sqrt(total)[where[box]]


def site_features(scan: Scan, n_quantiles: int = 21) -> np.ndarray:
    """Intensity and texture features, absolute and divided by the brain median (see the module docstring)."""
    absolute = np.concatenate([intensity_features(scan, n_quantiles), texture_features(scan)])
    median = float(np.median(scan.brain_values()))
    relative = absolute / median if median > 0 else np.zeros_like(absolute)
    return np.concatenate([absolute, relative])


def grouped_folds(subjects: Sequence[str], n_splits: int, n_repeats: int, seed: int) -> list[list[np.ndarray]]:
    """Test-index folds per repeat: subjects shuffled and dealt into ``n_splits`` folds; leave-one-subject-out
    (one repeat) when there are ``n_splits`` or fewer subjects."""
    groups = np.asarray(subjects, dtype=object)
    unique = list(dict.fromkeys(subjects))
    if len(unique) <= n_splits:
        return [[np.flatnonzero(groups == s) for s in unique]]
    rng = np.random.default_rng(seed)
    repeats = []
    for _ in range(n_repeats):
        order = rng.permutation(len(unique))
        fold_of = {unique[j]: i % n_splits for i, j in enumerate(order)}
        fold = np.array([fold_of[s] for s in subjects])
        repeats.append([np.flatnonzero(fold == f) for f in range(n_splits)])
    return repeats


def cross_validated_predictions(
    features: np.ndarray, sites: Sequence[str], folds: Sequence[np.ndarray], C: float = 1.0
) -> np.ndarray:
    """Out-of-fold site predictions for one set of test folds (the rest of the scans train each fold)."""
    y = np.asarray(sites, dtype=object)
    predicted = np.empty(len(y), dtype=object)
    everything = np.arange(len(y))
    for test_idx in folds:
        train_idx = np.setdiff1d(everything, test_idx)
        classes = np.unique(y[train_idx])
        if len(classes) == 1:
            predicted[test_idx] = classes[0]
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        model.fit(features[train_idx], y[train_idx])
        predicted[test_idx] = model.predict(features[test_idx])
    return predicted


def balanced_accuracy_shares(sites: Sequence[str], predicted: Sequence[str]) -> np.ndarray:
    """Per-scan ``1{correct} · N / (k · n_c)``: their mean is the balanced accuracy."""
    y = np.asarray(sites, dtype=object)
    correct = y == np.asarray(predicted, dtype=object)
    labels, counts = np.unique(y, return_counts=True)
    n_of = dict(zip(labels, counts, strict=True))
    n, k = len(y), len(labels)
    return np.array([float(c) * n / (k * n_of[s]) for s, c in zip(y, correct, strict=True)])


def repeated_shares(
    features: np.ndarray, sites: Sequence[str], repeats: Sequence[Sequence[np.ndarray]], C: float
) -> np.ndarray:
    """Per-scan balanced-accuracy shares averaged over the repeats (their mean: the repeated-CV balanced accuracy)."""
    return np.mean(
        [balanced_accuracy_shares(sites, cross_validated_predictions(features, sites, folds, C)) for folds in repeats],
        axis=0,
    )


def within_subject_permutation(sites: Sequence[str], subjects: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The site labels shuffled among each subject's own scans."""
    permuted = np.asarray(sites, dtype=object).copy()
    groups = np.asarray(subjects, dtype=object)
    for subject in dict.fromkeys(subjects):
        idx = np.flatnonzero(groups == subject)
        permuted[idx] = permuted[rng.permutation(idx)]
    return permuted.tolist()


class SiteRemovalEvaluator(Evaluator):
    """Balanced accuracy of a subject-grouped, repeated cross-validated site classifier on harmonized scans
    (lower is better; chance = a perfect harmonization), with a permutation p-value.

    Parameters: ``n_quantiles`` (intensity quantiles per scan, ≥ 2), ``C`` (inverse L2 strength of the
    logistic regression), ``n_splits`` (folds, ≥ 2), ``n_repeats`` (≥ 1), ``n_permutations`` (≥ 1),
    ``seed`` (fold shuffles and permutations) and ``n_jobs`` (worker processes for the features and the
    classifier fits, `harmbench.parallel.worker_pool`; None: the run's thread budget). The scores do not
    depend on ``n_jobs``: every fit and every feature is the same computation wherever it runs, and the
    results are gathered in order. Read beside anatomy metrics: see the module docstring.
    """

    name = "site_removal"
    version = "2.0"
    metrics = (
        MetricSpec(
            "site_bacc",
            higher_is_better=False,
            axis="site",
            description="balanced accuracy of a subject-grouped, repeated cross-validated classifier predicting the "
            "source site from intensity and texture features of the harmonized scan; chance = 1/k = perfect",
        ),
        MetricSpec(
            "site_perm_p",
            higher_is_better=None,
            ideal=None,
            main=False,
            description="permutation p-value of site_bacc against chance (site labels shuffled within subject)",
        ),
        MetricSpec(
            "site_chance",
            higher_is_better=None,
            ideal=None,
            description="chance level of site_bacc: 1 / number of source sites",
        ),
    )

    def __init__(
        self,
        n_quantiles: int = 21,
        C: float = 1.0,
        n_splits: int = 5,
        n_repeats: int = 5,
        n_permutations: int = 50,
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.n_quantiles = n_quantiles
        self.C = C
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.n_permutations = n_permutations
        self.seed = seed
        self.n_jobs = n_jobs

    def _validate(self) -> None:
        check_number(self.name, "n_quantiles", self.n_quantiles, integer=True, minimum=2)
        check_number(self.name, "C", self.C, strict=True)
        check_number(self.name, "n_splits", self.n_splits, integer=True, minimum=2)
        check_number(self.name, "n_repeats", self.n_repeats, integer=True, minimum=1)
        check_number(self.name, "n_permutations", self.n_permutations, integer=True, minimum=1)
        check_number(self.name, "seed", self.seed, integer=True, minimum=0)
        check_jobs(self.name, self.n_jobs)

    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        self._validate()
        sites = [case.input.site for case in cases]
        subjects = [case.input.subject for case in cases]
        distinct_sites = sorted(set(sites))
        if len(distinct_sites) < 2:
            raise DataError(
                f"site_removal: the cell's {len(cases)} scan(s) come from {len(distinct_sites)} source site(s) "
                f"({', '.join(distinct_sites) or 'none'}); predicting the site needs at least 2"
            )
        if len(set(subjects)) < 2:
            raise DataError(
                f"site_removal: the cell's scans come from {len(set(subjects))} subject(s); cross-validation "
                "grouped by subject needs at least 2"
            )
        C = float(self.C)
        # the labels stay behind: a worker gets only what the features read
        outputs = [dataclasses.replace(case.output, labels=None) for case in cases]
        features = np.stack(
            worker_pool(self.n_jobs, len(outputs))(
                delayed(site_features)(scan, int(self.n_quantiles)) for scan in outputs
            )
        )
        repeats = grouped_folds(subjects, int(self.n_splits), int(self.n_repeats), int(self.seed))
        # The permutation test uses the first repeat's folds only, for the observed and every permuted
        # labelling alike (so the statistic is the same function of the labels): the p-value stays valid
        # and costs n_splits fits per permutation instead of n_splits * n_repeats.
        rng = np.random.default_rng([int(self.seed), 1])
        permutations = [within_subject_permutation(sites, subjects, rng) for _ in range(int(self.n_permutations))]
        tasks = [(sites, folds) for folds in repeats] + [(permuted, repeats[0]) for permuted in permutations]
        all_shares = worker_pool(self.n_jobs, len(tasks))(
            delayed(repeated_shares)(features, labels, [folds], C) for labels, folds in tasks
        )
        per_repeat, permuted_shares = all_shares[: len(repeats)], all_shares[len(repeats) :]
        shares = np.mean(per_repeat, axis=0)
        observed_first = float(per_repeat[0].mean())
        # a tolerance so that a permutation equal to the observed labelling counts as reaching it
        exceed = sum(float(s.mean()) >= observed_first - 1e-12 for s in permuted_shares)
        p_value = (1.0 + exceed) / (1.0 + int(self.n_permutations))
        chance = 1.0 / len(distinct_sites)
        records: list[dict[str, Any]] = []
        for case, share in zip(cases, shares, strict=True):
            key = {"subject": case.input.subject, "site": case.input.site}
            records.append({**key, "metric": "site_bacc", "value": float(share)})
            records.append({**key, "metric": "site_chance", "value": float(chance)})
        records.append({"subject": "*", "site": "*", "metric": "site_perm_p", "value": float(p_value)})
        return records


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [SiteRemovalEvaluator]
