"""`harmbench-sim`: a simulated traveling-subject cohort (docs/design.md §3).

Anatomy comes from the MNI152 2009 template that nilearn ships inside its
wheel (GM and WM probability maps and the brain mask; CSF = mask − GM − WM,
renormalised), so nothing is downloaded. Each subject is a smooth random
deformation of that anatomy with its own tissue properties, cortical thickness
(a GM/WM boundary shift), ventricle size (a local dilation) and global atrophy,
from documented ranges (see the constants below). Each site is a scanner model
from ``sites.toml`` (every parameter there has its source):

* tissue T1 / T2* depend on the field strength B0 (values at 1.5 T and 3 T,
  a power law in B0 through them elsewhere — Rooney et al. 2007, MRM 57:308;
  Wansapura et al. 1999, JMRI 9:531; T2*: Peters et al. 2007, MRI 25:748);
* the sequence gives each tissue a signal: a steady-state MPRAGE model
  (Deichmann et al. 2000, NeuroImage 12:112; Wang et al. 2014, MRM 71:1760)
  or the spoiled gradient-echo (SPGR/FLASH) steady-state equation
  ``S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE / T2*)``, with the
  flip angle scaled voxel by voxel by the transmit (B1+) field, so the
  transmit field changes contrast, not only brightness;
* partial volume: a voxel's signal is the sum of its tissue fractions times
  the tissue signals, on an object grid finer than the common grid along z;
* a receive (B1−) sensitivity drawn per scan: the site's coil pattern seen
  from the head's own position and size in the coil, plus a per-scan
  perturbation;
* the acquisition: k-space truncated to the site's voxel size along each axis
  (blur and Gibbs ringing) with an optional vendor window, then averaged onto
  the common grid; a vendor gain; Rician magnitude noise (Gudbjartsson & Patz
  1995, MRM 34:910) scaled by a parallel-imaging g-factor map.

Every subject is scanned at every site, and again at the rescan sites (session
``"rescan"``: new head position, fields and noise). Labels and mask of a
subject are the same array in every scan; the anatomy stays on the common
grid as if registered.

All randomness comes from ``numpy.random.Generator`` objects seeded with
``SeedSequence`` entropy ``[seed, stream, subject_index, ...]``, so a subject's
scans depend only on the seed, its index and the site — not on how many
subjects are simulated, nor on which other sites are in the table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from joblib import delayed
from scipy import fft as scipy_fft
from scipy import ndimage

from harmbench.data.scan import RESCAN_SESSION, Cohort, Scan
from harmbench.errors import ConfigError
from harmbench.parallel import caller_blas_threads, check_jobs, with_blas_threads, worker_pool
from harmbench.progress import progress as progress_bar

__all__ = [
    "COHORT_NAME",
    "DEFAULT_SITES_FILE",
    "DEFAULT_TARGET_SITE",
    "DEFAULT_UNSEEN_SITES",
    "PROFILES",
    "SIMULATOR_VERSION",
    "Profile",
    "SiteSpec",
    "default_sites",
    "load_sites",
    "merge_sites",
    "resolve_sites",
    "simulate_cohort",
    "simulate_subject",
    "simulation_grid",
    "subject_id",
    "tissue_signals",
]

#: Bump whenever the simulated data for a given (profile, seed, sites) changes.
SIMULATOR_VERSION = "2"
COHORT_NAME = "harmbench-sim"
DEFAULT_SITES_FILE = Path(__file__).with_name("sites.toml")


# ----------------------------------------------------------------------------
# profiles
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """A cohort size: isotropic voxel size of the common grid and number of subjects."""

    name: str
    voxel_mm: float
    n_subjects: int
    description: str


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", 4.0, 16, "4 mm isotropic, 16 subjects: CI and laptops (seconds)"),
    "default": Profile(
        "default", 3.0, 64, "3 mm isotropic, 64 subjects: `harmbench run`'s cohort (30 test + 34 training subjects)"
    ),
    "standard": Profile("standard", 2.0, 24, "2 mm isotropic, 24 subjects: a workstation (minutes)"),
    "full": Profile("full", 1.0, 40, "1 mm isotropic, 40 subjects: the template's native grid, GPU-sized"),
}


def _profile(profile: str) -> Profile:
    try:
        return PROFILES[profile]
    except KeyError:
        raise ConfigError(f"unknown simulation profile {profile!r}; choose one of: {', '.join(PROFILES)}") from None


def _voxel_size(profile: str, voxel_mm: float | None) -> float:
    v = _profile(profile).voxel_mm if voxel_mm is None else float(voxel_mm)
    if not (math.isfinite(v) and 0.5 <= v <= 16.0):
        raise ConfigError(f"voxel_mm must be between 0.5 and 16 mm, got {voxel_mm!r}")
    return v


def subject_id(index: int) -> str:
    """Name of the subject with 0-based ``index``: ``sub-001`` for index 0."""
    return f"sub-{index + 1:03d}"


# ----------------------------------------------------------------------------
# tissue properties
# ----------------------------------------------------------------------------
# Order of the tissue axis everywhere in this module (label = position + 1).
_TISSUES = ("csf", "gm", "wm")

# T1 (ms) at 1.5 T and 3 T: GM/WM close to Wansapura et al. 1999 and Stanisz et
# al. 2005; CSF barely depends on B0. Between and beyond these two fields the
# power law T1 ∝ B0^β (Rooney et al. 2007) is used, which extrapolates sensibly
# to 7 T (WM ≈ 1.13 s, GM ≈ 1.9 s) where a straight line would not.
_T1_MS = {1.5: (4000.0, 1150.0, 700.0), 3.0: (4200.0, 1450.0, 870.0)}
# T2* (ms): GM/WM from Peters et al. 2007; CSF long and only loosely known.
_T2S_MS = {1.5: (400.0, 84.0, 66.0), 3.0: (250.0, 66.0, 53.0)}
# Proton density relative to CSF (water content).
_PD = np.array([1.0, 0.80, 0.70])
# Fraction of full inversion the MPRAGE adiabatic pulse achieves.
_INVERSION_EFFICIENCY = 0.96


def _power_law(table: Mapping[float, tuple[float, ...]], b0: float) -> np.ndarray:
    lo, hi = np.array(table[1.5]), np.array(table[3.0])
    beta = np.log(hi / lo) / np.log(3.0 / 1.5)
    return lo * (b0 / 1.5) ** beta


def relaxation_times(field_t: float) -> tuple[np.ndarray, np.ndarray]:
    """Nominal (T1, T2*) in ms of CSF, GM, WM at field strength ``field_t`` tesla."""
    return _power_law(_T1_MS, field_t), _power_law(_T2S_MS, field_t)


# ----------------------------------------------------------------------------
# sites
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteSpec:
    """One simulated scanner: field strength, sequence and image-formation parameters.

    Times in ms, angles in degrees, ``voxel_mm`` the acquired voxel size along
    the grid axes (x, y, z; 0 = no k-space truncation along that axis). ``ti_ms``,
    ``echo_spacing_ms`` and ``train_length`` are MPRAGE-only. See ``sites.toml``
    for the meaning and source of every field.
    """

    name: str
    field_t: float
    sequence: str
    tr_ms: float
    te_ms: float
    flip_deg: float
    voxel_mm: tuple[float, float, float]
    bias: float
    noise: float
    gain: float
    transmit: float = 0.0
    g_factor: float = 1.0
    apodization: str = "none"
    ti_ms: float | None = None
    echo_spacing_ms: float | None = None
    train_length: int | None = None
    vendor: str = ""
    description: str = ""

    @property
    def key(self) -> int:
        """Stable integer derived from the name: seeds the site's random streams."""
        return zlib.crc32(self.name.encode())


