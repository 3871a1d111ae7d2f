"""Nyúl–Udupa piecewise-linear histogram (landmark) standardisation.

References:
    Nyúl LG, Udupa JK. On standardizing the MR image intensity scale.
    Magnetic Resonance in Medicine 42(6):1072–1081, 1999.
    Nyúl LG, Udupa JK, Zhang X. New variants of a method of MRI scale
    standardization. IEEE Transactions on Medical Imaging 19(2):143–150, 2000.

Each scan is summarised by landmarks, the percentiles ``1, 10, 20, …, 90, 99``
of its brain voxels. Fitting learns the *standard* landmarks of the target
site; transforming maps the scan's own landmarks onto the standard ones with a
piecewise-linear function (linearly extrapolated beyond the 1st and 99th
percentiles, as in the papers, rather than clamped, so that the tails keep
their contrast) and clips negative intensities to zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from harmbench import hookimpl
from harmbench.api import Harmonizer, Meta
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, DataError, PluginError

#: Landmark percentiles of Nyúl et al. 2000 (the "decile" variant with 1/99 end points).
PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)

STANDARDS = ("reference", "site")


def landmarks(scan: Scan) -> np.ndarray:
    """The scan's landmarks: percentiles `PERCENTILES` of its brain voxels (float64)."""
    values = scan.brain_values()
    if values.size == 0:
        raise DataError(f"{scan.describe()}: empty brain mask, cannot compute histogram landmarks")
    return np.percentile(values, PERCENTILES)


def _strictly_increasing(x: np.ndarray) -> np.ndarray:
    # Flat histogram regions give tied landmarks; nudging ties apart by a
    # negligible amount keeps the piecewise-linear map a function.
    x = np.array(x, dtype=np.float64)
    eps = 1e-6 * max(float(np.max(np.abs(x))), 1.0)
    for i in range(1, x.size):
        x[i] = max(x[i], x[i - 1] + eps)
    return x


def piecewise_linear(values: np.ndarray, source: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Map ``values`` so that landmarks ``source`` land on ``standard``, extrapolating linearly at both ends."""
    src = _strictly_increasing(source)
    std = np.asarray(standard, dtype=np.float64)
    out = np.interp(values, src, std)
    lo_slope = (std[1] - std[0]) / (src[1] - src[0])
    hi_slope = (std[-1] - std[-2]) / (src[-1] - src[-2])
    below = values < src[0]
    above = values > src[-1]
    out[below] = std[0] + lo_slope * (values[below] - src[0])
    out[above] = std[-1] + hi_slope * (values[above] - src[-1])
    return out


class HistogramHarmonizer(Harmonizer):
    """Nyúl–Udupa landmark histogram matching to the target site (Nyúl & Udupa 1999; Nyúl et al. 2000).

    Parameters:
        standard: where the standard landmarks come from. ``"reference"``: the
            landmarks of the one-shot target-site reference scan given to
            ``fit``; ``"site"``: the mean landmarks over all target-site scans
            of the training cohort (the papers' training step).

    Fitted state: ``standard_landmarks`` (11 intensities). ``transform``
    ignores its ``reference`` argument: the standard is fixed at fit time.
    """

    meta = Meta(
        name="histogram",
        version="1.0",
        citation=(
            "Nyúl LG, Udupa JK. On standardizing the MR image intensity scale. Magn Reson Med 1999;42:1072-1081. "
            "Nyúl LG, Udupa JK, Zhang X. New variants of a method of MRI scale standardization. "
            "IEEE Trans Med Imaging 2000;19:143-150."
        ),
        description="Piecewise-linear landmark (percentile 1,10,...,90,99) matching to the target site.",
        uses_reference=True,
        needs_source_sites=False,
        handles_unseen_sites=True,
    )

    def __init__(self, standard: str = "reference") -> None:
        self.standard = standard

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> HistogramHarmonizer:
        if self.standard not in STANDARDS:
            raise ConfigError(
                f"histogram: parameter 'standard' must be one of {', '.join(map(repr, STANDARDS))}, "
                f"got {self.standard!r}"
            )
        if self.standard == "reference":
            if reference is None:
                raise DataError(
                    "histogram with standard='reference' needs the target-site reference scan passed to fit()"
                )
            standard = landmarks(reference)
        else:
            scans = train.by_site(target_site)
            if not scans:
                raise DataError(
                    f"histogram with standard='site': training cohort {train.name!r} has no scan from target site "
                    f"{target_site!r} (sites: {', '.join(train.sites)})"
                )
            standard = np.mean([landmarks(s) for s in scans], axis=0)
        self.standard_landmarks_ = standard
        self.target_site_ = target_site
        self.fitted_ = True
        return self

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        brain = scan.brain
        out = np.array(scan.data, dtype=np.float32, copy=True)
        values = scan.brain_values()
        if values.size:
            mapped = piecewise_linear(values, landmarks(scan), self.standard_landmarks_)
            # Extrapolation below the 1st percentile can cross zero; MR magnitudes are non-negative.
            out[brain] = np.maximum(mapped, 0.0).astype(np.float32)
        return scan.with_data(out)

    def get_state(self) -> dict[str, np.ndarray]:
        return {"standard_landmarks": np.asarray(self.standard_landmarks_, dtype=np.float64)}

    def set_state(self, state: Mapping[str, np.ndarray]) -> HistogramHarmonizer:
        value = np.asarray(state["standard_landmarks"], dtype=np.float64)
        if value.shape != (len(PERCENTILES),) or not np.all(np.isfinite(value)):
            raise PluginError(
                f"histogram: saved standard_landmarks must be {len(PERCENTILES)} finite values, got shape {value.shape}"
            )
        self.standard_landmarks_ = value
        return self


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [HistogramHarmonizer]
