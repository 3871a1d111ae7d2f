"""Paired statistics over subjects: the leaderboard's intervals, tests and significance ranks.

The unit of resampling is the **subject**: a test subject's scans (one per source site, and one per
training seed of a stochastic method) are averaged into one value per subject first, so they move
together in every resample and a subject scanned at three sites does not count as three independent
observations. Everything here is a pure function of those per-subject values and an integer seed:

- every generator is seeded by :func:`seed_for` — the first 8 bytes (big-endian) of the SHA-256 of
  the JSON list ``[seed, scenario, metric, kind, subject_1, …, subject_n]`` (``kind`` is ``"mean"`` for
  intervals, differences and ranks, ``"sign-flip"`` for the permutation test's random patterns; the
  subjects are the sorted subjects resampled; an axis uses ``"axis:<name>"`` as its metric) — so an
  interval depends only on the values it summarises, never on other cells, on row order, or on
  Python's salted ``hash``;
- a method's interval and its differences against other methods over the same subjects draw the same
  resamples (the seed names the subjects, not the methods), which makes every comparison paired;
- a subject without a finite value for one side of a comparison is dropped from both sides.

See docs/statistics.md for the definitions and the reasons behind them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "Comparison",
    "bootstrap_mean_ci",
    "compare",
    "holm",
    "round_sig",
    "seed_for",
    "sign_flip_p",
    "significance_ranks",
    "subject_values",
]

#: Bootstrap resamples per interval.
BOOTSTRAP_RESAMPLES = 1000
#: Up to this many paired subjects the sign-flip test enumerates all 2**n sign patterns (exact p-value).
EXACT_SIGN_FLIP_MAX = 16
#: Random sign patterns drawn above `EXACT_SIGN_FLIP_MAX` subjects.
SIGN_FLIP_DRAWS = 20000
_SIG_DIGITS = 6


def round_sig(x: float, digits: int = _SIG_DIGITS) -> float:
    """Round to ``digits`` significant digits; NaN/inf pass through; ``-0.0`` becomes ``0.0``.

    Going through the decimal string makes the result independent of summation-order noise in the
    last bits, so two equal figures compare equal and print the same.
    """
    x = float(x)
    if not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}") + 0.0


def seed_for(seed: int, *keys: str) -> int:
    """A 64-bit generator seed: the first 8 bytes (big-endian) of SHA-256 of ``json.dumps([seed, *keys])``."""
    blob = json.dumps([int(seed), *map(str, keys)], ensure_ascii=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = BOOTSTRAP_RESAMPLES) -> tuple:
    """95 % percentile bootstrap interval of the mean of ``values`` (one value per subject).

    One value, or ``n_boot <= 0``, collapses the interval onto the value: there is nothing to resample,
    and inventing spread would be worse than showing none.
    """
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return math.nan, math.nan
    if n == 1 or n_boot <= 0:
        m = float(values.mean())
        return m, m
    idx = rng.integers(0, n, size=(n_boot, n))
    means = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def sign_flip_p(diffs: np.ndarray, rng: np.random.Generator | None = None) -> float:
    """Two-sided p-value of a paired sign-flip permutation test of ``mean(diffs) == 0``.

    Under the null each subject's difference is as likely to have either sign. Up to
    `EXACT_SIGN_FLIP_MAX` subjects every sign pattern is enumerated, so the p-value is exact (with
    n subjects it cannot go below 2 / 2**n: four subjects never reach p < 0.125, which is a property
    of the data, not of the test); above, `SIGN_FLIP_DRAWS` random patterns from ``rng`` give
    ``(1 + hits) / (1 + draws)``.
    """
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if observed == 0.0:
        return 1.0
    # relative slack so a pattern that equals the observed statistic up to rounding counts as a hit
    threshold = observed * (1.0 - 1e-9)
    if n <= EXACT_SIGN_FLIP_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        stats = np.abs(signs @ d) / n
        return float((stats >= threshold).mean())
    if rng is None:
        raise ValueError("sign_flip_p needs a generator above EXACT_SIGN_FLIP_MAX subjects")
    signs = rng.choice(np.array([1.0, -1.0]), size=(SIGN_FLIP_DRAWS, n))
    stats = np.abs(signs @ d) / n
    return float((1 + (stats >= threshold).sum()) / (1 + SIGN_FLIP_DRAWS))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    running = 0.0
    for k, i in enumerate(finite[np.argsort(p[finite], kind="mergesort")]):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return [float(x) for x in out]


@dataclass(frozen=True)
class Comparison:
    """``a − b`` over the subjects both have a finite value for."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def _as_dict(values: Mapping[str, float] | pd.Series) -> dict[str, float]:
    items = values.items()
    return {str(k): float(v) for k, v in items}


