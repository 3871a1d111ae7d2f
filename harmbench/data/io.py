"""Real data in and out: NIfTI volumes, CSV manifests, BIDS-like folders, validation.

Scans are assumed skull-stripped and already in one common space (docs/design.md §3);
anything else is refused with a message that names the offending file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from harmbench.data.scan import Cohort, Scan
from harmbench.errors import DataError
from harmbench.progress import progress as progress_bar

#: Manifest columns with a fixed meaning; every other column is a covariate.
MANIFEST_RESERVED = ("subject", "site", "path", "session", "mask", "labels")
AFFINE_TOLERANCE = 1e-3
MIN_SCANS_PER_SITE = 2


# -- single volumes -------------------------------------------------------------------------------
def read_volume(path: str | Path, *, what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI volume as (array, affine); a clear `DataError` names the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read {what} as NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: {what} is {data.ndim}-D with shape {data.shape}; harmbench needs 3-D volumes")
    return data, np.asarray(img.affine, dtype=np.float64)


def read_scan(
    image: str | Path,
    *,
    subject: str,
    site: str,
    session: str | None = None,
    mask: str | Path | None = None,
    labels: str | Path | None = None,
    covariates: dict[str, Any] | None = None,
) -> Scan:
    """Load one scan (and its optional mask and label files) and check it on its own."""
    data, affine = read_volume(image)
    data = data.astype(np.float32)
    mask_arr = labels_arr = None
    if mask is not None:
        m, m_affine = read_volume(mask, what="mask")
        _check_same_grid(Path(mask), m.shape, m_affine, Path(image), data.shape, affine)
        mask_arr = m > 0
    if labels is not None:
        lab, l_affine = read_volume(labels, what="labels")
        _check_same_grid(Path(labels), lab.shape, l_affine, Path(image), data.shape, affine)
        if not np.all(np.isin(np.unique(lab), [0, 1, 2, 3])):
            raise DataError(f"{labels}: tissue labels must be 0 background, 1 CSF, 2 GM, 3 WM")
        labels_arr = lab.astype(np.uint8)
    scan = Scan(
        data=data,
        affine=affine,
        subject=str(subject),
        site=str(site),
        session=session,
        mask=mask_arr,
        labels=labels_arr,
        covariates=dict(covariates or {}),
        source=str(image),
    )
    check_scan(scan)
    return scan


def _check_same_grid(path: Path, shape: tuple, affine: np.ndarray, ref: Path, ref_shape: tuple, ref_affine) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(f"{path}: shape {tuple(shape)} differs from {ref} {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE):
        raise DataError(f"{path}: affine differs from {ref}; all scans must be in one common space")


def check_scan(scan: Scan) -> None:
    """Per-scan checks: 3-D, finite, mask non-empty and matching."""
    where = scan.describe()
    if scan.data.ndim != 3:
        raise DataError(f"{where}: image is {scan.data.ndim}-D; harmbench needs 3-D volumes")
    if not np.all(np.isfinite(scan.data)):
        raise DataError(f"{where}: image contains NaN or infinite values")
    if scan.mask is not None:
        if scan.mask.shape != scan.data.shape:
            raise DataError(f"{where}: mask shape {scan.mask.shape} differs from image shape {scan.data.shape}")
        if not scan.mask.any():
            raise DataError(f"{where}: brain mask is empty")
    elif not np.any(scan.data != 0):
        raise DataError(f"{where}: image is all zero (no brain voxels)")
    if scan.labels is not None and scan.labels.shape != scan.data.shape:
        raise DataError(f"{where}: labels shape {scan.labels.shape} differs from image shape {scan.data.shape}")


def validate_cohort(cohort: Cohort, *, min_scans_per_site: int = MIN_SCANS_PER_SITE) -> Cohort:
    """Cohort-level checks (docs/design.md §3): one common grid, enough scans per site. Returns the cohort."""
    if len(cohort) == 0:
        raise DataError(f"dataset {cohort.name!r} has no scans")
    first = cohort.scans[0]
    for scan in cohort.scans:
        check_scan(scan)
        if scan.shape != first.shape:
            raise DataError(
                f"{scan.describe()}: shape {scan.shape} differs from {first.describe()} {first.shape}; "
                "all scans must be in one common space"
            )
        if not np.allclose(scan.affine, first.affine, atol=AFFINE_TOLERANCE):
            raise DataError(
                f"{scan.describe()}: affine differs from {first.describe()}; all scans must be in one common space"
            )
    for site in cohort.sites:
        scans = cohort.by_site(site)
        if len(scans) < min_scans_per_site:
            names = ", ".join(s.describe() for s in scans)
            raise DataError(
                f"site {site!r} has only {len(scans)} scan(s) ({names}); at least {min_scans_per_site} are needed"
            )
    return cohort


# -- CSV manifest ---------------------------------------------------------------------------------
def _covariate_value(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def load_manifest(path: str | Path, *, progress: bool | None = None) -> Cohort:
    """Load a CSV (or TSV) manifest: columns ``subject, site, path``, optional ``session, mask,
    labels``, every other column a covariate. Relative paths resolve against the manifest's folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype={"subject": str, "site": str, "session": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse manifest ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("subject", "site", "path") if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: manifest has no {', '.join(repr(c) for c in missing)} column "
            f"(found: {', '.join(table.columns) or 'none'})"
        )
    for column in ("subject", "site", "path"):
        empty = table[column].isna()
        if empty.any():
            raise DataError(f"{path}: row {int(empty.idxmax()) + 2} has an empty {column!r}")
    covariate_columns = [c for c in table.columns if c not in MANIFEST_RESERVED]
    base = path.parent

    def resolve(value: Any) -> Path | None:
        if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
            return None
        p = Path(str(value).strip())
        return p if p.is_absolute() else base / p

    scans = []
    rows = table.to_dict("records")
    for row in progress_bar(rows, enabled=progress, desc=f"loading {path.name}", unit="scan"):
        session = row.get("session")
        session = None if session is None or (isinstance(session, float) and np.isnan(session)) else str(session)
        scans.append(
            read_scan(
                resolve(row["path"]),
                subject=row["subject"],
                site=row["site"],
                session=session,
                mask=resolve(row.get("mask")),
                labels=resolve(row.get("labels")),
                covariates={c: _covariate_value(row[c]) for c in covariate_columns},
            )
        )
    return validate_cohort(Cohort(scans, name=path.stem))