_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")
_COMMON_FIELDS = ("name", "field_t", "sequence", "tr_ms", "te_ms", "flip_deg", "voxel_mm", "bias", "noise", "gain")
_MPRAGE_FIELDS = ("ti_ms", "echo_spacing_ms")
_OPTIONAL_FIELDS = ("vendor", "description", "train_length", "transmit", "g_factor", "apodization")
#: k-space windows a reconstruction may apply over the acquired band (see `_apodization`).
APODIZATIONS = ("none", "hamming", "fermi")
_DEFAULT_TRAIN_LENGTH = 160


def _number(where: str, key: str, value: Any, lo: float, hi: float, *, lo_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{where}: field {key!r} must be a number in {bracket}{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _parse_site(raw: Any, where: str) -> SiteSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each [[site]] must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise ConfigError(f"{where}: field 'name' must be letters, digits, '.' or '-' (no '_' or spaces), got {name!r}")
    where = f"{where}: site {name!r}"
    sequence = raw.get("sequence")
    if sequence not in ("mprage", "spgr"):
        raise ConfigError(f"{where}: field 'sequence' must be 'mprage' or 'spgr', got {sequence!r}")
    allowed = set(_COMMON_FIELDS) | set(_OPTIONAL_FIELDS) | (set(_MPRAGE_FIELDS) if sequence == "mprage" else set())
    if "fwhm_mm" in raw:
        raise ConfigError(
            f"{where}: field 'fwhm_mm' was replaced by 'voxel_mm' (the acquired voxel size; the simulator truncates "
            "k-space to it) in simulator version 2"
        )
    for key in raw:
        if key not in allowed:
            extra = " (MPRAGE only)" if key in _MPRAGE_FIELDS else ""
            raise ConfigError(f"{where}: unknown field {key!r}{extra}; allowed: {', '.join(sorted(allowed))}")
    for key in _COMMON_FIELDS + (_MPRAGE_FIELDS if sequence == "mprage" else ()):
        if key not in raw:
            raise ConfigError(f"{where}: missing field {key!r}")
    for key in ("vendor", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise ConfigError(f"{where}: field {key!r} must be a string, got {raw[key]!r}")

    voxel = raw["voxel_mm"]
    if not (isinstance(voxel, list) and len(voxel) == 3):
        raise ConfigError(f"{where}: field 'voxel_mm' must be a list of 3 numbers (x, y, z), got {voxel!r}")
    voxel_t = tuple(_number(where, "voxel_mm", f, 0.0, 20.0) for f in voxel)
    apodization = raw.get("apodization", "none")
    if apodization not in APODIZATIONS:
        raise ConfigError(f"{where}: field 'apodization' must be one of {', '.join(APODIZATIONS)}, got {apodization!r}")

    spec = SiteSpec(
        name=name,
        field_t=_number(where, "field_t", raw["field_t"], 0.0, 12.0),
        sequence=sequence,
        tr_ms=_number(where, "tr_ms", raw["tr_ms"], 0.0, 20000.0),
        te_ms=_number(where, "te_ms", raw["te_ms"], 0.0, 100.0),
        flip_deg=_number(where, "flip_deg", raw["flip_deg"], 0.0, 90.0),
        voxel_mm=voxel_t,  # type: ignore[arg-type]
        bias=_number(where, "bias", raw["bias"], 0.0, 1.0, lo_open=False),
        noise=_number(where, "noise", raw["noise"], 0.0, 0.5, lo_open=False),
        gain=_number(where, "gain", raw["gain"], 0.0, 1e9),
        transmit=_number(where, "transmit", raw.get("transmit", 0.0), 0.0, 0.5, lo_open=False),
        g_factor=_number(where, "g_factor", raw.get("g_factor", 1.0), 1.0, 5.0, lo_open=False),
        apodization=apodization,
        vendor=raw.get("vendor", ""),
        description=raw.get("description", ""),
    )
    if sequence == "spgr":
        if "train_length" in raw:
            raise ConfigError(f"{where}: field 'train_length' is MPRAGE only")
        if spec.te_ms >= spec.tr_ms:
            raise ConfigError(f"{where}: field 'te_ms' ({spec.te_ms:g}) must be shorter than 'tr_ms' ({spec.tr_ms:g})")
    else:
        train = raw.get("train_length", _DEFAULT_TRAIN_LENGTH)
        if not (isinstance(train, int) and not isinstance(train, bool) and 1 <= train <= 1024):
            raise ConfigError(f"{where}: field 'train_length' must be an integer in [1, 1024], got {train!r}")
        ti = _number(where, "ti_ms", raw["ti_ms"], 0.0, 10000.0)
        esp = _number(where, "echo_spacing_ms", raw["echo_spacing_ms"], 0.0, 100.0)
        spec = dataclasses.replace(spec, ti_ms=ti, echo_spacing_ms=esp, train_length=train)
        half = train / 2 * esp
        if spec.te_ms >= esp:
            raise ConfigError(f"{where}: field 'te_ms' ({spec.te_ms:g}) must be shorter than 'echo_spacing_ms'")
        if ti <= half:
            raise ConfigError(
                f"{where}: field 'ti_ms' ({ti:g}) must exceed half the readout train "
                f"(train_length/2 × echo_spacing_ms = {half:g} ms)"
            )
        if spec.tr_ms <= ti + half:
            raise ConfigError(
                f"{where}: field 'tr_ms' ({spec.tr_ms:g}) must exceed ti_ms + half the readout train ({ti + half:g} ms)"
            )
    signal = tissue_signals(spec)
    if not (signal[2] > signal[1] > signal[0] >= 0):
        raise ConfigError(
            f"{where}: these sequence parameters do not give a T1-weighted contrast (WM > GM > CSF): "
            f"CSF {signal[0]:.4g}, GM {signal[1]:.4g}, WM {signal[2]:.4g}"
        )
    return spec


def load_sites(path: str | Path | None = None) -> tuple[list[SiteSpec], dict[str, Any]]:
    """Read a site table (``sites.toml`` schema): its sites and its ``[defaults]``.

    ``path=None`` reads the built-in table. The defaults dict may hold
    ``target_site`` (str), ``unseen_sites`` (list of str) and
    ``include_default_sites`` (bool). Any invalid field raises ``ConfigError``
    naming the file, the site and the field.
    """
    path = DEFAULT_SITES_FILE if path is None else Path(path)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: site table not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"site", "defaults"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; expected [defaults], [[site]]"
        )
    raw_sites = doc.get("site", [])
    if not isinstance(raw_sites, list):
        raise ConfigError(f"{path}: 'site' must be an array of tables ([[site]])")
    sites = [_parse_site(raw, str(path)) for raw in raw_sites]
    names = [s.name for s in sites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: site name(s) defined twice: {', '.join(dup)}")

    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a table")
    allowed = {"target_site", "unseen_sites", "include_default_sites"}
    for key in defaults:
        if key not in allowed:
            raise ConfigError(f"{path}: [defaults]: unknown field {key!r}; allowed: {', '.join(sorted(allowed))}")
    if "target_site" in defaults and not isinstance(defaults["target_site"], str):
        raise ConfigError(f"{path}: [defaults]: field 'target_site' must be a site name")
    unseen = defaults.get("unseen_sites", [])
    if not (isinstance(unseen, list) and all(isinstance(u, str) for u in unseen)):
        raise ConfigError(f"{path}: [defaults]: field 'unseen_sites' must be a list of site names")
    if not isinstance(defaults.get("include_default_sites", True), bool):
        raise ConfigError(f"{path}: [defaults]: field 'include_default_sites' must be true or false")
    return sites, dict(defaults)


def merge_sites(base: Sequence[SiteSpec], extra: Sequence[SiteSpec]) -> list[SiteSpec]:
    """``base`` with each site of ``extra`` replacing the same-named one in place, or appended."""
    out = list(base)
    index = {s.name: i for i, s in enumerate(out)}
    for site in extra:
        if site.name in index:
            out[index[site.name]] = site
        else:
            index[site.name] = len(out)
            out.append(site)
    return out


def _check_defaults(defaults: Mapping[str, Any], sites: Sequence[SiteSpec], where: str) -> None:
    names = {s.name for s in sites}
    for key, wanted in (("target_site", [defaults.get("target_site")]), ("unseen_sites", defaults.get("unseen_sites"))):
        for name in wanted or []:
            if name is not None and name not in names:
                raise ConfigError(f"{where}: [defaults]: field {key!r} names unknown site {name!r}")
    if defaults.get("target_site") in (defaults.get("unseen_sites") or []):
        raise ConfigError(f"{where}: [defaults]: the target site cannot be an unseen site")


def resolve_sites(sites_file: str | Path | None = None) -> tuple[list[SiteSpec], dict[str, Any]]:
    """The built-in sites merged with a user table, and the effective defaults.

    The user's ``[defaults]`` override the built-in ones key by key; with
    ``include_default_sites = false`` only the user's sites are used.
    """
    sites, defaults = load_sites(None)
    if sites_file is None:
        return sites, defaults
    extra, user_defaults = load_sites(sites_file)
    if not user_defaults.pop("include_default_sites", True):
        sites, defaults = [], {}
    sites = merge_sites(sites, extra)
    if not sites:
        raise ConfigError(f"{sites_file}: the site table is empty")
    defaults = {**defaults, **user_defaults}
    _check_defaults(defaults, sites, str(sites_file))
    return sites, defaults


@functools.lru_cache(maxsize=1)
def _builtin_table() -> tuple[tuple[SiteSpec, ...], tuple[str, tuple[str, ...]]]:
    sites, defaults = load_sites(None)
    _check_defaults(defaults, sites, str(DEFAULT_SITES_FILE))
    return tuple(sites), (defaults["target_site"], tuple(defaults["unseen_sites"]))


def default_sites() -> list[SiteSpec]:
    """The built-in site table (``sites.toml``)."""
    return list(_builtin_table()[0])


# ----------------------------------------------------------------------------
# signal equations
# ----------------------------------------------------------------------------
def _spgr(site: SiteSpec, t1: np.ndarray, t2s: np.ndarray, pd: np.ndarray, flip_scale: np.ndarray) -> np.ndarray:
    """Spoiled gradient-echo steady state: PD · sin α · (1 − E1)/(1 − cos α · E1) · exp(−TE/T2*)."""
    alpha = math.radians(site.flip_deg) * flip_scale
    e1 = np.exp(-site.tr_ms / t1)
    return pd * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1) * np.exp(-site.te_ms / t2s)


def _mprage(site: SiteSpec, t1: np.ndarray, t2s: np.ndarray, pd: np.ndarray, flip_scale: np.ndarray) -> np.ndarray:
    """Steady-state MPRAGE magnitude at the centre of k-space (linear ordering).

    One shot: inversion (efficiency δ), free recovery for TD1 = TI − n/2·τ, a
    train of n low-angle readouts spaced τ (which drive Mz towards the FLASH
    steady state M∞ = (1 − E)/(1 − cos α·E), E = exp(−τ/T1)), free recovery
    for TD2 = TR − TI − n/2·τ, then the next inversion. Requiring Mz before
    each inversion to repeat gives the steady state (Deichmann et al. 2000;
    the same bookkeeping as Wang et al. 2014). The image contrast is that of
    the centre readout (k = n/2), as in a linear phase-encoding order. The
    transmit field scales the readout flip α; the adiabatic inversion is taken
    as B1-insensitive (that is what adiabatic pulses are designed for).
    """
    assert site.ti_ms is not None and site.echo_spacing_ms is not None and site.train_length is not None
    alpha = math.radians(site.flip_deg) * flip_scale
    tau, n = site.echo_spacing_ms, site.train_length
    td1 = site.ti_ms - n / 2 * tau
    td2 = site.tr_ms - site.ti_ms - n / 2 * tau
    e = np.exp(-tau / t1)
    m_inf = (1 - e) / (1 - np.cos(alpha) * e)
    decay = np.cos(alpha) * e
    q = decay**n
    e1, e2 = np.exp(-td1 / t1), np.exp(-td2 / t1)
    delta = _INVERSION_EFFICIENCY
    # M_pre = (1−e2) + e2·[M∞(1−q) + q·((1−e1) − δ·e1·M_pre)], solved for M_pre.
    m_pre = ((1 - e2) + e2 * m_inf * (1 - q) + e2 * q * (1 - e1)) / (1 + e2 * q * delta * e1)
    m_a = (1 - e1) - delta * e1 * m_pre
    mz_centre = m_inf + (m_a - m_inf) * decay ** (n // 2)
    return np.abs(pd * np.sin(alpha) * mz_centre * np.exp(-site.te_ms / t2s))


def tissue_signals(
    site: SiteSpec,
    t1_scale: np.ndarray | None = None,
    t2s_scale: np.ndarray | None = None,
    pd_scale: np.ndarray | None = None,
    flip_scale: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Noise-free signal (before gain) of pure CSF, GM, WM at ``site``.

    The optional ``*_scale`` arrays (length 3) are a subject's multiplicative
    deviations from the nominal tissue properties. ``flip_scale`` is the
    transmit field (actual / nominal flip angle): a scalar gives shape (3,), an
    array of shape (P,) gives (P, 3), one row per point.
    """
    t1, t2s = relaxation_times(site.field_t)
    pd = _PD.copy()
    if t1_scale is not None:
        t1 = t1 * t1_scale
    if t2s_scale is not None:
        t2s = t2s * t2s_scale
    if pd_scale is not None:
        pd = pd * pd_scale
    b1 = np.asarray(flip_scale, dtype=np.float64)
    if b1.ndim:
        b1 = b1.reshape(-1, 1)
    equation = _mprage if site.sequence == "mprage" else _spgr
    return equation(site, t1, t2s, pd, b1)


# ----------------------------------------------------------------------------
# the common grid (cached per voxel size)
# ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Grid:
    voxel_mm: float
    shape: tuple[int, int, int]
    affine: np.ndarray
    # (3, *shape) float32: fraction of each voxel that is CSF, GM, WM (sum = brain fraction).
    tissue: np.ndarray
    # MNI coordinates (mm) of the voxel centres along each axis.
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)
    # The object grid: the common grid with z subdivided into `oversample` slices, on which the subject is drawn
    # and each site's k-space acquisition is applied before the result is averaged back onto the common grid.
    oversample: int = 1
    object_tissue: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    object_axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray] = field(default=None, repr=False)  # type: ignore

    @property
    def object_spacing(self) -> tuple[float, float, float]:
        return (self.voxel_mm, self.voxel_mm, self.voxel_mm / self.oversample)


@functools.lru_cache(maxsize=2)
def _template_maps(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(tissue fractions (3, ...) float32 with CSF, GM, WM; affine) of nilearn's MNI152 2009 maps."""
    from nilearn import datasets  # slow import: only when a cohort is simulated

    mask_img = datasets.load_mni152_brain_mask(resolution=resolution)
    mask = mask_img.get_fdata() > 0.5
    gm = np.clip(datasets.load_mni152_gm_template(resolution=resolution).get_fdata(), 0, 1)
    wm = np.clip(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(), 0, 1)
    csf = np.clip(1.0 - gm - wm, 0, None)
    tissue = np.stack([csf, gm, wm]) * mask
    total = tissue.sum(axis=0)
    # Inside the mask the three fractions must sum to one; GM+WM > 1 (never seen
    # in the 2009 maps, but cheap to guard) is scaled back.
    np.divide(tissue, total, out=tissue, where=total > 0)
    return tissue.astype(np.float32), mask_img.affine.copy()


def _block_mean(a: np.ndarray, k: int | tuple[int, int, int]) -> np.ndarray:
    ks = (k, k, k) if isinstance(k, int) else k
    shape = [s // f for s, f in zip(a.shape[-3:], ks, strict=True)]
    a = a[..., : shape[0] * ks[0], : shape[1] * ks[1], : shape[2] * ks[2]]
    a = a.reshape(*a.shape[:-3], shape[0], ks[0], shape[1], ks[1], shape[2], ks[2])
    return a.mean(axis=(-5, -3, -1))


def _z_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Average ``k`` consecutive slices along the last axis (object grid → common grid)."""
    if k == 1:
        return a
    return a.reshape(*a.shape[:-1], a.shape[-1] // k, k).mean(axis=-1)


def _is_multiple(v: float, of: float) -> bool:
    r = v / of
    return abs(r - round(r)) < 1e-6 and round(r) >= 1


#: Largest z subdivision of the object grid (cost grows linearly with it).
_MAX_OVERSAMPLE = 4


@functools.lru_cache(maxsize=4)
def _grid(voxel_mm: float) -> _Grid:
    """The common grid at ``voxel_mm`` with the template's tissue fractions on it, and its object grid.

    Integer multiples of the template's 1 / 2 mm voxels are block averages
    (exact partial volumes); other sizes are Gaussian-prefiltered linear
    resamples. The grid is cropped to the brain plus a margin and padded to
    multiples of 8 voxels per axis (convenient for U-Nets); its affine is the
    true voxel-to-MNI affine.

    The object grid keeps the template's own z resolution (up to ``_MAX_OVERSAMPLE``
    slices per grid voxel): every site acquires slices of 1–3 mm, so along z
    the sites differ below a 3–4 mm grid voxel, and only an object drawn finer
    than the grid lets a thick-partition site's k-space truncation (its blur and
    Gibbs ringing) show after averaging back onto the grid. In-plane every site's
    voxel is finer than any profile's grid, so there the grid itself is enough.
    """
    integer = _is_multiple(voxel_mm, 1)
    if integer and _is_multiple(voxel_mm, 2) and voxel_mm >= 4:
        src_res = 2
    elif integer:
        src_res = 1
    else:
        src_res = 2 if voxel_mm >= 2 else 1
    tissue, src_affine = _template_maps(src_res)
    src_vox = float(src_affine[0, 0])
    origin = src_affine[:3, 3].astype(float)
    if _is_multiple(voxel_mm, src_vox):
        k = round(voxel_mm / src_vox)
        kz = max(1, min(k, _MAX_OVERSAMPLE))
        while k % kz:
            kz -= 1
        object_maps = _block_mean(tissue, (k, k, k // kz)) if k > 1 else tissue
        origin = origin + (k - 1) / 2 * src_vox
        z0_object = src_affine[2, 3] + (k // kz - 1) / 2 * src_vox
    else:
        kz = 1
        ratio = voxel_mm / src_vox
        sigma = math.sqrt(max(ratio**2 - 1, 0)) / 2.355
        shape = [int(s * src_vox // voxel_mm) for s in tissue.shape[1:]]
        origin = origin + (voxel_mm - src_vox) / 2
        coords = np.meshgrid(
            *[((np.arange(n) * voxel_mm + origin[i]) - src_affine[i, 3]) / src_vox for i, n in enumerate(shape)],
            indexing="ij",
        )
        object_maps = np.stack(
            [ndimage.map_coordinates(ndimage.gaussian_filter(t, sigma), coords, order=1) for t in tissue]
        )
        z0_object = origin[2]
    object_maps = object_maps.astype(np.float32)
    nz = object_maps.shape[-1] // kz
    object_maps = object_maps[..., : nz * kz]
    maps = _z_mean(object_maps, kz)

    # Crop to the brain with room for the deformation, then pad to multiples of 8.
    brain = maps.sum(axis=0) > 0
    margin = math.ceil(10.0 / voxel_mm)
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(brain.any(axis=other))
        lo, hi = int(idx[0]) - margin, int(idx[-1]) + 1 + margin
        size = -(-(hi - lo) // 8) * 8
        lo -= (size - (hi - lo)) // 2
        start.append(lo)
        stop.append(lo + size)
    shape = tuple(b - a for a, b in zip(start, stop, strict=True))

    def crop(src_maps: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
        lo = [a * f for a, f in zip(start, factors, strict=True)]
        hi = [b * f for b, f in zip(stop, factors, strict=True)]
        out = np.zeros((3, *[b - a for a, b in zip(lo, hi, strict=True)]), dtype=np.float32)
        n = src_maps.shape[1:]
        src = tuple(slice(max(a, 0), min(b, m)) for a, b, m in zip(lo, hi, n, strict=True))
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))
        out[(slice(None), *dst)] = src_maps[(slice(None), *src)]
        return out

    out = crop(maps, (1, 1, 1))
    object_out = crop(object_maps, (1, 1, kz))
    # The object slices are the first `kz` source slices of each grid slice; z0_object is where slice 0 sits.
    origin = origin + np.array(start) * voxel_mm
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = origin
    axes = tuple(origin[i] + np.arange(shape[i]) * voxel_mm for i in range(3))
    dz = voxel_mm / kz
    object_axes = (axes[0], axes[1], z0_object + start[2] * voxel_mm + np.arange(shape[2] * kz) * dz)
    for a in (out, object_out, affine, *axes, *object_axes):
        a.setflags(write=False)
    return _Grid(voxel_mm, shape, affine, out, axes, kz, object_out, object_axes)  # type: ignore[arg-type]


def simulation_grid(profile: str = "quick", voxel_mm: float | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-MNI affine of the simulated scans for a profile (loads the template once)."""
    g = _grid(_voxel_size(profile, voxel_mm))
    return g.shape, g.affine.copy()


# ----------------------------------------------------------------------------
# smooth fields, defined in MNI millimetres so they do not depend on the grid
# ----------------------------------------------------------------------------
# Control lattice of the smooth fields: 16 mm spacing over a box around the brain.
_LATTICE_MM = 16.0
_LATTICE_ORIGIN = np.array([-112.0, -150.0, -88.0])
_LATTICE_SHAPE = (15, 17, 15)
# Stream tags in the SeedSequence entropy, so that no two uses share random numbers.
_STREAM_SUBJECT, _STREAM_SITE, _STREAM_SCAN = 1, 2, 4
# Centre of the brain and the half-axes of the ellipsoid that normalises every field's shape (MNI mm).
_HEAD_CENTRE = np.array([0.0, -18.0, 18.0])
_HEAD_RADII = np.array([70.0, 90.0, 70.0])


@functools.lru_cache(maxsize=8)
def _lattice_weights(voxel_mm: float, on_object: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis, the matrix taking control-point values to the grid (cubic-spline interpolation).

    Spline interpolation on a tensor-product lattice is separable, so three
    small matrices replace a 3-D ``map_coordinates`` (≈10× faster at 1 mm).
    """
    grid = _grid(voxel_mm)
    axes = grid.object_axes_mm if on_object else grid.axes_mm
    weights = []
    for axis in range(3):
        n_ctrl = _LATTICE_SHAPE[axis]
        at = ((axes[axis] - _LATTICE_ORIGIN[axis]) / _LATTICE_MM)[None, :]
        w = np.stack([ndimage.map_coordinates(e, at, order=3, mode="nearest") for e in np.eye(n_ctrl)], axis=1)
        w = w.astype(np.float32)
        w.setflags(write=False)
        weights.append(w)
    return weights[0], weights[1], weights[2]


def _smooth_field(values: np.ndarray, voxel_mm: float, *, on_object: bool = False) -> np.ndarray:
    """Cubic-spline interpolation of control-point ``values`` at the grid's (or the object grid's) voxels."""
    wx, wy, wz = _lattice_weights(voxel_mm, on_object)
    out = np.tensordot(wx, np.asarray(values, dtype=np.float32), axes=(1, 0))  # (nx, Ly, Lz)
    out = np.tensordot(out, wy, axes=(1, 1))  # (nx, Lz, ny)
    out = np.tensordot(out, wz, axes=(1, 1))  # (nx, ny, nz)
    return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _lattice_points() -> np.ndarray:
    """(3, P) MNI coordinates of the control points, in lattice (C) order."""
    axes = [_LATTICE_ORIGIN[i] + _LATTICE_MM * np.arange(n) for i, n in enumerate(_LATTICE_SHAPE)]
    points = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    points.setflags(write=False)
    return points


@functools.lru_cache(maxsize=1)
def _probe() -> np.ndarray:
    """(3, Q) normalised coordinates filling the unit ball: the brain ellipsoid on which field shapes are scaled."""
    probe = np.stack(np.meshgrid(*[np.linspace(-1, 1, 21)] * 3, indexing="ij")).reshape(3, -1)
    probe = probe[:, (probe**2).sum(axis=0) <= 1]
    probe.setflags(write=False)
    return probe


def _monomials(u: np.ndarray, max_order: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, P) monomials u^a v^b w^c, 0 < a+b+c <= max_order, of coordinates ``u`` (3, P); and their orders."""
    powers = [(a, b, c) for a in range(4) for b in range(4) for c in range(4) if 0 < a + b + c <= max_order]
    terms = np.stack([u[0] ** a * u[1] ** b * u[2] ** c for a, b, c in powers])
    return terms, np.array([a + b + c for a, b, c in powers], dtype=float)


@functools.lru_cache(maxsize=4)
def _probe_monomials(max_order: int) -> np.ndarray:
    terms = _monomials(_probe(), max_order)[0]
    terms.setflags(write=False)
    return terms


def _unit_polynomial(coef: np.ndarray, max_order: int, u: np.ndarray) -> np.ndarray:
    """The polynomial with ``coef`` at ``u``, shifted and scaled so it spans [−1, 1] over the unit ball."""
    ref = coef @ _probe_monomials(max_order)
    lo, hi = float(ref.min()), float(ref.max())
    value = coef @ _monomials(u, max_order)[0]
    return np.clip((value - (lo + hi) / 2) / max((hi - lo) / 2, 1e-12), -1.5, 1.5)


# Receive field: the site's coil sensitivity is a random cubic polynomial (N3/N4 model a bias field as smooth and
# low-order), fixed per site. Each scan adds a random quadratic of this fraction of the site's strength: coil
# loading and the head's position in an array coil change the sensitivities beyond a rigid shift (assumption).
_SCAN_BIAS_FRACTION = 0.3
# Transmit field: the centre-brightening standing-wave pattern is set by the head's own dielectric properties, so
# it moves with the head (Sled & Pike 1998); the head's position in the transmit coil adds a per-scan random
# left-right / front-back / up-down tilt of this fraction of the site's amplitude (a few percent; assumption).
_TRANSMIT_TILT = 0.1
# Where the head sits in the coil, per scan: translation SD per axis (mm) and rotation SD per axis (degrees).
# Typical repositioning between sessions is a few millimetres and degrees (assumption).
_POSITION_SD_MM = 4.0
_ROTATION_SD_DEG = 3.0
# Width (in units of the brain ellipsoid) of the g-factor map's central peak.
_G_FACTOR_WIDTH = 0.5


@functools.lru_cache(maxsize=64)
def _site_coil(site_key: int, seed: int) -> np.ndarray:
    """Coefficients of the site's receive-sensitivity cubic (the coil geometry), drawn once per site and seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SITE, site_key]))
    orders = _monomials(np.zeros((3, 1)), 3)[1]
    return rng.standard_normal(len(orders)) / (1.0 + orders)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class ScanFields:
    """One scan's fields at the control points: where the head sat in the coil and what the scanner imposed there.

    ``coil_mm`` (3, P): each control point's position in the coil frame (head size, rotation and position
    applied); ``receive`` (P,): multiplicative receive sensitivity; ``transmit`` (P,): flip-angle scale;
    ``g_factor`` (P,): noise amplification.
    """

    coil_mm: np.ndarray
    receive: np.ndarray
    transmit: np.ndarray
    g_factor: np.ndarray


def scan_fields(site: SiteSpec, head_scale: np.ndarray, seed: int, rng: np.random.Generator) -> ScanFields:
    """Draw one scan's head pose and evaluate the site's receive, transmit and g-factor fields at the control points.

    The anatomy stays on the common grid (as if registered); the head moving in the coil shows as the coil-bound
    fields (receive sensitivity, g-factor) moving relative to the anatomy. The transmit pattern follows the head,
    tilted by the head's position in the coil. Draws always happen in the same order, whatever the site's
    strengths, so switching one effect off leaves every other random draw unchanged.
    """
    angles = _ROTATION_SD_DEG * rng.standard_normal(3)
    shift = _POSITION_SD_MM * rng.standard_normal(3)
    scan_orders = _monomials(np.zeros((3, 1)), 2)[1]
    scan_coef = rng.standard_normal(len(scan_orders)) / (1.0 + scan_orders)
    tilt = rng.standard_normal(3) / math.sqrt(3.0)

    lattice = _lattice_points()
    rel = (lattice - _HEAD_CENTRE[:, None]) * np.asarray(head_scale, dtype=float)[:, None]
    coil = _HEAD_CENTRE[:, None] + _rotation(angles) @ rel + shift[:, None]
    u = (coil - _HEAD_CENTRE[:, None]) / _HEAD_RADII[:, None]
    rho2 = (u**2).sum(axis=0)
    log_receive = site.bias * (
        _unit_polynomial(_site_coil(site.key, seed), 3, u) + _SCAN_BIAS_FRACTION * _unit_polynomial(scan_coef, 2, u)
    )
    head = (lattice - _HEAD_CENTRE[:, None]) / _HEAD_RADII[:, None]
    transmit = 1.0 + site.transmit * ((1.0 - 2.0 * (head**2).sum(axis=0)) + _TRANSMIT_TILT * (tilt @ u))
    g_map = 1.0 + (site.g_factor - 1.0) * np.exp(-rho2 / (2 * _G_FACTOR_WIDTH**2))
    return ScanFields(coil, np.exp(log_receive), np.clip(transmit, 0.3, 1.7), g_map)


# ----------------------------------------------------------------------------
# acquisition: k-space truncation and apodisation
# ----------------------------------------------------------------------------
_FERMI_RADIUS, _FERMI_WIDTH = 0.9, 0.05


@functools.lru_cache(maxsize=64)
def _transfer(n: int, spacing_mm: float, voxel_mm: float, apodization: str) -> np.ndarray | None:
    """The site's k-space weighting along one axis at the ``rfft`` frequencies of ``n`` samples ``spacing_mm`` apart.

    1 inside the acquired band |k| <= 1/(2·voxel), 0 beyond it (truncation: blur and Gibbs ringing), times the
    apodisation window over the band. None when it is 1 at every frequency the grid holds (nothing to do).
    ``voxel_mm <= 0`` means an ideal acquisition along that axis.
    """
    if voxel_mm <= 0:
        return None
    x = np.fft.rfftfreq(n, d=spacing_mm) * (2.0 * voxel_mm)  # frequency / band edge
    h = (x <= 1.0).astype(np.float64)
    if apodization == "hamming":
        h *= 0.54 + 0.46 * np.cos(np.pi * np.minimum(x, 1.0))
    elif apodization == "fermi":
        h *= 1.0 / (1.0 + np.exp((x - _FERMI_RADIUS) / _FERMI_WIDTH))
    if np.all(h > 1.0 - 1e-4):
        return None
    h = h.astype(np.float32)
    h.setflags(write=False)
    return h


def acquire(image: np.ndarray, spacing_mm: Sequence[float], voxel_mm: Sequence[float], apodization: str) -> np.ndarray:
    """Truncate (and window) ``image``'s k-space to the site's acquired band, axis by axis (the filter is separable).

    A 3-D Cartesian acquisition samples a box of k-space, so each axis is filtered on its own; the filter is real
    and even, so a real FFT along the axis suffices.
    """
    out = image
    for axis in range(3):
        h = _transfer(image.shape[axis], float(spacing_mm[axis]), float(voxel_mm[axis]), apodization)
        if h is None:
            continue
        spectrum = scipy_fft.rfft(out, axis=axis)
        shape = [1, 1, 1]
        shape[axis] = -1
        spectrum *= h.reshape(shape)
        out = scipy_fft.irfft(spectrum, n=image.shape[axis], axis=axis).astype(np.float32, copy=False)
    return out


# ----------------------------------------------------------------------------
# subjects
# ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Anatomy:
    """A subject's site-independent truth: fractions on the object grid, mask and labels on the common grid."""

    fractions: np.ndarray  # (3, *object shape) float32, CSF/GM/WM, normalised to the brain, 0 outside the mask
    mask: np.ndarray  # bool, common grid
    labels: np.ndarray  # uint8, common grid
    texture: np.ndarray  # float32 multiplicative PD texture, object grid
    t1_scale: np.ndarray
    t2s_scale: np.ndarray
    pd_scale: np.ndarray
    head_scale: np.ndarray
    covariates: dict[str, Any]
    variation: dict[str, float]


# Deformation: control-point displacement SD (mm) and head-size scaling SD.
_DISPLACEMENT_MM = 2.5
_SCALE_SD = 0.03
# Log-normal SD of subject tissue properties (T1, T2*, PD).
_T1_SD, _T2S_SD, _PD_SD = 0.04, 0.05, 0.02
# Smooth PD texture SD: the same at every site, so harmonizers cannot use it to tell sites apart.
_TEXTURE_SD = 0.03
# Global atrophy: fraction of GM (and a quarter as much WM) turned into CSF at age 80 relative to 20, times a
# per-subject log-normal factor. Whole-brain volume falls by roughly 0.2–0.5 %/year in healthy ageing
# (Fotenos et al. 2005, Neurology 64:1032); 12 % of GM over 60 years sits in that range.
_ATROPHY_AT_80 = 0.12
_ATROPHY_SD = 0.3
# Cortical thickness: the GM/WM boundary moves by this much (mm, outward = thinner cortex) between 20 and 80, plus
# a per-subject normal SD. Mean cortical thickness is about 2.5 mm (Fischl & Dale 2000, PNAS 97:11050) and thins
# by a few tenths of a millimetre across the adult lifespan (Salat et al. 2004, Cereb Cortex 14:721).
_THINNING_20_TO_80_MM = 0.3
_THICKNESS_SD_MM = 0.15
# Lateral ventricles: volume factor exp(log(growth)·age_fraction + SD·z), applied as a local dilation about the
# ventricles. Ventricular volume grows about two- to three-fold across adult life and varies several-fold
# between healthy adults of one age (Walhovd et al. 2005, Neurobiol Aging 26:1261).
_VENTRICLE_GROWTH_20_TO_80 = 2.5
_VENTRICLE_LOG_SD = 0.35
_VENTRICLE_CENTRE = np.array([0.0, -12.0, 15.0])
_VENTRICLE_SIGMA_MM = np.array([18.0, 28.0, 14.0])


def shift_gm_wm_boundary(fractions: np.ndarray, shift_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """Move the GM/WM boundary outward by ``shift_mm`` (negative: inward), in place; returns ``fractions``.

    First-order level-set motion of a partial-volume map: moving a boundary by δ changes the WM fraction by
    δ·|∇f_WM|. WM taken from (or given to) GM only, so the pial surface stays: the cortex gets thinner by δ.
    """
    if shift_mm == 0.0:
        return fractions
    wm, gm = fractions[2], fractions[1]
    grads = np.gradient(wm, *spacing_mm)
    magnitude = np.sqrt(sum(g * g for g in grads))
    change = np.clip(np.float32(shift_mm) * magnitude, -wm, gm)
    wm += change
    gm -= change
    return fractions


def _anatomy(index: int, seed: int, voxel_mm: float, atrophy: bool, variation: bool = True) -> _Anatomy:
    grid = _grid(voxel_mm)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SUBJECT, index]))
    # Draw everything in a fixed order and fixed sizes (independent of the grid),
    # so a subject is the same anatomy at every profile.
    age = float(np.round(rng.uniform(20.0, 80.0), 1))
    sex = int(rng.integers(0, 2))
    scale = 1.0 + _SCALE_SD * rng.standard_normal(3)
    control = rng.standard_normal((4, *_LATTICE_SHAPE)).astype(np.float32)
    t1_scale = np.exp(_T1_SD * rng.standard_normal(3))
    t2s_scale = np.exp(_T2S_SD * rng.standard_normal(3))
    pd_scale = np.exp(_PD_SD * rng.standard_normal(3))
    z_thickness, z_ventricle, z_atrophy = rng.standard_normal(3)
    age_fraction = min(max((age - 20.0) / 60.0, 0.0), 1.0)
    cortex_shift = _THINNING_20_TO_80_MM * age_fraction - _THICKNESS_SD_MM * z_thickness if variation else 0.0
    ventricle_volume = (
        math.exp(math.log(_VENTRICLE_GROWTH_20_TO_80) * age_fraction + _VENTRICLE_LOG_SD * z_ventricle)
        if variation
        else 1.0
    )
    loss = _ATROPHY_AT_80 * age_fraction * (math.exp(_ATROPHY_SD * z_atrophy) if variation else 1.0)

    # Sample the template at y = c + (x − c)/s + u(x) − w(x)(1 − 1/s_v)(x − c_v): a head-size scaling about the
    # brain centre, a smooth displacement u, and a dilation by s_v of the region around the ventricles (weight w).
    spacing = grid.object_spacing
    axes = grid.object_axes_mm
    shape = tuple(len(a) for a in axes)
    s_v = ventricle_volume ** (1.0 / 3.0)
    window = np.ones((1, 1, 1), dtype=np.float32)
    for i in range(3):
        d = ((axes[i] - _VENTRICLE_CENTRE[i]) / _VENTRICLE_SIGMA_MM[i]).reshape([-1 if a == i else 1 for a in range(3)])
        window = window * np.exp(-0.5 * d**2).astype(np.float32)
    coords = np.empty((3, *shape), dtype=np.float32)
    for i in range(3):
        u = _smooth_field(control[i] * _DISPLACEMENT_MM, voxel_mm, on_object=True)
        x = axes[i].reshape([-1 if a == i else 1 for a in range(3)])
        y = _HEAD_CENTRE[i] + (x - _HEAD_CENTRE[i]) / scale[i] + u
        if s_v != 1.0:
            y = y - window * np.float32(1.0 - 1.0 / s_v) * (x - _VENTRICLE_CENTRE[i]).astype(np.float32)
        coords[i] = (y - axes[i][0]) / spacing[i]
    fractions = np.stack(
        [
            ndimage.map_coordinates(t, coords, order=1, mode="constant", cval=0.0, output=np.float32)
            for t in grid.object_tissue
        ]
    )
    del coords
    shift_gm_wm_boundary(fractions, cortex_shift, spacing)
    if atrophy:
        gm_loss = loss * fractions[1]
        wm_loss = loss / 4 * fractions[2]
        fractions[0] += gm_loss + wm_loss
        fractions[1] -= gm_loss
        fractions[2] -= wm_loss
    kz = grid.oversample
    brain = _z_mean(fractions.sum(axis=0), kz)
    mask = brain >= 0.5
    # Skull-stripped scans: a brain voxel's tissues fill it (the partial volume with non-brain is dropped).
    norm = np.repeat(np.where(mask, brain, np.float32(1.0)), kz, axis=2)
    fractions /= norm
    fractions[:, ~np.repeat(mask, kz, axis=2)] = 0.0
    common = _z_mean(fractions, kz)
    labels = np.where(mask, common.argmax(axis=0) + 1, 0).astype(np.uint8)
    texture = 1.0 + _TEXTURE_SD * _smooth_field(control[3], voxel_mm, on_object=True)
    for a in (fractions, mask, labels, texture):
        a.setflags(write=False)
    return _Anatomy(
        fractions=fractions,
        mask=mask,
        labels=labels,
        texture=texture,
        t1_scale=t1_scale,
        t2s_scale=t2s_scale,
        pd_scale=pd_scale,
        head_scale=scale,
        covariates={"age": age, "sex": sex},
        variation={
            "cortex_shift_mm": float(cortex_shift),
            "ventricle_volume": float(ventricle_volume),
            "atrophy": float(loss) if atrophy else 0.0,
        },
    )


