"""Stand-ins for scan-rescan repeats in evaluator tests, until the simulator's own rescans are used there."""

from __future__ import annotations

import dataclasses

import numpy as np

from harmbench.data.scan import RESCAN_SESSION, Scan

#: Noise of the stand-in rescan relative to the scan's brain 99th percentile (the simulated sites' noise
#: is 1.5–3 % of the white-matter signal).
RESCAN_NOISE = 0.015


def perturbed_rescan(scan: Scan, seed: int) -> Scan:
    """A same-site repeat of ``scan``: the same image with fresh Rician-like noise added (magnitude of the
    noisy value), brain mask and labels kept, session ``rescan``."""
    rng = np.random.default_rng(seed)
    sd = RESCAN_NOISE * float(np.percentile(scan.brain_values(), 99))
    noisy = np.abs(scan.data + rng.normal(0.0, sd, scan.shape))
    data = np.where(scan.brain, noisy, 0.0).astype(np.float32)
    return dataclasses.replace(scan, data=data, session=RESCAN_SESSION)
