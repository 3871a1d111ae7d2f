"""Scale: each scan's brain rescaled by one number, the floor a real harmonization method must beat.

Every scanner multiplies its image by a gain of its own (receive chain, reconstruction scaling), so a
large part of the difference between two sites' scans of one brain is a single global factor. This
baseline removes exactly that and nothing else: each scan's brain voxels are divided by their own
``percentile``-th percentile (default 95, HAIL's normalisation convention; Parida et al., arXiv
2308.11047) and multiplied by the same percentile of the one-shot target-site reference. Contrast,
bias field, noise and blur are left as they are.

A method that does not beat ``scale`` on an axis has, on that axis, learned nothing beyond a global
gain. Voxels outside the brain mask are returned unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from harmbench import hookimpl
from harmbench.api import Meta, StatelessHarmonizer, check_number
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, DataError


def brain_percentile(scan: Scan, percentile: float) -> float:
    """The ``percentile``-th percentile of the scan's brain voxels; a `DataError` if it is not positive."""
    values = scan.brain_values()
    level = float(np.percentile(values, percentile)) if values.size else math.nan
    if not math.isfinite(level) or level <= 0.0:
        raise DataError(
            f"scale: the {percentile:g}th percentile of the brain intensities of {scan.describe()} is {level!r}; "
            "it must be positive to rescale by it"
        )
    return level


class ScaleHarmonizer(StatelessHarmonizer):
    """Per-scan global rescale to the reference's brain percentile (the ``scale`` baseline).

    Parameters:
        percentile: brain-intensity percentile matched between the scan and the reference (0 < p <= 100).
    """

    meta = Meta(
        name="scale",
        version="1.0",
        citation="Baseline: one global gain per scan (percentile convention of Parida et al., arXiv 2308.11047).",
        description="Divides each scan's brain by its own 95th percentile and multiplies by the reference's.",
        uses_reference=True,
        needs_source_sites=False,
        handles_unseen_sites=True,
    )

    def __init__(self, percentile: float = 95.0) -> None:
        self.percentile = percentile

    def _validate(self) -> None:
        check_number("scale", "percentile", self.percentile, minimum=0.0, strict=True)
        if self.percentile > 100:
            raise ConfigError(f"scale: parameter 'percentile' must be at most 100, got {self.percentile!r}")

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> ScaleHarmonizer:
        self._validate()
        self.target_site_ = target_site
        self.fitted_ = True
        return self

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        if reference is None:
            raise DataError("scale needs the target-site reference scan at transform time ('reference')")
        factor = brain_percentile(reference, self.percentile) / brain_percentile(scan, self.percentile)
        out = np.array(scan.data, dtype=np.float32, copy=True)
        brain = scan.brain
        out[brain] = (scan.data[brain].astype(np.float64) * factor).astype(np.float32)
        return scan.with_data(out)


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [ScaleHarmonizer]
