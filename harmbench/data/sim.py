"""`harmbench-sim`: a simulated traveling-subject cohort (DESIGN §3).

Anatomy comes from the MNI152 2009 template that nilearn ships inside its
wheel (GM and WM probability maps and the brain mask; CSF = mask − GM − WM,
renormalised), so nothing is downloaded. Each subject is a smooth random
deformation of that anatomy with its own tissue properties (and, optionally,
age-related atrophy); each site is a scanner model from ``sites.toml``:

* tissue T1 / T2* depend on the field strength B0 (values at 1.5 T and 3 T,
  a power law in B0 through them elsewhere — Rooney et al. 2007, MRM 57:308;
  Wansapura et al. 1999, JMRI 9:531; T2*: Peters et al. 2007, MRI 25:748);
* the sequence gives each tissue a signal: a steady-state MPRAGE model
  (Deichmann et al. 2000, NeuroImage 12:112; Wang et al. 2014, MRM 71:1760)
  or the spoiled gradient-echo (SPGR/FLASH) steady-state equation
  ``S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE / T2*)``;
* partial volume: a voxel's signal is the sum of its tissue fractions times
  the tissue signals;
* a smooth multiplicative receive bias field, a Gaussian point-spread function
  (slice thickness), a vendor gain, and Rician magnitude noise
  (Gudbjartsson & Patz 1995, MRM 34:910).

Every subject is scanned at every site: labels and mask of a subject are the
same array at every site, and its scans differ only by the scanner.

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
from scipy import ndimage

from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError
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
SIMULATOR_VERSION = "1"
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

    Times in ms, angles in degrees, ``fwhm_mm`` the point-spread function along
    the grid axes (x, y, z). ``ti_ms``, ``echo_spacing_ms`` and ``train_length``
    are MPRAGE-only. See ``sites.toml`` for the meaning of every field.
    """

    name: str
    field_t: float
    sequence: str
    tr_ms: float
    te_ms: float
    flip_deg: float
    fwhm_mm: tuple[float, float, float]
    bias: float
    noise: float
    gain: float
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
_COMMON_FIELDS = ("name", "field_t", "sequence", "tr_ms", "te_ms", "flip_deg", "fwhm_mm", "bias", "noise", "gain")
_MPRAGE_FIELDS = ("ti_ms", "echo_spacing_ms")
_OPTIONAL_FIELDS = ("vendor", "description", "train_length")
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

    fwhm = raw["fwhm_mm"]
    if not (isinstance(fwhm, list) and len(fwhm) == 3):
        raise ConfigError(f"{where}: field 'fwhm_mm' must be a list of 3 numbers (x, y, z), got {fwhm!r}")
    fwhm_t = tuple(_number(where, "fwhm_mm", f, 0.0, 20.0, lo_open=False) for f in fwhm)

    spec = SiteSpec(
        name=name,
        field_t=_number(where, "field_t", raw["field_t"], 0.0, 12.0),
        sequence=sequence,
        tr_ms=_number(where, "tr_ms", raw["tr_ms"], 0.0, 20000.0),
        te_ms=_number(where, "te_ms", raw["te_ms"], 0.0, 100.0),
        flip_deg=_number(where, "flip_deg", raw["flip_deg"], 0.0, 90.0),
        fwhm_mm=fwhm_t,  # type: ignore[arg-type]
        bias=_number(where, "bias", raw["bias"], 0.0, 1.0, lo_open=False),
        noise=_number(where, "noise", raw["noise"], 0.0, 0.5, lo_open=False),
        gain=_number(where, "gain", raw["gain"], 0.0, 1e9),
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
def _spgr(site: SiteSpec, t1: np.ndarray, t2s: np.ndarray, pd: np.ndarray) -> np.ndarray:
    """Spoiled gradient-echo steady state: PD · sin α · (1 − E1)/(1 − cos α · E1) · exp(−TE/T2*)."""
    alpha = math.radians(site.flip_deg)
    e1 = np.exp(-site.tr_ms / t1)
    return pd * math.sin(alpha) * (1 - e1) / (1 - math.cos(alpha) * e1) * np.exp(-site.te_ms / t2s)


def _mprage(site: SiteSpec, t1: np.ndarray, t2s: np.ndarray, pd: np.ndarray) -> np.ndarray:
    """Steady-state MPRAGE magnitude at the centre of k-space (linear ordering).

    One shot: inversion (efficiency δ), free recovery for TD1 = TI − n/2·τ, a
    train of n low-angle readouts spaced τ (which drive Mz towards the FLASH
    steady state M∞ = (1 − E)/(1 − cos α·E), E = exp(−τ/T1)), free recovery
    for TD2 = TR − TI − n/2·τ, then the next inversion. Requiring Mz before
    each inversion to repeat gives the steady state (Deichmann et al. 2000;
    the same bookkeeping as Wang et al. 2014). The image contrast is that of
    the centre readout (k = n/2), as in a linear phase-encoding order.
    """
    assert site.ti_ms is not None and site.echo_spacing_ms is not None and site.train_length is not None
    alpha = math.radians(site.flip_deg)
    tau, n = site.echo_spacing_ms, site.train_length
    td1 = site.ti_ms - n / 2 * tau
    td2 = site.tr_ms - site.ti_ms - n / 2 * tau
    e = np.exp(-tau / t1)
    m_inf = (1 - e) / (1 - math.cos(alpha) * e)
    decay = math.cos(alpha) * e
    q = decay**n
    e1, e2 = np.exp(-td1 / t1), np.exp(-td2 / t1)
    delta = _INVERSION_EFFICIENCY
    # M_pre = (1−e2) + e2·[M∞(1−q) + q·((1−e1) − δ·e1·M_pre)], solved for M_pre.
    m_pre = ((1 - e2) + e2 * m_inf * (1 - q) + e2 * q * (1 - e1)) / (1 + e2 * q * delta * e1)
    m_a = (1 - e1) - delta * e1 * m_pre
    mz_centre = m_inf + (m_a - m_inf) * decay ** (n // 2)
    return np.abs(pd * math.sin(alpha) * mz_centre * np.exp(-site.te_ms / t2s))


def tissue_signals(
    site: SiteSpec,
    t1_scale: np.ndarray | None = None,
    t2s_scale: np.ndarray | None = None,
    pd_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Noise-free signal (before gain) of pure CSF, GM, WM at ``site``.

    The optional ``*_scale`` arrays (length 3) are a subject's multiplicative
    deviations from the nominal tissue properties.
    """
    t1, t2s = relaxation_times(site.field_t)
    pd = _PD.copy()
    if t1_scale is not None:
        t1 = t1 * t1_scale
    if t2s_scale is not None:
        t2s = t2s * t2s_scale
    if pd_scale is not None:
        pd = pd * pd_scale
    equation = _mprage if site.sequence == "mprage" else _spgr
    return equation(site, t1, t2s, pd)


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


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    shape = [s // k for s in a.shape[-3:]]
    a = a[..., : shape[0] * k, : shape[1] * k, : shape[2] * k]
    a = a.reshape(*a.shape[:-3], shape[0], k, shape[1], k, shape[2], k)
    return a.mean(axis=(-5, -3, -1))


def _is_multiple(v: float, of: float) -> bool:
    r = v / of
    return abs(r - round(r)) < 1e-6 and round(r) >= 1


@functools.lru_cache(maxsize=4)
def _grid(voxel_mm: float) -> _Grid:
    """The common grid at ``voxel_mm`` with the template's tissue fractions on it.

    Integer multiples of the template's 1 / 2 mm voxels are block averages
    (exact partial volumes); other sizes are Gaussian-prefiltered linear
    resamples. The grid is cropped to the brain plus a margin and padded to
    multiples of 8 voxels per axis (convenient for U-Nets); its affine is the
    true voxel-to-MNI affine.
    """
    src_res = 2 if voxel_mm >= 2 and (_is_multiple(voxel_mm, 2) or not _is_multiple(voxel_mm, 1)) else 1
    tissue, src_affine = _template_maps(src_res)
    src_vox = float(src_affine[0, 0])
    origin = src_affine[:3, 3].astype(float)
    if _is_multiple(voxel_mm, src_vox):
        k = round(voxel_mm / src_vox)
        maps = _block_mean(tissue, k) if k > 1 else tissue
        origin = origin + (k - 1) / 2 * src_vox
    else:
        ratio = voxel_mm / src_vox
        sigma = math.sqrt(max(ratio**2 - 1, 0)) / 2.355
        shape = [int(s * src_vox // voxel_mm) for s in tissue.shape[1:]]
        origin = origin + (voxel_mm - src_vox) / 2
        coords = np.meshgrid(
            *[((np.arange(n) * voxel_mm + origin[i]) - src_affine[i, 3]) / src_vox for i, n in enumerate(shape)],
            indexing="ij",
        )
        maps = np.stack([ndimage.map_coordinates(ndimage.gaussian_filter(t, sigma), coords, order=1) for t in tissue])
    maps = maps.astype(np.float32)

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
    out = np.zeros((3, *shape), dtype=np.float32)
    src = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, maps.shape[1:], strict=True))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start, strict=True))
    out[(slice(None), *dst)] = maps[(slice(None), *src)]
    origin = origin + np.array(start) * voxel_mm
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = origin
    axes = tuple(origin[i] + np.arange(shape[i]) * voxel_mm for i in range(3))
    out.setflags(write=False)
    affine.setflags(write=False)
    return _Grid(voxel_mm, shape, affine, out, axes)  # type: ignore[arg-type]


def simulation_grid(profile: str = "quick", voxel_mm: float | None = None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel-to-MNI affine of the simulated scans for a profile (loads the template once)."""
    g = _grid(_voxel_size(profile, voxel_mm))
    return g.shape, g.affine.copy()


# ----------------------------------------------------------------------------
# smooth random fields, defined in MNI millimetres so they do not depend on the grid
# ----------------------------------------------------------------------------
# Control lattice of the subject fields: 16 mm spacing over a box around the brain.
_LATTICE_MM = 16.0
_LATTICE_ORIGIN = np.array([-112.0, -150.0, -88.0])
_LATTICE_SHAPE = (15, 17, 15)
# Stream tags in the SeedSequence entropy, so that no two uses share random numbers.
_STREAM_SUBJECT, _STREAM_SITE, _STREAM_NOISE = 1, 2, 3


@functools.lru_cache(maxsize=4)
def _lattice_weights(voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis, the matrix taking control-point values to the grid (cubic-spline interpolation).

    Spline interpolation on a tensor-product lattice is separable, so three
    small matrices replace a 3-D ``map_coordinates`` (≈10× faster at 1 mm).
    """
    grid = _grid(voxel_mm)
    weights = []
    for axis in range(3):
        n_ctrl = _LATTICE_SHAPE[axis]
        at = ((grid.axes_mm[axis] - _LATTICE_ORIGIN[axis]) / _LATTICE_MM)[None, :]
        w = np.stack([ndimage.map_coordinates(e, at, order=3, mode="nearest") for e in np.eye(n_ctrl)], axis=1)
        w = w.astype(np.float32)
        w.setflags(write=False)
        weights.append(w)
    return weights[0], weights[1], weights[2]


def _smooth_field(values: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Cubic-spline interpolation of control-point ``values`` (on the lattice) at the grid's voxels."""
    wx, wy, wz = _lattice_weights(voxel_mm)
    out = np.tensordot(wx, values, axes=(1, 0))  # (nx, Ly, Lz)
    out = np.tensordot(out, wy, axes=(1, 1))  # (nx, Lz, ny)
    out = np.tensordot(out, wz, axes=(1, 1))  # (nx, ny, nz)
    return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=32)
def _bias_field(site_key: int, bias: float, seed: int, voxel_mm: float) -> np.ndarray:
    """exp(bias · f): f a random cubic polynomial in MNI coordinates, scaled to span [−1, 1] over the brain.

    Receive-coil sensitivity varies slowly in space, so a low-order polynomial
    (as in N3/N4's model of the bias) is enough; its normalisation is done on a
    fixed ellipsoid so the pattern is the same at every resolution.
    """
    grid = _grid(voxel_mm)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SITE, site_key]))
    powers = [(a, b, c) for a in range(4) for b in range(4) for c in range(4) if 0 < a + b + c <= 3]
    coef = rng.standard_normal(len(powers)) / np.array([1.0 + a + b + c for a, b, c in powers])
    centre, radii = np.array([0.0, -18.0, 18.0]), np.array([70.0, 90.0, 70.0])

    def poly(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        u, v, w = (x - centre[0]) / radii[0], (y - centre[1]) / radii[1], (z - centre[2]) / radii[2]
        return sum(c * u**a * v**b * w**k for c, (a, b, k) in zip(coef, powers, strict=True))

    probe = np.stack(np.meshgrid(*[np.linspace(-1, 1, 21)] * 3, indexing="ij")).reshape(3, -1)
    probe = probe[:, (probe**2).sum(axis=0) <= 1] * radii[:, None] + centre[:, None]
    ref = poly(*probe)
    lo, hi = float(ref.min()), float(ref.max())
    x, y, z = (a.reshape(s) for a, s in zip(grid.axes_mm, [(-1, 1, 1), (1, -1, 1), (1, 1, -1)], strict=True))
    f = (poly(x, y, z) - (lo + hi) / 2) / max((hi - lo) / 2, 1e-12)
    out = np.exp(bias * np.clip(f, -1.5, 1.5)).astype(np.float32)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------
# subjects
# ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Anatomy:
    """A subject's site-independent truth on the grid."""

    fractions: np.ndarray  # (3, *shape) float32, CSF/GM/WM fractions summing to 1 in the mask, 0 outside
    mask: np.ndarray  # bool
    labels: np.ndarray  # uint8
    texture: np.ndarray  # float32 multiplicative PD texture
    t1_scale: np.ndarray
    t2s_scale: np.ndarray
    pd_scale: np.ndarray
    covariates: dict[str, Any]


# Deformation: control-point displacement SD (mm) and head-size scaling SD.
_DISPLACEMENT_MM = 2.5
_SCALE_SD = 0.03
# Log-normal SD of subject tissue properties (T1, T2*, PD).
_T1_SD, _T2S_SD, _PD_SD = 0.04, 0.05, 0.02
# Smooth PD texture SD: the same at every site, so harmonizers cannot use it to tell sites apart.
_TEXTURE_SD = 0.03
# Fraction of GM (and, a quarter as much, WM) turned into CSF at age 80 relative to 20.
_ATROPHY_AT_80 = 0.12


def _anatomy(index: int, seed: int, voxel_mm: float, atrophy: bool) -> _Anatomy:
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

    # Sample the template at y = c + (x − c)/s + u(x): a head-size scaling about
    # the brain centre plus a smooth displacement u.
    centre = np.array([0.0, -18.0, 18.0])
    coords = np.empty((3, *grid.shape), dtype=np.float32)
    for i in range(3):
        u = _smooth_field(control[i] * _DISPLACEMENT_MM, voxel_mm)
        x = grid.axes_mm[i].reshape([-1 if a == i else 1 for a in range(3)])
        y = centre[i] + (x - centre[i]) / scale[i] + u
        coords[i] = (y - grid.axes_mm[i][0]) / voxel_mm
    fractions = np.stack(
        [ndimage.map_coordinates(t, coords, order=1, mode="constant", cval=0.0, output=np.float32) for t in grid.tissue]
    )
    if atrophy:
        loss = _ATROPHY_AT_80 * min(max((age - 20.0) / 60.0, 0.0), 1.0)
        gm_loss = loss * fractions[1]
        wm_loss = loss / 4 * fractions[2]
        fractions[0] += gm_loss + wm_loss
        fractions[1] -= gm_loss
        fractions[2] -= wm_loss
    brain = fractions.sum(axis=0)
    mask = brain >= 0.5
    np.divide(fractions, brain, out=fractions, where=mask)
    fractions[:, ~mask] = 0.0
    labels = np.where(mask, fractions.argmax(axis=0) + 1, 0).astype(np.uint8)
    texture = 1.0 + _TEXTURE_SD * _smooth_field(control[3], voxel_mm)
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
        covariates={"age": age, "sex": sex},
    )


