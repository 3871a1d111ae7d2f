"""SSIMH: image-level harmonization by swapping low-frequency DCT coefficients.

Reference:
    Guan H, Liu S, Lin W, Yap P-T, Liu M. Fast image-level MRI harmonization via
    spectrum analysis. In: Machine Learning in Medical Imaging (MLMI 2022),
    LNCS 13583, pp. 201–209. Public MATLAB code: DomainATM, ``SSIMH.m``.

Per slice along ``axis`` (axial by default), the 2-D orthonormal DCT-II of the
source slice and of the co-registered target reference slice are computed;
the top-left ``block × block`` coefficients (the DC term and the lowest
spatial frequencies, which carry the global contrast / "style") are copied
from the reference into the source, and the inverse DCT gives the harmonized
slice. The higher frequencies (anatomy, edges) stay the source's. No training.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn, idctn

from harmbench import hookimpl
from harmbench.api import Meta, StatelessHarmonizer
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, DataError


def swap_low_frequencies(source: np.ndarray, reference: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Per slice along ``axis``: source's 2-D DCT with its top-left ``block``² coefficients taken from ``reference``."""
    src = np.moveaxis(np.asarray(source, dtype=np.float64), axis, 0)
    ref = np.moveaxis(np.asarray(reference, dtype=np.float64), axis, 0)
    coef = dctn(src, type=2, axes=(1, 2), norm="ortho")
    b0, b1 = min(block, coef.shape[1]), min(block, coef.shape[2])
    ref_coef = dctn(ref, type=2, axes=(1, 2), norm="ortho")
    coef[:, :b0, :b1] = ref_coef[:, :b0, :b1]
    out = idctn(coef, type=2, axes=(1, 2), norm="ortho")
    return np.moveaxis(out, 0, axis)


class SSIMHHarmonizer(StatelessHarmonizer):
    """SSIMH (Guan et al., MLMI 2022): per-slice DCT, low-frequency block from the target reference.

    Parameters:
        axis: slice axis of the volume (2 = axial in RAS-like voxel order).
        block: side ``b`` of the copied top-left ``b × b`` DCT block, DC included (paper: 3).

    The reference must have the same shape as the scan (co-registered, as the
    method assumes). Output outside the scan's brain mask keeps the input's
    values; inside, negatives from the inverse DCT are clipped to zero.
    Stateless: ``fit`` only validates parameters and records the target site.
    """

    meta = Meta(
        name="ssimh",
        version="1.0",
        citation=(
            "Guan H, Liu S, Lin W, Yap P-T, Liu M. Fast image-level MRI harmonization via spectrum analysis. "
            "MLMI 2022, LNCS 13583:201-209."
        ),
        description="Per-slice 2-D DCT; the low-frequency b×b block is copied from the target reference.",
        uses_reference=True,
        needs_source_sites=False,
        handles_unseen_sites=True,
    )

    def __init__(self, axis: int = 2, block: int = 3) -> None:
        self.axis = axis
        self.block = block

    def _validate(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)) or self.axis not in (0, 1, 2):
            raise ConfigError(f"ssimh: parameter 'axis' must be 0, 1 or 2, got {self.axis!r}")
        if isinstance(self.block, bool) or not isinstance(self.block, (int, np.integer)) or self.block < 1:
            raise ConfigError(f"ssimh: parameter 'block' must be a positive integer, got {self.block!r}")

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> SSIMHHarmonizer:
        self._validate()
        self.target_site_ = target_site
        self.fitted_ = True
        return self

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        self._validate()
        if reference is None:
            raise DataError(f"ssimh needs a target-site reference scan to harmonize {scan.describe()}; got None")
        if reference.shape != scan.shape:
            raise DataError(
                f"ssimh needs the reference and the scan to have the same shape (co-registered): "
                f"scan {scan.describe()} has {scan.shape}, reference {reference.describe()} has {reference.shape}"
            )
        harmonized = swap_low_frequencies(scan.data, reference.data, int(self.axis), int(self.block))
        brain = scan.brain
        out = np.where(brain, np.maximum(harmonized, 0.0), scan.data).astype(np.float32)
        return scan.with_data(out)


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [SSIMHHarmonizer]
