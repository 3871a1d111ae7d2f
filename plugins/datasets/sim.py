"""Dataset plugin ``harmbench-sim``: the embedded simulated traveling-subject cohort."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from harmbench import hookimpl
from harmbench.api import DatasetSource
from harmbench.data import sim
from harmbench.data.scan import Cohort
from harmbench.errors import ConfigError

#: Values of the dataset parameter ``rescans``.
RESCAN_CHOICES = ("target", "all", "none")


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read site table: {exc.strerror or exc}") from None


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # pragma: no cover - nilearn is a dependency
        return "unknown"


class SimulatedDataset(DatasetSource):
    """MNI152-based traveling subjects scanned at every simulated site (docs/design.md §3).

    ``profile``: ``quick`` (4 mm, 16 subjects), ``default`` (3 mm, 64: what
    ``harmbench run`` uses), ``standard`` (2 mm, 24) or ``full`` (1 mm, 40);
    ``n_subjects`` / ``voxel_mm`` override it.
    ``sites_file``: a TOML table of extra sites (schema of
    ``harmbench/data/sites.toml``) added to, or replacing, the built-in ones.
    ``rescans``: which sites scan every subject a second time (session
    ``"rescan"``, the scan-rescan ceiling): ``"target"`` (the table's default
    target site; one extra scan per subject), ``"all"`` or ``"none"``.
    """

    name = "harmbench-sim"
    description = "simulated traveling-subject cohort from the MNI152 2009 template (no download)"

    def __init__(
        self,
        profile: str = "quick",
        seed: int = 0,
        n_subjects: int | None = None,
        voxel_mm: float | None = None,
        sites_file: str | None = None,
        rescans: str = "target",
    ) -> None:
        self.profile = profile
        self.seed = seed
        self.n_subjects = n_subjects
        self.voxel_mm = voxel_mm
        self.sites_file = sites_file
        self.rescans = rescans

    # -- helpers ----------------------------------------------------------------
    def _table(self) -> tuple[list[sim.SiteSpec], dict[str, Any]]:
        return sim.resolve_sites(self.sites_file)

    def _resolved(self) -> tuple[int, float]:
        if self.profile not in sim.PROFILES:
            raise ConfigError(
                f"dataset {self.name!r}: unknown profile {self.profile!r}; choose one of: {', '.join(sim.PROFILES)}"
            )
        prof = sim.PROFILES[self.profile]
        if self.rescans not in RESCAN_CHOICES:
            raise ConfigError(
                f"dataset {self.name!r}: parameter 'rescans' must be one of {', '.join(RESCAN_CHOICES)}, "
                f"got {self.rescans!r}"
            )
        n = prof.n_subjects if self.n_subjects is None else int(self.n_subjects)
        v = prof.voxel_mm if self.voxel_mm is None else float(self.voxel_mm)
        return n, v

    # -- contract -----------------------------------------------------------------
    def fingerprint(self) -> str:
        """Simulator version, resolved parameters and hashes of the site tables: no simulation."""
        n, v = self._resolved()
        self._table()  # validates the site file: a broken table fails here, early and cheaply
        blob = {
            "dataset": self.name,
            "simulator": sim.SIMULATOR_VERSION,
            "nilearn": _package_version("nilearn"),  # ships the template the anatomy comes from
            "profile": self.profile,
            "seed": int(self.seed),
            "n_subjects": n,
            "voxel_mm": v,
            "sites": _file_digest(sim.DEFAULT_SITES_FILE),
            "user_sites": _file_digest(Path(self.sites_file)) if self.sites_file else None,
            "rescans": self.rescans,
        }
        digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.name}-{self.profile}-{digest}"

    def load(self) -> Cohort:
        n, v = self._resolved()
        sites, defaults = self._table()
        if self.rescans == "target":
            target = defaults.get("target_site")
            rescan_sites: str | list[str] = [target] if target in {s.name for s in sites} else "none"
        else:
            rescan_sites = self.rescans
        return sim.simulate_cohort(
            self.profile, int(self.seed), n_subjects=n, sites=sites, voxel_mm=v, rescan_sites=rescan_sites
        )

    def default_target_site(self, cohort: Cohort) -> str:
        target = self._table()[1].get("target_site")
        if target in cohort.sites:
            return target
        return super().default_target_site(cohort)

    def default_unseen_sites(self, cohort: Cohort) -> list[str]:
        defaults = self._table()[1]
        unseen = list(defaults.get("unseen_sites") or [])
        if unseen and all(s in cohort.sites for s in unseen) and defaults.get("target_site") not in unseen:
            return unseen
        return super().default_unseen_sites(cohort)


@hookimpl
def harmbench_register_datasets() -> list[type[DatasetSource]]:
    return [SimulatedDataset]