def _scan_at_site(anat: _Anatomy, site: SiteSpec, index: int, seed: int, voxel_mm: float) -> np.ndarray:
    grid = _grid(voxel_mm)
    signals = tissue_signals(site, anat.t1_scale, anat.t2s_scale, anat.pd_scale).astype(np.float32)
    # Partial volume: a voxel's signal is the fraction-weighted sum of its tissues' signals.
    image = np.tensordot(signals, anat.fractions, axes=1)
    image *= anat.texture
    image *= _bias_field(site.key, site.bias, seed, voxel_mm)
    sigma = [f / 2.3548 / voxel_mm for f in site.fwhm_mm]
    if max(sigma) > 0.1:
        image = ndimage.gaussian_filter(image, [s if s > 0.1 else 0.0 for s in sigma], mode="constant")
    image *= site.gain
    if site.noise > 0:
        # Rician magnitude noise: Gaussian noise of the same σ on the real and
        # imaginary channels, then the modulus (Gudbjartsson & Patz 1995).
        # σ is relative to the site's nominal WM signal, so SNR is a site property.
        noise_sigma = site.noise * site.gain * float(tissue_signals(site)[2])
        rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_NOISE, index, site.key]))
        noise = rng.standard_normal((2, *grid.shape), dtype=np.float32)
        noise *= noise_sigma
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


