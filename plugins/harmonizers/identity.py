"""Identity: returns every scan unchanged — the floor every method must beat (docs/design.md §6)."""

from __future__ import annotations

import numpy as np

from harmbench import hookimpl
from harmbench.api import Meta, StatelessHarmonizer
from harmbench.data.scan import Cohort, Scan


class IdentityHarmonizer(StatelessHarmonizer):
    """No harmonization at all ("none" in papers' tables); stateless."""

    meta = Meta(
        name="identity",
        version="1.0",
        citation="No harmonization (baseline).",
        description="Returns the input scan unchanged; the floor of every leaderboard.",
        uses_reference=False,
        needs_source_sites=False,
        handles_unseen_sites=True,
    )

    def __init__(self) -> None:
        pass

    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> IdentityHarmonizer:
        self.target_site_ = target_site
        self.fitted_ = True
        return self

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        # A copy, so that a caller writing into the output cannot corrupt the input.
        return scan.with_data(np.array(scan.data, dtype=np.float32, copy=True))


@hookimpl
def harmbench_register_harmonizers() -> list[type]:
    return [IdentityHarmonizer]
