"""Voxel-wise ComBat with the target site as reference batch, as implemented by neuroHarmonize.

References:
    Johnson WE, Li C, Rabinovic A. Adjusting batch effects in microarray expression data using
    empirical Bayes methods. Biostatistics 8(1):118–127, 2007.
    Fortin J-P, Cullen N, Sheline YI, et al. Harmonization of cortical thickness measurements across
    scanners and sites. NeuroImage 167:104–120, 2018.
    Pomponio R, Erus G, Habes M, et al. Harmonization of large MRI datasets for the analysis of brain
    imaging patterns throughout the lifespan. NeuroImage 208:116450, 2020 (neuroHarmonize).

Two harmonizers:

``combat``
    ComBat on the voxels of the common brain mask (the intersection of the training scans' brain
    masks), one feature per voxel, location/scale site effects with empirical Bayes shrinkage,
    covariates (age, sex, …) as linear terms, and the target site as reference batch
    (``ref_batch``): the target site's data are left as they are and every other site is mapped
    into the target site's intensity scale. ComBat estimates one effect per *trained* site, so it
    cannot harmonize a site absent from training (``handles_unseen_sites=False``): the runner
    reports ``not_applicable`` for the unseen scenario and ``transform`` of such a scan raises.

``combat-refit``
    The same model, plus the out-of-sample step of neuroHarmonize (``harmonizationLearn(...,
    orig_model=model)``): for a site absent from training it estimates that site's location/scale
    effect from the site's own *test* scans, keeping the trained sites (design, covariate effects,
    reference scale) fixed. It is transductive: it looks at all the test scans of a new site before
    harmonizing them. For trained sites its output is identical to ``combat``'s.

Numerics follow neuroHarmonize 2.5.2 (``harmonizationLearn`` / ``harmonizationApply`` with
``ref_batch``) formula for formula, re-using its and neuroCombat's building blocks
(``make_design_matrix``, ``aprior``, ``bprior``, ``it_sol``), but streamed over voxel chunks so that the
scans × voxels matrix exists once, in float64 (neuroHarmonize itself holds several full-size copies:
standardized data, a grand-mean matrix, a model-mean matrix and the adjusted data). The tests check
equality with neuroHarmonize called directly to 1e-6. Two paths of neuroHarmonize 2.5.2 cannot be called
directly: with ``ref_batch`` set, ``harmonizationApply`` raises ``IndexError`` / ``ValueError`` for a batch
that lacks some trained site (reproduced here: a three-site model, a batch of one or two of its sites),
so one scan cannot be harmonized on its own; and the ``orig_model`` path fails (a ``KeyError`` on
``ref_level`` in ``find_parametric_adjustments``, and misaligned shapes when the model has more than one
trained site); both are implemented here with the same formulas.

What neuroHarmonize would do silently is an error or a documented fallback here:

* a training site with fewer than two scans (no within-site variance): `DataError`;
* fewer training scans than design parameters plus one per site (the residual degrees of freedom that the
  within-site variances need; with fewer, ComBat's scale estimates collapse to ~1e-24 and outputs are
  numerical noise): `DataError`;
* a covariate missing, NaN or non-numeric for any scan: `DataError` naming the scan (encode categorical
  covariates numerically, e.g. sex as 0/1); covariates collinear with the sites: `DataError`;
* a covariate at transform time outside the training range (widened by 10 % of its width on each side):
  `DataError` by default (``covariate_range="error"``), because the linear covariate effects would be
  extrapolated and, through the scale adjustment, can move intensities far (a 40-year extrapolation
  quadruples some voxels of the simulator); ``"clip"`` clamps it to that range, ``"extrapolate"`` is
  neuroHarmonize's behaviour;
* smooth (GAM) terms are not offered: voxel-wise GAM fitting takes hours (about 0.1 s per voxel);
* voxels with no scale at the reference site (constant across the target site's training scans, which
  includes voxels constant across all scans) give NaN in neuroHarmonize; they are left out of ComBat
  and mapped with the site-level fallback below, so the output is always finite.

Site-level fallback: every site gets one linear map ``a_s * x + b_s`` that matches the mean and standard
deviation of its brain intensities (over the common mask, pooled over its scans) to the target site's.
It maps the voxels ComBat has no estimate for: voxels inside a scan's own brain mask but outside the
common mask, and the degenerate voxels above. The target site's map is the identity. Voxels outside a
scan's brain mask are returned unchanged, so the mask is preserved.

Nothing here is random (no GAM penalty search), so the output is deterministic and ``rng`` is unused.
Outputs are not clipped at zero (ComBat is linear; clipping would break equality with neuroHarmonize).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from neuroCombat.neuroCombat import aprior, bprior, it_sol, make_design_matrix

from harmbench import hookimpl
from harmbench.api import Harmonizer, Meta
from harmbench.data.scan import Cohort, Scan, stack_brain
from harmbench.errors import ConfigError, DataError, PluginError

#: ComBat estimates a within-site variance per voxel: every site needs at least two scans.
MIN_SCANS_PER_SITE = 2

_CITATION = (
    "Johnson WE, Li C, Rabinovic A. Adjusting batch effects in microarray expression data using empirical Bayes "
    "methods. Biostatistics 2007;8:118-127. "
    "Fortin J-P et al. Harmonization of cortical thickness measurements across scanners and sites. "
    "NeuroImage 2018;167:104-120. "
    "Pomponio R et al. Harmonization of large MRI datasets for the analysis of brain imaging patterns throughout "
    "the lifespan. NeuroImage 2020;208:116450 (neuroHarmonize 2.5.2)."
)

_STATE_KEYS = (
    "mask",
    "combat_mask",
    "site_labels",
    "ref_level",
    "n_trained_sites",
    "covariate_names",
    "B_hat",
    "var_pooled",
    "gamma_star",
    "delta_star",
    "fallback_scale",
    "fallback_shift",
    "target_stats",
    "covariate_low",
    "covariate_high",
)

#: What ``transform`` does with a covariate outside the training range (widened by `RANGE_MARGIN`).
COVARIATE_RANGE = ("error", "clip", "extrapolate")
#: Share of the training range a covariate may lie beyond it before it counts as out of range.
RANGE_MARGIN = 0.1


# -- helpers -----------------------------------------------------------------------------------------------------


def _covariate_names(covariates: str | Sequence[str] | None, train: Cohort) -> list[str]:
    if covariates is None:
        return sorted({k for s in train for k in s.covariates})
    if isinstance(covariates, str):
        return [c.strip() for c in covariates.split(",") if c.strip()]
    return [str(c) for c in covariates]


def covariate_matrix(scans: Sequence[Scan], names: Sequence[str]) -> np.ndarray:
    """Scans × covariates, float64 of float32 values (neuroCombat's ``make_design_matrix`` casts to float32).

    Raises `DataError` for a missing, non-numeric or non-finite value, naming the scan and the covariate.
    """
    out = np.empty((len(scans), len(names)), dtype=np.float32)
    for i, scan in enumerate(scans):
        for j, name in enumerate(names):
            value = scan.covariates.get(name)
            if isinstance(value, (bool, np.bool_)):
                value = float(value)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise DataError(
                    f"combat: covariate {name!r} is missing for {scan.describe()}; ComBat needs every covariate for "
                    "every scan (fill it in, or choose the covariates with the 'covariates' parameter)"
                )
            if not isinstance(value, numbers.Real):
                raise DataError(
                    f"combat: covariate {name!r} of {scan.describe()} is {value!r}, not a number; encode categorical "
                    "covariates numerically (e.g. sex as 0/1) or leave them out with the 'covariates' parameter"
                )
            if not math.isfinite(float(value)):
                raise DataError(f"combat: covariate {name!r} of {scan.describe()} is {value!r}, not finite")
            out[i, j] = value
    return out.astype(np.float64)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _site_stats(rows: Sequence[np.ndarray]) -> tuple[float, float]:
    """Pooled mean and standard deviation of the given rows, without concatenating them."""
    n = sum(r.size for r in rows)
    total = sum(float(r.sum()) for r in rows)
    mean = total / n
    ss = sum(float(np.dot(r - mean, r - mean)) for r in rows)
    return mean, math.sqrt(ss / max(n - 1, 1))


def _fallback_map(site_mean: float, site_sd: float, target_mean: float, target_sd: float) -> tuple[float, float]:
    scale = target_sd / site_sd if site_sd > 0 else 1.0
    return scale, target_mean - scale * site_mean


def _eb_estimates(
    standardized: Sequence[np.ndarray], eb: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Location/scale site effects for batches given as voxels × scans standardized matrices.

    The design here is one indicator per batch (no reference column), so ``gamma_hat`` is each batch's
    mean and ``delta_hat`` its variance (ddof=1), exactly neuroHarmonize's ``fitLSModelAndFindPriors``
    for that design; then ``find_parametric_adjustments`` (``it_sol`` with the priors of each batch).
    Returns ``gamma_hat, delta_hat, gamma_star, delta_star`` (batches × voxels).
    """
    gamma_hat = np.stack([s.mean(axis=1) for s in standardized])
    delta_hat = np.stack([np.var(s, axis=1, ddof=1) for s in standardized])
    if not eb:
        return gamma_hat, delta_hat, gamma_hat.copy(), delta_hat.copy()
    gamma_star, delta_star = _eb(standardized, gamma_hat, delta_hat)
    return gamma_hat, delta_hat, gamma_star, delta_star


def _eb(
    standardized: Sequence[np.ndarray | None], gamma_hat: np.ndarray, delta_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """neuroCombat's parametric empirical Bayes (``it_sol``) per batch; a ``None`` batch keeps 0 / 1."""
    gamma_star = np.zeros_like(gamma_hat)
    delta_star = np.ones_like(delta_hat)
    for i, sdat in enumerate(standardized):
        if sdat is None:
            continue
        gamma_bar = np.mean(gamma_hat[i])
        t2 = np.var(gamma_hat[i], ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma_star[i], delta_star[i] = it_sol(
                sdat, gamma_hat[i], delta_hat[i], gamma_bar, t2, aprior(delta_hat[i]), bprior(delta_hat[i])
            )
    return gamma_star, delta_star


def learn_combat(
    X: np.ndarray,
    sites: Sequence[str],
    covariates: np.ndarray,
    ref_site: str,
    *,
    eb: bool = True,
    chunk_voxels: int = 65536,
) -> dict[str, np.ndarray]:
    """ComBat with ``ref_batch=ref_site`` on a scans × voxels matrix, streamed over voxel chunks.

    Same estimates as ``neuroHarmonize.harmonizationLearn(X, covars, eb=eb, ref_batch=ref_site)`` for
    the voxels it keeps (``keep``): voxels whose pooled variance at the reference site is zero (or not
    finite), and voxels whose empirical Bayes estimates are not finite, are left out. ``X`` is read, never
    copied whole: each pass holds one chunk, or one site's rows of the standardized data.

    Returns ``site_labels`` (sorted, as ``np.unique``), ``ref_level``, ``keep`` (bool, voxels), and for
    the kept voxels ``B_hat`` ((sites + covariates) × voxels), ``var_pooled``, ``gamma_star``,
    ``delta_star`` (sites × voxels).
    """
    n, v = X.shape
    sites = np.asarray(sites, dtype=str)
    site_labels, codes = np.unique(sites, return_inverse=True)
    ref_level = int(np.flatnonzero(site_labels == ref_site)[0])
    nb = len(site_labels)
    covars = np.empty((n, 1 + covariates.shape[1]), dtype=object)
    covars[:, 0] = codes
    covars[:, 1:] = covariates
    design = make_design_matrix(covars, 0, [], list(range(1, covars.shape[1])), ref_level)
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise DataError(
            "combat: the design (one column per site, one per covariate) is singular: a covariate is constant, "
            "or collinear with the sites (e.g. constant within every site); leave it out with the 'covariates' "
            "parameter"
        )
    if n - design.shape[1] < nb:
        raise DataError(
            f"combat: {n} training scans for {design.shape[1]} design parameters ({nb} sites + "
            f"{covariates.shape[1]} covariates): ComBat needs at least one residual degree of freedom per site "
            f"({design.shape[1] + nb} scans), or its within-site variances collapse to zero; add scans or drop "
            "covariates"
        )
    solve = np.dot(np.linalg.inv(np.dot(design.T, design)), design.T)  # (sites + covariates) × scans
    covariate_design = design.copy()
    covariate_design[:, :nb] = 0
    ref_rows = np.flatnonzero(codes == ref_level)
    batch_rows = [np.flatnonzero(codes == i) for i in range(nb)]

    # pass 1: regression coefficients and the reference site's residual variance, per chunk
    B_hat = np.empty((design.shape[1], v))
    var_pooled = np.empty(v)
    flat = np.zeros(v, dtype=bool)
    for c in _chunks(v, chunk_voxels):
        block = X[:, c]
        B_hat[:, c] = np.dot(solve, block)
        resid = block[ref_rows] - np.dot(design[ref_rows], B_hat[:, c])
        var_pooled[c] = np.dot((resid**2).T, np.ones(len(ref_rows)) / float(len(ref_rows)))
        ref_block = block[ref_rows]
        flat[c] = ref_block.max(axis=0) == ref_block.min(axis=0)
    keep = np.isfinite(var_pooled) & (var_pooled > 0) & ~flat

    def standardized(rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Voxels × scans standardized data for ``rows`` and kept voxel indices ``idx`` (one chunk)."""
        block = X[np.ix_(rows, idx)]
        grand = B_hat[ref_level, idx]
        model = np.dot(covariate_design[rows], B_hat[:, idx])
        return ((block - grand - model) / np.sqrt(var_pooled[idx])).T

    kept = np.flatnonzero(keep)
    # pass 2: least-squares site effects (gamma_hat with the reference column of ones, as neuroHarmonize)
    batch_design = design[:, :nb]
    solve_batch = np.dot(np.linalg.inv(np.dot(batch_design.T, batch_design)), batch_design.T)
    gamma_hat = np.empty((nb, kept.size))
    delta_hat = np.empty((nb, kept.size))
    all_rows = np.arange(n)
    for c in _chunks(kept.size, chunk_voxels):
        s = standardized(all_rows, kept[c])
        gamma_hat[:, c] = np.dot(solve_batch, s.T)
        for i, rows in enumerate(batch_rows):
            delta_hat[i, c] = np.var(s[:, rows], axis=1, ddof=1)

    # pass 3: empirical Bayes, one site at a time over all kept voxels (it_sol's convergence test is global)
    if eb:
        gamma_star = np.zeros((nb, kept.size))
        delta_star = np.ones((nb, kept.size))
        for i, rows in enumerate(batch_rows):
            if i == ref_level:
                continue  # neuroCombat sets the reference batch to 0 / 1 after estimating it
            sdat = np.empty((kept.size, rows.size))
            for c in _chunks(kept.size, chunk_voxels):
                sdat[c] = standardized(rows, kept[c])
            gs, ds = _eb([sdat], gamma_hat[[i]], delta_hat[[i]])
            gamma_star[i], delta_star[i] = gs[0], ds[0]
            del sdat
    else:
        gamma_star, delta_star = gamma_hat, delta_hat

    good = np.isfinite(gamma_star).all(axis=0) & np.isfinite(delta_star).all(axis=0) & (delta_star > 0).all(axis=0)
    keep[kept[~good]] = False
    return {
        "site_labels": site_labels,
        "ref_level": np.int64(ref_level),
        "keep": keep,
        # no copies when every voxel is kept (the usual case)
        "B_hat": B_hat if keep.all() else B_hat[:, keep],
        "var_pooled": var_pooled if keep.all() else var_pooled[keep],
        "gamma_star": gamma_star if good.all() else gamma_star[:, good],
        "delta_star": delta_star if good.all() else delta_star[:, good],
    }


def apply_combat(
    x: np.ndarray,
    covariates: np.ndarray,
    site_index: int,
    model: Mapping[str, np.ndarray],
) -> np.ndarray:
    """One scan's ComBat voxels (float64) → the reference site's scale, as ``harmonizationApply``.

    ``covariates`` is the scan's covariate row; the reference site's data are returned unchanged.
    """
    ref = int(model["ref_level"])
    if site_index == ref:
        return np.array(x, dtype=np.float64, copy=True)
    nb = len(model["site_labels"])
    B_hat, gamma, delta = model["B_hat"], model["gamma_star"], model["delta_star"]
    sd = np.sqrt(model["var_pooled"])
    mean = B_hat[ref] + np.dot(covariates, B_hat[nb:])
    s = (x - mean) / sd
    # the design of a non-reference scan has ones at its own site and at the reference column
    adjusted = (s - (gamma[site_index] + gamma[ref])) / np.sqrt(delta[site_index])
    return adjusted * sd + mean


# -- harmonizers -------------------------------------------------------------------------------------------------


class ComBatHarmonizer(Harmonizer):
    """Voxel-wise ComBat (Johnson et al. 2007; Fortin et al. 2018) via neuroHarmonize (Pomponio et al. 2020).

    Parameters:
        covariates: names of the covariates to model (linear terms, numeric), a comma-separated string or
            a list; ``None`` (default) takes every covariate of the training manifest, ``[]`` none.
        eb: empirical Bayes shrinkage of the site effects (True, as ComBat), or plain least squares.
        covariate_range: a covariate outside the training range at transform time: ``"error"``
            (default), ``"clip"`` to the range, or ``"extrapolate"`` (neuroHarmonize's behaviour).
        chunk_voxels: voxels per chunk of the streamed estimation (memory/speed knob; results do not
            depend on it beyond floating-point summation order).

    Fitted state: the common mask and the mask of ComBat voxels (boolean volumes), site labels (sorted;
    sites added by ``combat-refit`` appended), the reference level, covariate names, neuroHarmonize's
    ``B_hat``, ``var_pooled``, ``gamma_star``, ``delta_star`` for the ComBat voxels, and the site-level
    fallback maps with the target site's pooled intensity mean and standard deviation. ``transform``
    ignores ``reference``.
    """

    meta = Meta(
        name="combat",
        version="1.0",
        citation=_CITATION,
        description=(
            "Voxel-wise ComBat (neuroHarmonize) on the common brain mask, empirical Bayes, covariates, target site "
            "as reference batch; trained sites only."
        ),
        uses_reference=False,
        needs_source_sites=True,
        handles_unseen_sites=False,
    )

    def __init__(
        self,
        covariates: str | Sequence[str] | None = None,
        eb: bool = True,
        covariate_range: str = "error",
        chunk_voxels: int = 65536,
    ) -> None:
        self.covariates = covariates
        self.eb = eb
        self.covariate_range = covariate_range
        self.chunk_voxels = chunk_voxels

    # -- fit ---------------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not isinstance(self.eb, (bool, np.bool_)):
            raise ConfigError(f"{self.meta.name}: parameter 'eb' must be true or false, got {self.eb!r}")
        if not isinstance(self.chunk_voxels, numbers.Integral) or self.chunk_voxels < 1:
            raise ConfigError(
                f"{self.meta.name}: parameter 'chunk_voxels' must be a positive integer, got {self.chunk_voxels!r}"
            )
        if self.covariate_range not in COVARIATE_RANGE:
            raise ConfigError(
                f"{self.meta.name}: parameter 'covariate_range' must be one of "
                f"{', '.join(map(repr, COVARIATE_RANGE))}, got {self.covariate_range!r}"
            )
        if self.covariates is not None and not isinstance(self.covariates, (str, Sequence)):
            raise ConfigError(
                f"{self.meta.name}: parameter 'covariates' must be a list of names, got {self.covariates!r}"
            )

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> ComBatHarmonizer:
        self._check_params()
        name = self.meta.name
        scans = list(train)
        sites = [s.site for s in scans]
        if target_site not in sites:
            raise DataError(
                f"{name}: training cohort {train.name!r} has no scan from target site {target_site!r} "
                f"(sites: {', '.join(train.sites)})"
            )
        labels, counts = np.unique(sites, return_counts=True)
        few = [f"{site} ({count})" for site, count in zip(labels, counts, strict=True) if count < MIN_SCANS_PER_SITE]
        if few:
            raise DataError(
                f"{name}: ComBat needs at least {MIN_SCANS_PER_SITE} training scans per site to estimate a site's "
                f"variance; too few in training cohort {train.name!r}: {', '.join(few)}"
            )
        names = _covariate_names(self.covariates, train)
        covariates = covariate_matrix(scans, names)
        mask = train.common_mask()
        if not mask.any():
            raise DataError(f"{name}: the training scans' brain masks have no voxel in common")
        X = stack_brain(scans, mask)  # the one float64 copy of the voxel matrix
        learned = learn_combat(X, sites, covariates, target_site, eb=bool(self.eb), chunk_voxels=self.chunk_voxels)
        if not learned["keep"].any():
            raise DataError(
                f"{name}: no voxel of the common mask varies across the target site's training scans; "
                "ComBat has no reference scale"
            )
        site_labels = learned["site_labels"]
        stats = {}
        for site in site_labels:
            stats[str(site)] = _site_stats([X[i] for i, s in enumerate(sites) if s == site])
        del X
        ref = int(learned["ref_level"])
        target_stats = stats[str(site_labels[ref])]
        maps = [
            (1.0, 0.0) if i == ref else _fallback_map(*stats[str(s)], *target_stats) for i, s in enumerate(site_labels)
        ]
        combat_mask = np.zeros_like(mask)
        combat_mask[mask] = learned["keep"]
        self.mask_ = mask
        self.combat_mask_ = combat_mask
        self.site_labels_ = np.asarray(site_labels, dtype=str)
        self.ref_level_ = ref
        self.n_trained_sites_ = len(site_labels)
        self.covariate_names_ = list(names)
        self.B_hat_ = learned["B_hat"]
        self.var_pooled_ = learned["var_pooled"]
        self.gamma_star_ = learned["gamma_star"]
        self.delta_star_ = learned["delta_star"]
        self.fallback_scale_ = np.array([m[0] for m in maps])
        self.fallback_shift_ = np.array([m[1] for m in maps])
        self.target_stats_ = np.array(target_stats)
        width = covariates.max(axis=0, initial=0.0) - covariates.min(axis=0, initial=0.0)
        self.covariate_low_ = covariates.min(axis=0, initial=np.inf) - RANGE_MARGIN * width
        self.covariate_high_ = covariates.max(axis=0, initial=-np.inf) + RANGE_MARGIN * width
        self.fitted_ = True
        return self

    # -- transform ---------------------------------------------------------------------------------------------
    def _model(self) -> dict[str, Any]:
        return {
            "site_labels": self.site_labels_,
            "ref_level": self.ref_level_,
            "B_hat": self.B_hat_,
            "var_pooled": self.var_pooled_,
            "gamma_star": self.gamma_star_,
            "delta_star": self.delta_star_,
        }

    def _site_index(self, scan: Scan) -> int:
        hits = np.flatnonzero(self.site_labels_ == scan.site)
        if hits.size == 0:
            raise DataError(
                f"{self.meta.name}: {scan.describe()} is from site {scan.site!r}, which was not in training "
                f"(sites: {', '.join(self.site_labels_)}); ComBat can only harmonize trained sites"
                + ("" if self.meta.transductive else " (combat-refit re-estimates a new site from its scans)")
            )
        return int(hits[0])

    def _check_shape(self, scan: Scan) -> None:
        if scan.shape != self.mask_.shape:
            raise DataError(
                f"{self.meta.name}: {scan.describe()} has shape {scan.shape}, the training scans {self.mask_.shape}"
            )

    def _covariates(self, scans: Sequence[Scan]) -> np.ndarray:
        """Covariate rows of scans at transform/adapt time, range-checked against training."""
        values = covariate_matrix(scans, self.covariate_names_)
        if self.covariate_range == "extrapolate" or values.size == 0:
            return values
        low, high = self.covariate_low_, self.covariate_high_
        outside = (values < low) | (values > high)
        if self.covariate_range == "clip" or not outside.any():
            return np.clip(values, low, high)
        i, j = (int(k[0]) for k in np.nonzero(outside))
        raise DataError(
            f"{self.meta.name}: covariate {self.covariate_names_[j]!r} = {values[i, j]:g} of {scans[i].describe()} "
            f"is outside the training range widened by {RANGE_MARGIN:.0%} ({low[j]:g} to {high[j]:g}); ComBat "
            "would extrapolate its linear covariate effects. Set covariate_range='clip' or 'extrapolate' to allow it"
        )

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        self._check_shape(scan)
        j = self._site_index(scan)
        covariates = self._covariates([scan])[0]
        brain = scan.brain
        out = np.array(scan.data, dtype=np.float32, copy=True)
        harmonized = apply_combat(scan.data[self.combat_mask_].astype(np.float64), covariates, j, self._model())
        in_brain = brain[self.combat_mask_]
        out[brain & self.combat_mask_] = harmonized[in_brain].astype(np.float32)
        rest = brain & ~self.combat_mask_
        if rest.any():
            values = scan.data[rest].astype(np.float64)
            out[rest] = (self.fallback_scale_[j] * values + self.fallback_shift_[j]).astype(np.float32)
        return scan.with_data(out)

    # -- interop -----------------------------------------------------------------------------------------------
    def neuroharmonize_model(self) -> dict[str, Any]:
        """The fitted model as a neuroHarmonize model dict (ComBat voxels only), for ``harmonizationApply``."""
        self.check_is_fitted()
        nb = len(self.site_labels_)
        return {
            "SITE_labels": self.site_labels_.copy(),
            "B_hat": self.B_hat_,
            "var_pooled": self.var_pooled_[:, None],
            "stand_mean": self.B_hat_[self.ref_level_][:, None],
            "gamma_star": self.gamma_star_,
            "delta_star": self.delta_star_,
            "info_dict": {"n_batch": nb, "batch_levels": np.arange(nb), "ref_level": self.ref_level_},
            "smooth_model": {"perform_smoothing": False, "smooth_terms": [], "smooth_cols": []},
            "eb": bool(self.eb),
            "Covariates": ["SITE", *self.covariate_names_],
            "ref_batch": str(self.site_labels_[self.ref_level_]),
        }

    # -- state -------------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "mask": self.mask_,
            "combat_mask": self.combat_mask_,
            "site_labels": np.asarray(self.site_labels_, dtype=str),
            "ref_level": np.int64(self.ref_level_),
            "n_trained_sites": np.int64(self.n_trained_sites_),
            "covariate_names": np.asarray(self.covariate_names_, dtype=str).reshape(-1),
            "B_hat": self.B_hat_,
            "var_pooled": self.var_pooled_,
            "gamma_star": self.gamma_star_,
            "delta_star": self.delta_star_,
            "fallback_scale": self.fallback_scale_,
            "fallback_shift": self.fallback_shift_,
            "target_stats": self.target_stats_,
            "covariate_low": self.covariate_low_,
            "covariate_high": self.covariate_high_,
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> ComBatHarmonizer:
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise PluginError(f"{self.meta.name}: saved state lacks {', '.join(missing)}")
        mask = np.asarray(state["mask"], dtype=bool)
        combat_mask = np.asarray(state["combat_mask"], dtype=bool)
        labels = np.asarray(state["site_labels"]).astype(str)
        names = [str(n) for n in np.asarray(state["covariate_names"]).astype(str).reshape(-1)]
        nb, nv = len(labels), int(combat_mask.sum())
        shapes = {
            "B_hat": (nb + len(names), nv),
            "var_pooled": (nv,),
            "gamma_star": (nb, nv),
            "delta_star": (nb, nv),
            "fallback_scale": (nb,),
            "fallback_shift": (nb,),
            "target_stats": (2,),
            "covariate_low": (len(names),),
            "covariate_high": (len(names),),
        }
        arrays = {k: np.asarray(state[k], dtype=np.float64) for k in shapes}
        for key, shape in shapes.items():
            if arrays[key].shape != shape:
                raise PluginError(f"{self.meta.name}: saved {key} has shape {arrays[key].shape}, expected {shape}")
        ref = int(state["ref_level"])
        if mask.shape != combat_mask.shape or not 0 <= ref < nb or np.any(combat_mask & ~mask):
            raise PluginError(f"{self.meta.name}: saved masks or reference level are inconsistent")
        self.mask_, self.combat_mask_, self.site_labels_ = mask, combat_mask, labels
        self.ref_level_, self.n_trained_sites_, self.covariate_names_ = ref, int(state["n_trained_sites"]), names
        self.B_hat_, self.var_pooled_ = arrays["B_hat"], arrays["var_pooled"]
        self.gamma_star_, self.delta_star_ = arrays["gamma_star"], arrays["delta_star"]
        self.fallback_scale_, self.fallback_shift_ = arrays["fallback_scale"], arrays["fallback_shift"]
        self.target_stats_ = arrays["target_stats"]
        self.covariate_low_, self.covariate_high_ = arrays["covariate_low"], arrays["covariate_high"]
        return self


class ComBatRefitHarmonizer(ComBatHarmonizer):
    """ComBat whose unseen sites are re-estimated from their own test scans (transductive).

    ``adapt(scans)`` with all test scans of one site: a trained (or already adapted) site is left alone;
    a new site gets its location/scale effect estimated from those scans (at least two), as
    neuroHarmonize's ``harmonizationLearn(..., orig_model=model)``: the scans are standardized with the
    trained model (reference-site mean and scale, covariate effects), ``gamma_hat``/``delta_hat`` are the
    new site's mean and variance, shrunk by empirical Bayes with priors over its voxels, and the new
    site's ``B_hat`` row is its mean covariate-adjusted intensity. The trained sites are untouched, so for
    them the output equals ``combat``'s. The fallback map of the new site comes from the same scans.
    """

    meta = Meta(
        name="combat-refit",
        version="1.0",
        citation=_CITATION,
        description=(
            "Transductive: ComBat (neuroHarmonize) that re-estimates an unseen site's effect from that site's own "
            "test scans (orig_model path), trained sites fixed; identical to combat on seen sites."
        ),
        uses_reference=False,
        needs_source_sites=True,
        handles_unseen_sites=True,
        transductive=True,
    )

    def adapt(self, scans: Sequence[Scan]) -> ComBatRefitHarmonizer:
        self.check_is_fitted()
        name = self.meta.name
        scans = list(scans)
        sites = sorted({s.site for s in scans})
        if len(sites) != 1:
            raise DataError(f"{name}: adapt() takes the scans of one site, got sites {', '.join(sites) or 'none'}")
        site = sites[0]
        if site in set(self.site_labels_):
            return self
        if len(scans) < MIN_SCANS_PER_SITE:
            raise DataError(
                f"{name}: re-estimating new site {site!r} needs at least {MIN_SCANS_PER_SITE} of its scans, "
                f"got {len(scans)}"
            )
        for scan in scans:
            self._check_shape(scan)
        covariates = self._covariates(scans)
        nb = len(self.site_labels_)
        ref = self.ref_level_
        X = stack_brain(scans, self.combat_mask_)  # scans × ComBat voxels
        covariate_effect = np.dot(covariates, self.B_hat_[nb:])
        beta = np.mean(X - covariate_effect, axis=0)
        sd = np.sqrt(self.var_pooled_)
        sdat = ((X - self.B_hat_[ref] - covariate_effect) / sd).T
        _, _, gamma_star, delta_star = _eb_estimates([sdat], bool(self.eb))
        del sdat
        bad = ~(np.isfinite(gamma_star[0]) & np.isfinite(delta_star[0]) & (delta_star[0] > 0))
        if bad.any():
            raise DataError(
                f"{name}: the scans of new site {site!r} give no finite ComBat estimate at {int(bad.sum())} voxels "
                "(constant across the site's scans?)"
            )
        del X
        scale, shift = _fallback_map(
            *_site_stats([s.data[self.mask_ & s.brain].astype(np.float64) for s in scans]), *self.target_stats_
        )
        self.B_hat_ = np.concatenate([self.B_hat_[:nb], beta[None], self.B_hat_[nb:]])
        self.site_labels_ = np.append(self.site_labels_, site).astype(str)
        self.gamma_star_ = np.concatenate([self.gamma_star_, gamma_star])
        self.delta_star_ = np.concatenate([self.delta_star_, delta_star])
        self.fallback_scale_ = np.append(self.fallback_scale_, scale)
        self.fallback_shift_ = np.append(self.fallback_shift_, shift)
        return self


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [ComBatHarmonizer, ComBatRefitHarmonizer]
