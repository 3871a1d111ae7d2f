"""Site removal: can a classifier still tell which site a harmonized scan came from?

A cross-validated classifier predicts the *source* site (``case.input.site``) of each harmonized
test scan (``case.output``) of one (scenario, harmonizer) cell; its balanced accuracy is
``site_bacc`` (lower is better). Chance is ``1/k`` for ``k`` source sites, reported beside it as
``site_chance`` (informational, never ranked). Site classifiers of this kind are a common check of
harmonization (e.g. the ComBat and deep-harmonization literature reports site-prediction accuracy
before and after).

Known weakness — read ``site_bacc`` beside the anatomy metrics (``volume``, ``segmentation``,
``paired``): destroying the image also removes the site. A method that outputs the same blank volume
for every scan, or noise, scores chance here. A low ``site_bacc`` means "the site is hidden", not
"the scan is good".

Features: the brain-voxel intensity quantiles of each scan at ``n_quantiles`` evenly spaced levels
from 1 % to 99 % (default 21 levels), in the scan's own intensity units. No per-image normalisation:
a global gain (vendor gain, receive chain) is itself a site effect that harmonization has to remove,
so a method that leaves it in place must be caught. Quantiles describe the whole intensity
distribution (contrast, offsets, spread), which is where a site's sequence and field strength show
in a skull-stripped T1w scan, and are robust to a few extreme voxels. Each feature is then
standardised (zero mean, unit variance, fitted on the training fold only) so that no single bright
quantile dominates the classifier; that rescales feature columns across scans, not images.

Classifier: L2-regularised multinomial logistic regression (``C`` parameter, lbfgs, deterministic),
cross-validated with leave-one-subject-out folds (``LeaveOneGroupOut`` grouped by
``case.input.subject``): every scan of a test subject is predicted by a model that never saw that
subject at any site, so the classifier cannot recognise anatomy (the traveling subject's
brain) instead of the site. A training fold that holds a single site predicts that site.

Records, and why they are per scan: with ``N`` scans, ``k`` sites and ``n_c`` scans of site ``c``,
the scan ``i`` of site ``c`` gets ``value = 1{prediction correct} · N / (k · n_c)``. Their mean is
``(1/k) Σ_c (correct_c / n_c)``, exactly the balanced accuracy (the mean per-site recall); when the
sites are balanced the value is just ``1{correct}``. Per-scan records let the leaderboard put a
bootstrap interval on ``site_bacc``. ``site_chance`` is ``1/k`` on every scan.

Needs at least two source sites and two subjects (cross-validation by subject); fewer is an error
that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harmbench import hookimpl
from harmbench.api import EvalCase, Evaluator, MetricSpec, check_number
from harmbench.data.scan import Scan
from harmbench.errors import DataError

#: Lowest and highest quantile level of the features.
QUANTILE_RANGE = (0.01, 0.99)


def intensity_features(scan: Scan, n_quantiles: int = 21) -> np.ndarray:
    """Brain-voxel intensity quantiles at ``n_quantiles`` evenly spaced levels in ``QUANTILE_RANGE``."""
    values = scan.brain_values()
    if values.size == 0:
        raise DataError(f"site_removal: {scan.describe()} has an empty brain mask")
    levels = np.linspace(*QUANTILE_RANGE, n_quantiles)
    return np.quantile(values, levels)


def cross_validated_predictions(
    features: np.ndarray, sites: Sequence[str], subjects: Sequence[str], C: float = 1.0
) -> np.ndarray:
    """Out-of-fold site predictions with leave-one-subject-out folds (see the module docstring)."""
    y = np.asarray(sites, dtype=object)
    groups = np.asarray(subjects, dtype=object)
    predicted = np.empty(len(y), dtype=object)
    for train_idx, test_idx in LeaveOneGroupOut().split(features, y, groups):
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


class SiteRemovalEvaluator(Evaluator):
    """Balanced accuracy of a leave-one-subject-out site classifier on harmonized scans (lower is better).

    Parameters: ``n_quantiles`` (intensity-quantile features per scan, ≥ 2) and ``C`` (inverse L2
    strength of the logistic regression). Read beside anatomy metrics: see the module docstring.
    """

    name = "site_removal"
    version = "1.0"
    metrics = (
        MetricSpec(
            "site_bacc",
            higher_is_better=False,
            description="balanced accuracy of a leave-one-subject-out classifier predicting the source site "
            "from brain intensity quantiles of the harmonized scan; chance = 1/k",
        ),
        MetricSpec(
            "site_chance",
            higher_is_better=None,
            ideal=None,
            description="chance level of site_bacc: 1 / number of source sites",
        ),
    )

    def __init__(self, n_quantiles: int = 21, C: float = 1.0) -> None:
        self.n_quantiles = n_quantiles
        self.C = C

    def _validate(self) -> None:
        check_number(self.name, "n_quantiles", self.n_quantiles, integer=True, minimum=2)
        check_number(self.name, "C", self.C, strict=True)

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
        features = np.stack([intensity_features(case.output, int(self.n_quantiles)) for case in cases])
        predicted = cross_validated_predictions(features, sites, subjects, float(self.C))
        shares = balanced_accuracy_shares(sites, predicted)
        chance = 1.0 / len(distinct_sites)
        records = []
        for case, share in zip(cases, shares, strict=True):
            key = {"subject": case.input.subject, "site": case.input.site}
            records.append({**key, "metric": "site_bacc", "value": float(share)})
            records.append({**key, "metric": "site_chance", "value": float(chance)})
        return records


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [SiteRemovalEvaluator]