def _simulate_subject(index: int, site_list: Sequence[SiteSpec], seed: int, v: float, atrophy: bool) -> list[Scan]:
    grid = _grid(v)
    anat = _anatomy(index, seed, v, atrophy)
    subject = subject_id(index)
    scans = []
    for site in site_list:
        scans.append(
            Scan(
                data=_scan_at_site(anat, site, index, seed, v),
                affine=grid.affine.copy(),
                subject=subject,
                site=site.name,
                modality="T1w",
                mask=anat.mask,
                labels=anat.labels,
                covariates=dict(anat.covariates),
                source=f"{COHORT_NAME}:{subject}@{site.name}",
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
) -> list[Scan]:
    """One subject (0-based ``index``, named ``sub-{index+1:03d}``) scanned at every site.

    The scans share one read-only ``mask`` and ``labels`` array (the subject's
    ground truth); ``data`` differs only by the scanner. The result depends on
    ``seed``, ``index``, the voxel size and each site's parameters only.
    """
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    v, site_list = _resolve(profile, sites, voxel_mm)
    return _simulate_subject(index, site_list, seed, v, atrophy)


def simulate_cohort(
    profile: str = "quick",
    seed: int = 0,
    *,
    n_subjects: int | None = None,
    sites: Sequence[SiteSpec] | None = None,
    voxel_mm: float | None = None,
    progress: bool | None = None,
    atrophy: bool = True,
) -> Cohort:
    """The traveling-subject cohort ``harmbench-sim``: every subject scanned at every site.

    ``profile`` sets the voxel size and number of subjects (see ``PROFILES``);
    ``n_subjects`` and ``voxel_mm`` override them. Scans are ordered subject by
    subject, sites in table order. Covariates: ``age`` (years, 20–80) and
    ``sex`` (0/1), the same at every site. ``progress=False`` silences the progress bar (see `harmbench.progress`).
    """
    prof = _profile(profile)
    n = prof.n_subjects if n_subjects is None else int(n_subjects)
    if n < 1:
        raise ConfigError(f"n_subjects must be at least 1, got {n_subjects!r}")
    v, site_list = _resolve(profile, sites, voxel_mm)
    scans: list[Scan] = []
    bar = progress_bar(range(n), enabled=progress, desc=f"{COHORT_NAME} ({profile}, {v:g} mm)", unit="subject")
    for index in bar:
        scans.extend(_simulate_subject(index, site_list, seed, v, atrophy))
    return Cohort(scans, name=COHORT_NAME)


# Read last: parsing the table validates each site with the signal equations above.
#: The built-in table's default target site and default unseen (held-out) sites.
DEFAULT_TARGET_SITE: str = _builtin_table()[1][0]
DEFAULT_UNSEEN_SITES: tuple[str, ...] = _builtin_table()[1][1]
