"""`Scan` (one 3-D volume with its metadata) and `Cohort` (a set of scans).

Tissue labels follow one convention everywhere: 0 background, 1 CSF, 2 GM, 3 WM.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

TISSUES: dict[int, str] = {1: "csf", 2: "gm", 3: "wm"}
#: Session name of a scan-rescan repeat: the same subject scanned again at the same site (new noise, new
#: head position). Rescans are the scan-rescan ceiling of the metrics; they never enter training or testing.
RESCAN_SESSION = "rescan"


def array_digest(*arrays: np.ndarray) -> str:
    """A hex digest of the arrays' shapes, dtypes and bytes: a key for results computed from image content."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Scan:
    """A skull-stripped 3-D image in the cohort's common space.

    ``data`` is float32, ``affine`` the 4x4 voxel-to-world matrix, ``mask`` a
    boolean brain mask of the same shape, ``labels`` uint8 tissue labels
    (0 background, 1 CSF, 2 GM, 3 WM) where ground truth exists.
    ``source`` names where the scan came from (a file path, or a description
    for simulated data) so that every error can point at it.
    """

    data: np.ndarray
    affine: np.ndarray
    subject: str
    site: str
    session: str | None = None
    modality: str = "T1w"
    mask: np.ndarray | None = None
    labels: np.ndarray | None = None
    covariates: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def key(self) -> str:
        """Unique name of the scan inside a cohort: ``<subject>_<site>[_<session>]``."""
        parts = [self.subject, self.site] + ([self.session] if self.session else [])
        return "_".join(parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def brain(self) -> np.ndarray:
        """Boolean brain mask; the non-zero voxels when no mask was given."""
        if self.mask is not None:
            return self.mask
        return self.data != 0

    def brain_values(self) -> np.ndarray:
        """Intensities inside the brain mask, as a 1-D float64 array."""
        return self.data[self.brain].astype(np.float64)

    def with_data(self, data: np.ndarray) -> Scan:
        """A copy of this scan with new voxel values and all metadata kept."""
        return dataclasses.replace(self, data=np.asarray(data, dtype=np.float32))

    def describe(self) -> str:
        return self.source or self.key

    def read_only(self) -> Scan:
        """This scan with read-only views of ``data``, ``affine``, ``mask`` and ``labels`` (no copy).

        The runner hands every plugin read-only scans, so a plugin that writes into its input (``scan.data *=
        2``) fails its own cell with numpy's "assignment destination is read-only" instead of silently
        changing what the next plugin sees. Views leave the arrays' owner free to write its own copy.
        A plugin that needs scratch space copies (``scan.with_data(scan.data.copy())``).
        """

        def view(array: np.ndarray | None) -> np.ndarray | None:
            if not isinstance(array, np.ndarray):
                return array
            out = array.view()
            out.flags.writeable = False
            return out

        return dataclasses.replace(
            self, data=view(self.data), affine=view(self.affine), mask=view(self.mask), labels=view(self.labels)
        )


class Cohort:
    """An ordered set of scans with a tidy manifest (one row per scan).

    The manifest has columns ``subject, site, session, source`` plus one column
    per covariate; row ``i`` describes ``scans[i]``.
    """

    def __init__(self, scans: Iterable[Scan], name: str = "cohort") -> None:
        self.scans: list[Scan] = list(scans)
        self.name = name
        keys = [s.key for s in self.scans]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"cohort {name!r} has duplicate scans: {', '.join(dup[:5])}")

    def __len__(self) -> int:
        return len(self.scans)

    def __iter__(self) -> Iterator[Scan]:
        return iter(self.scans)

    def __getitem__(self, index: int) -> Scan:
        return self.scans[index]

    def __repr__(self) -> str:
        return f"Cohort({self.name!r}, scans={len(self)}, sites={self.sites})"

    @property
    def manifest(self) -> pd.DataFrame:
        covariate_names = sorted({k for s in self.scans for k in s.covariates})
        rows = []
        for s in self.scans:
            row = {"subject": s.subject, "site": s.site, "session": s.session, "source": s.source}
            row.update({c: s.covariates.get(c) for c in covariate_names})
            rows.append(row)
        return pd.DataFrame(rows, columns=["subject", "site", "session", "source", *covariate_names])

    @property
    def sites(self) -> list[str]:
        """Site names in order of first appearance."""
        return list(dict.fromkeys(s.site for s in self.scans))

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(s.subject for s in self.scans))

    def by_site(self, site: str) -> list[Scan]:
        return [s for s in self.scans if s.site == site]

    def filter(self, keep: Callable[[Scan], bool], name: str | None = None) -> Cohort:
        return Cohort([s for s in self.scans if keep(s)], name=name or self.name)

    def find(self, subject: str, site: str) -> Scan | None:
        """The subject's first scan at ``site`` that is not a rescan (None if there is none)."""
        for s in self.scans:
            if s.subject == subject and s.site == site and s.session != RESCAN_SESSION:
                return s
        return None

    def find_rescan(self, subject: str, site: str) -> Scan | None:
        """The subject's rescan (``session == RESCAN_SESSION``) at ``site``, or None."""
        for s in self.scans:
            if s.subject == subject and s.site == site and s.session == RESCAN_SESSION:
                return s
        return None

    def read_only(self) -> Cohort:
        """The same cohort with every scan's arrays as read-only views (`Scan.read_only`)."""
        return Cohort([scan.read_only() for scan in self.scans], name=self.name)

    def without_rescans(self) -> Cohort:
        return self.filter(lambda s: s.session != RESCAN_SESSION)

    def traveling_subjects(self) -> list[str]:
        """Subjects scanned at two or more sites (the traveling subjects)."""
        sites_of: dict[str, set[str]] = {}
        for s in self.scans:
            sites_of.setdefault(s.subject, set()).add(s.site)
        return [subj for subj, sites in sites_of.items() if len(sites) >= 2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.scans[0].shape

    @property
    def affine(self) -> np.ndarray:
        return self.scans[0].affine

    def common_mask(self) -> np.ndarray:
        """Voxels inside every scan's brain mask."""
        mask = np.ones(self.shape, dtype=bool)
        for s in self.scans:
            mask &= s.brain
        return mask

    def union_mask(self) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        for s in self.scans:
            mask |= s.brain
        return mask


def stack_brain(scans: Sequence[Scan], mask: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Scans × voxels matrix of the voxels in ``mask``, filled row by row (one copy)."""
    out = np.empty((len(scans), int(mask.sum())), dtype=dtype)
    for i, s in enumerate(scans):
        out[i] = s.data[mask]
    return out