# -- BIDS-like folders ----------------------------------------------------------------------------
_ENTITY = re.compile(r"(sub|ses)-([A-Za-z0-9]+)")


def _bids_label(text: str) -> str:
    """BIDS labels are alphanumeric: ``ge-1.5t-spgr`` → ``ge15tspgr``."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot parse TSV ({exc})") from exc


def _typed(value: str) -> Any:
    if value in ("", "n/a"):
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def _derivative(root: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    derivatives = root / "derivatives"
    if not derivatives.is_dir():
        return None
    for suffix in suffixes:
        found = sorted(derivatives.rglob(f"{stem}{suffix}"))
        if found:
            return found[0]
    return None


def load_bids(root: str | Path, *, progress: bool | None = None) -> Cohort:
    """Load a BIDS-like folder.

    Sites come from ``sub-*/sub-*_sessions.tsv`` (``session_id, site``) or,
    without sessions, from ``participants.tsv`` (``participant_id, site``).
    An optional ``session`` column of the sessions file names each scan's
    session (``rescan`` for a repeat at the same site; ``n/a`` for none).
    Masks (``*_desc-brain_mask.nii.gz``) and tissue labels (``*_dseg.nii.gz``)
    are looked up under ``derivatives/``. Participant columns other than
    ``participant_id``/``site`` are covariates.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    participants_file = root / "participants.tsv"
    participants: dict[str, dict[str, str]] = {}
    if participants_file.exists():
        table = _read_tsv(participants_file)
        if "participant_id" not in table.columns:
            raise DataError(f"{participants_file}: no 'participant_id' column")
        participants = {r["participant_id"]: r for r in table.to_dict("records")}
    images = sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*"))
    if not images:
        raise DataError(f"{root}: no sub-*/[ses-*/]anat/*_T1w.nii.gz images found")
    records = []
    for image in images:
        entities = dict(_ENTITY.findall(image.name))
        subject = f"sub-{entities['sub']}"
        session = f"ses-{entities['ses']}" if "ses" in entities else None
        prow = participants.get(subject, {})
        site = None
        named_session: str | bool | None = False  # False: the sessions file does not name sessions
        if session is not None:
            sessions_file = root / subject / f"{subject}_sessions.tsv"
            if sessions_file.exists():
                srows = _read_tsv(sessions_file)
                match = srows[srows["session_id"] == session] if "session_id" in srows.columns else srows[:0]
                if len(match) and "site" in srows.columns:
                    site = match.iloc[0]["site"]
                if len(match) and "session" in srows.columns:
                    named_session = _typed(match.iloc[0]["session"])
        if site is None:
            site = prow.get("site") or None
        if site is None:
            raise DataError(
                f"{image}: no site for {subject}{' ' + session if session else ''}; add a 'site' column to "
                f"{subject}/{subject}_sessions.tsv or participants.tsv"
            )
        covariates = {k: _typed(v) for k, v in prow.items() if k not in ("participant_id", "site")}
        stem = image.name.split("_T1w")[0]
        records.append((image, subject, site, session, named_session, stem, covariates))
    pairs = [(r[1], r[2]) for r in records]
    scans = []
    for image, subject, site, session, named_session, stem, covariates in progress_bar(
        records, enabled=progress, desc=f"loading {root.name}", unit="scan"
    ):
        if named_session is not False:
            session = None if named_session is None else str(named_session)
        elif pairs.count((subject, site)) == 1:
            # the session is only part of a scan's identity when a subject has several at one site
            session = None
        scans.append(
            read_scan(
                image,
                subject=subject,
                site=site,
                session=session,
                mask=_derivative(root, stem, ("_desc-brain_mask.nii.gz", "_desc-brain_mask.nii", "_mask.nii.gz")),
                labels=_derivative(root, stem, ("_dseg.nii.gz", "_dseg.nii")),
                covariates={k: v for k, v in covariates.items() if v is not None},
            )
        )
    return validate_cohort(Cohort(scans, name=root.name))