def _paired(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[np.ndarray, list[str]]:
    a, b = _as_dict(a), _as_dict(b)
    subjects = sorted(str(k) for k in set(a) & set(b) if math.isfinite(a[k]) and math.isfinite(b[k]))
    return np.array([a[k] - b[k] for k in subjects], dtype=float), subjects


def compare(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    seed: int,
    scenario: str,
    metric: str,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    test: bool = True,
) -> Comparison:
    """Paired difference ``a − b`` of two methods' per-subject values (subject → value mappings or Series).

    The interval is the subject bootstrap of the mean difference with the generator of
    ``seed_for(seed, scenario, metric, "mean", *subjects)`` (the draws a method's own interval over
    the same subjects uses); the p-value is :func:`sign_flip_p` (skipped when ``test`` is False).
    """
    d, subjects = _paired(a, b)
    if d.size == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed_for(seed, scenario, metric, "mean", *subjects))
    low, high = bootstrap_mean_ci(d, rng, n_boot)
    p = math.nan
    if test:
        p = sign_flip_p(d, np.random.default_rng(seed_for(seed, scenario, metric, "sign-flip", *subjects)))
    return Comparison(float(d.mean()), low, high, p, int(d.size))


def mean_ci(
    values: Mapping[str, float], *, seed: int, scenario: str, metric: str, n_boot: int = BOOTSTRAP_RESAMPLES
) -> tuple:
    """Mean over subjects and its subject-bootstrap interval (generator as in :func:`compare`)."""
    values = _as_dict(values)
    subjects = sorted(k for k, v in values.items() if math.isfinite(v))
    if not subjects:
        return math.nan, math.nan, math.nan
    v = np.array([values[k] for k in subjects], dtype=float)
    rng = np.random.default_rng(seed_for(seed, scenario, metric, "mean", *subjects))
    low, high = bootstrap_mean_ci(v, rng, n_boot)
    return float(v.mean()), low, high


def significance_ranks(
    losses: Mapping[str, Mapping[str, float]],
    *,
    seed: int,
    scenario: str,
    metric: str,
    n_boot: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, float]:
    """Rank methods by per-subject ``losses`` (lower is better) so that indistinguishable methods share a rank.

    A method's rank is 1 + the number of methods that are *clearly* better than it: those whose paired
    difference interval (subject bootstrap, 95 %) lies entirely below 0. Two methods whose difference
    interval covers 0 therefore never push each other down. Interval ends are rounded to 6 significant
    digits before the comparison, so float noise cannot split a tie. A method without a finite loss is
    left out (no rank).
    """
    losses = {h: _as_dict(s) for h, s in losses.items()}
    names = sorted(h for h, s in losses.items() if any(math.isfinite(v) for v in s.values()))
    better_than_me = dict.fromkeys(names, 0)
    for x, y in itertools.combinations(names, 2):
        c = compare(losses[x], losses[y], seed=seed, scenario=scenario, metric=metric, n_boot=n_boot, test=False)
        if c.n == 0:
            continue
        if round_sig(c.ci_high) < 0:
            better_than_me[y] += 1
        elif round_sig(c.ci_low) > 0:
            better_than_me[x] += 1
    return {h: float(1 + k) for h, k in better_than_me.items()}


def subject_values(ok: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per-subject values and per-seed means from the ``ok`` rows with finite values.

    Returns ``(per_subject, per_seed)``: ``per_subject`` is indexed by (scenario, metric, harmonizer,
    subject) and holds the mean over the subject's scans of each seed, averaged over seeds;
    ``per_seed`` is indexed by (scenario, metric, harmonizer, seed) and holds each seed's mean over
    subjects, whose standard deviation is the between-seed spread. Rows are sorted first, so the
    summation order (and so the last bits) never depends on the order the runner wrote them in.
    """
    keys = ["scenario", "metric", "harmonizer", "seed", "subject", "site"]
    df = ok.sort_values(keys, kind="mergesort")
    per_seed_subject = df.groupby(keys[:5], sort=True)["value"].mean()
    per_subject = per_seed_subject.groupby(level=[0, 1, 2, 4], sort=True).mean()
    per_seed = per_seed_subject.groupby(level=[0, 1, 2, 3], sort=True).mean()
    return per_subject, per_seed