#: Session number of the first scan and of the rescan in the random streams.
_SESSION_CODES = {None: 0, RESCAN_SESSION: 1}


def _scan_at_site(
    anat: _Anatomy, site: SiteSpec, index: int, seed: int, voxel_mm: float, session: str | None = None
) -> np.ndarray:
    grid = _grid(voxel_mm)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SCAN, index, site.key, _SESSION_CODES[session]]))
    fields = scan_fields(site, anat.head_scale, seed, rng)
    # Per-tissue signal at each control point (transmit inside the signal equation), times receive and gain.
    signals = tissue_signals(site, anat.t1_scale, anat.t2s_scale, anat.pd_scale, flip_scale=fields.transmit)
    weights = signals * (fields.receive * site.gain)[:, None]
    image = np.zeros(anat.fractions.shape[1:], dtype=np.float32)
    for t in range(3):
        image += anat.fractions[t] * _smooth_field(weights[:, t].reshape(_LATTICE_SHAPE), voxel_mm, on_object=True)
    image *= anat.texture
    image = acquire(image, grid.object_spacing, site.voxel_mm, site.apodization)
    image = np.ascontiguousarray(_z_mean(image, grid.oversample), dtype=np.float32)
    # Rician magnitude noise: Gaussian noise of the same σ on the real and imaginary channels, then the modulus
    # (Gudbjartsson & Patz 1995). σ is relative to the site's nominal WM signal, so SNR is a site property; the
    # g-factor map scales it where parallel imaging amplifies noise.
    noise = rng.standard_normal((2, *grid.shape), dtype=np.float32)
    if site.noise > 0:
        sigma = np.float32(site.noise * site.gain * float(tissue_signals(site)[2]))
        if site.g_factor != 1.0:
            noise *= _smooth_field(fields.g_factor.reshape(_LATTICE_SHAPE), voxel_mm)
        noise *= sigma
        image += noise[0]
        image = np.hypot(image, noise[1], out=image)
    image = np.where(anat.mask, image, np.float32(0.0)).astype(np.float32, copy=False)
    return np.maximum(image, 0.0, out=image)