def load_path(path: str | Path, *, progress: bool | None = None) -> Cohort:
    """A folder is read as BIDS-like, a ``.csv``/``.tsv`` file as a manifest."""
    path = Path(path)
    if path.is_dir():
        return load_bids(path, progress=progress)
    if path.suffix in (".csv", ".tsv"):
        return load_manifest(path, progress=progress)
    if not path.exists():
        raise DataError(f"{path}: no such dataset folder or manifest")
    raise DataError(f"{path}: a dataset is a BIDS-like folder or a .csv/.tsv manifest")


def path_fingerprint(path: str | Path) -> str:
    """Cheap identity of on-disk data: every file's name, size and modification time."""
    path = Path(path).resolve()
    files: Iterable[Path] = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    if path.is_file():  # a manifest points at images elsewhere
        try:
            table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            table = pd.DataFrame()
        for column in ("path", "mask", "labels"):
            for value in table.get(column, pd.Series(dtype=str)).dropna():
                p = Path(value) if Path(value).is_absolute() else path.parent / value
                if p.exists():
                    st = p.stat()
                    digest.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def write_bids(cohort: Cohort, out: str | Path, *, progress: bool | None = None) -> Path:
    """Write a cohort as a BIDS-like folder that `load_bids` reads back unchanged.

    Each scan becomes ``sub-X/ses-<site>/anat/sub-X_ses-<site>_T1w.nii.gz``;
    ``sub-X/sub-X_sessions.tsv`` maps sessions to sites and names each scan's
    session (column ``session``: ``rescan`` for a repeat, ``n/a`` for none; a
    rescan's folder is ``ses-<site>rescan``); masks and labels go to
    ``derivatives/harmbench/``; per-subject covariates to ``participants.tsv``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels_of = {s: _bids_label(s) for s in cohort.sites}
    if len(set(labels_of.values())) != len(labels_of):
        raise DataError(f"site names {sorted(labels_of)} collide once reduced to BIDS labels")
    description = {"Name": cohort.name, "BIDSVersion": "1.9.0", "GeneratedBy": [{"Name": "harmbench"}]}
    (out / "dataset_description.json").write_text(json.dumps(description) + "\n")
    participants: dict[str, dict[str, Any]] = {}
    sessions: dict[str, list[tuple[str, str, str]]] = {}
    for scan in progress_bar(cohort.scans, enabled=progress, desc=f"writing {out.name}", unit="scan"):
        subject = scan.subject if scan.subject.startswith("sub-") else f"sub-{_bids_label(scan.subject)}"
        ses = f"ses-{labels_of[scan.site]}" + (_bids_label(scan.session) if scan.session else "")
        stem = f"{subject}_{ses}"
        anat = out / subject / ses / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(scan.data.astype(np.float32), scan.affine), anat / f"{stem}_T1w.nii.gz")
        deriv = out / "derivatives" / "harmbench" / subject / ses / "anat"
        if scan.mask is not None or scan.labels is not None:
            deriv.mkdir(parents=True, exist_ok=True)
        if scan.mask is not None:
            nib.save(nib.Nifti1Image(scan.mask.astype(np.uint8), scan.affine), deriv / f"{stem}_desc-brain_mask.nii.gz")
        if scan.labels is not None:
            nib.save(nib.Nifti1Image(scan.labels.astype(np.uint8), scan.affine), deriv / f"{stem}_dseg.nii.gz")
        participants.setdefault(subject, {}).update(scan.covariates)
        sessions.setdefault(subject, []).append((ses, scan.site, scan.session or "n/a"))
    covariate_names = sorted({k for row in participants.values() for k in row})
    rows = [
        {"participant_id": subj, **{c: row.get(c, "n/a") for c in covariate_names}}
        for subj, row in participants.items()
    ]
    pd.DataFrame(rows).to_csv(out / "participants.tsv", sep="\t", index=False)
    for subject, entries in sessions.items():
        pd.DataFrame(entries, columns=["session_id", "site", "session"]).to_csv(
            out / subject / f"{subject}_sessions.tsv", sep="\t", index=False
        )
    return out


class LocalDataset:
    """A dataset on disk (``--dataset PATH``): a BIDS-like folder or a manifest file.

    Behaves like a `harmbench.api.DatasetSource` without being a plugin.
    """

    name = "local"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def get_params(self) -> dict[str, Any]:
        return {"path": self.path}

    def fingerprint(self) -> str:
        return f"local:{path_fingerprint(self.path)}"

    def load(self) -> Cohort:
        return load_path(self.path)

    def default_target_site(self, cohort: Cohort) -> str:
        # the best-covered site gives the most training data and test pairs
        counts = {site: len(cohort.by_site(site)) for site in cohort.sites}
        return max(cohort.sites, key=lambda s: (counts[s], -cohort.sites.index(s)))

    def default_unseen_sites(self, cohort: Cohort) -> list[str]:
        return []