def _resolve(profile: str, sites: Sequence[SiteSpec] | None, voxel_mm: float | None) -> tuple[float, list[SiteSpec]]:
    v = _voxel_size(profile, voxel_mm)
    site_list = default_sites() if sites is None else list(sites)
    if not site_list:
        raise ConfigError("simulation needs at least one site")
    names = [s.name for s in site_list]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate site names: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return v, site_list


def _rescan_names(rescan_sites: Sequence[str] | str | None, site_list: Sequence[SiteSpec]) -> list[str]:
    names = [s.name for s in site_list]
    if rescan_sites is None:
        return [DEFAULT_TARGET_SITE] if DEFAULT_TARGET_SITE in names else []
    if isinstance(rescan_sites, str):
        if rescan_sites == "all":
            return names
        if rescan_sites == "none":
            return []
        rescan_sites = [rescan_sites]
    unknown = [r for r in rescan_sites if r not in names]
    if unknown:
        raise ConfigError(f"rescan site(s) {', '.join(unknown)} not among the simulated sites ({', '.join(names)})")
    return [n for n in names if n in set(rescan_sites)]


def _simulate_subject(
    index: int,
    site_list: Sequence[SiteSpec],
    seed: int,
    v: float,
    atrophy: bool,
    rescans: Sequence[str] = (),
    variation: bool = True,
) -> list[Scan]:
    grid = _grid(v)
    anat = _anatomy(index, seed, v, atrophy, variation)
    subject = subject_id(index)
    scans = []
    sessions = [(site, None) for site in site_list] + [(s, RESCAN_SESSION) for s in site_list if s.name in rescans]
    for site, session in sessions:
        tag = f"#{session}" if session else ""
        scans.append(
            Scan(
                data=_scan_at_site(anat, site, index, seed, v, session),
                affine=grid.affine.copy(),
                subject=subject,
                site=site.name,
                session=session,
                modality="T1w",
                mask=anat.mask,
                labels=anat.labels,
                covariates=dict(anat.covariates),
                source=f"{COHORT_NAME}:{subject}@{site.name}{tag}",
            )
        )
    return scans


def simulate_subject(
    index: int,
    sites: Sequence[SiteSpec] | None = None,
    profile: str = "quick",
    seed: int = 0,
    *,
    voxel_mm: float | None = None,
    atrophy: bool = True,
    anatomy_variation: bool = True,
    rescan_sites: Sequence[str] | str = (),
) -> list[Scan]:
    """One subject (0-based ``index``, named ``sub-{index+1:03d}``) scanned at every site, then its rescans.

    The scans share one read-only ``mask`` and ``labels`` array (the subject's
    ground truth); ``data`` differs by the scanner and, scan by scan, by the head's
    position in the coil and the noise. ``rescan_sites`` (names, ``"all"`` or
    ``"none"``) get a second session ``"rescan"``. The result depends on ``seed``,
    ``index``, the voxel size and each site's parameters only.
    """
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    v, site_list = _resolve(profile, sites, voxel_mm)
    rescans = _rescan_names(rescan_sites, site_list)
    return _simulate_subject(index, site_list, seed, v, atrophy, rescans, anatomy_variation)


def simulate_cohort(
    profile: str = "quick",
    seed: int = 0,
    *,
    n_subjects: int | None = None,
    sites: Sequence[SiteSpec] | None = None,
    voxel_mm: float | None = None,
    progress: bool | None = None,
    atrophy: bool = True,
    anatomy_variation: bool = True,
    rescan_sites: Sequence[str] | str | None = None,
    n_jobs: int | None = None,
) -> Cohort:
    """The traveling-subject cohort ``harmbench-sim``: every subject scanned at every site, plus rescans.

    ``profile`` sets the voxel size and number of subjects (see ``PROFILES``);
    ``n_subjects`` and ``voxel_mm`` override them. Scans are ordered subject by
    subject, sites in table order, the subject's rescans (session ``"rescan"``)
    last. ``rescan_sites``: site names, ``"all"``, ``"none"``, or None for the
    built-in default target site (when simulated). Covariates: ``age`` (years,
    20–80) and ``sex`` (0/1), the same at every site. ``progress=False`` silences
    the progress bar (see `harmbench.progress`). ``n_jobs``: worker processes, one
    subject each at a time (`harmbench.parallel.worker_pool`; None: the run's
    thread budget); each worker simulates under this process's BLAS thread
    counts, so the scans do not depend on it.
    """
    check_jobs("simulate_cohort", n_jobs)
    prof = _profile(profile)
    n = prof.n_subjects if n_subjects is None else int(n_subjects)
    if n < 1:
        raise ConfigError(f"n_subjects must be at least 1, got {n_subjects!r}")
    v, site_list = _resolve(profile, sites, voxel_mm)
    rescans = _rescan_names(rescan_sites, site_list)
    threads = caller_blas_threads()
    subjects = worker_pool(n_jobs, n, lazy=True)(
        delayed(with_blas_threads)(
            threads, _simulate_subject, index, site_list, seed, v, atrophy, rescans, anatomy_variation
        )
        for index in range(n)
    )
    scans: list[Scan] = []
    bar = progress_bar(subjects, enabled=progress, desc=f"{COHORT_NAME} ({profile}, {v:g} mm)", unit="subject", total=n)
    for subject_scans in bar:
        scans.extend(subject_scans)
    return Cohort(scans, name=COHORT_NAME)


# Read last: parsing the table validates each site with the signal equations above.
#: The built-in table's default target site and default unseen (held-out) sites.
DEFAULT_TARGET_SITE: str = _builtin_table()[1][0]
DEFAULT_UNSEEN_SITES: tuple[str, ...] = _builtin_table()[1][1]
