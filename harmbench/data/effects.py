"""How much of the site gap each simulated scanner effect accounts for (`harmbench data effects`).

For one seed, a few subjects are simulated at every site, once with every effect on, once with each
effect switched off in turn (the site table rewritten, every random draw kept), and once with all of
them off. Each non-target scan is compared with the same subject's target-site scan, as it is (identity)
and after the per-scan global rescale (brain divided by its own 95th percentile, times the target scan's:
the ``scale`` baseline's convention); the subject's target-site rescan gives the scan-rescan ceiling.

Metrics follow the paired and Wasserstein evaluators' definitions: PSNR over the union of the brain masks
after dividing both images by the target's brain 99th percentile and clipping to [0, 1]; ``w1`` the 1-D
Wasserstein-1 distance between brain-intensity distributions, in percent of that same scale; ``nwd`` of
the rescale ``W1(target, rescaled) / W1(input, target)`` (identity is 1 by definition).

Effects (``EFFECTS``): ``gain`` (every site gets the target's gain), ``contrast`` (every site gets the
target's field strength and sequence timings), ``receive``, ``transmit``, ``resolution`` (no k-space
truncation or apodisation), ``noise``, ``g_factor``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harmbench.data import sim
from harmbench.data.scan import Scan
from harmbench.errors import ConfigError

EFFECTS: tuple[str, ...] = ("gain", "contrast", "receive", "transmit", "resolution", "noise", "g_factor")
#: PSNR of identical images, as in the paired evaluator (a finite cap keeps means finite).
PSNR_MAX_DB = 100.0
_CONTRAST_FIELDS = ("field_t", "sequence", "tr_ms", "te_ms", "flip_deg", "ti_ms", "echo_spacing_ms", "train_length")


def switch_off(site: sim.SiteSpec, effect: str, target: sim.SiteSpec) -> sim.SiteSpec:
    """``site`` with one effect removed (``gain`` and ``contrast`` become the target site's)."""
    if effect == "gain":
        return dataclasses.replace(site, gain=target.gain)
    if effect == "contrast":
        return dataclasses.replace(site, **{f: getattr(target, f) for f in _CONTRAST_FIELDS})
    if effect == "receive":
        return dataclasses.replace(site, bias=0.0)
    if effect == "transmit":
        return dataclasses.replace(site, transmit=0.0)
    if effect == "resolution":
        return dataclasses.replace(site, voxel_mm=(0.0, 0.0, 0.0), apodization="none")
    if effect == "noise":
        return dataclasses.replace(site, noise=0.0)
    if effect == "g_factor":
        return dataclasses.replace(site, g_factor=1.0)
    raise ConfigError(f"unknown simulator effect {effect!r}; known: {', '.join(EFFECTS)}")


def _psnr(pred: Scan, target: Scan, scale: float) -> float:
    region = pred.brain | target.brain
    x = np.clip(pred.data[region].astype(np.float64) / scale, 0, 1)
    y = np.clip(target.data[region].astype(np.float64) / scale, 0, 1)
    mse = float(np.mean((x - y) ** 2))
    return PSNR_MAX_DB if mse == 0 else min(PSNR_MAX_DB, 10 * math.log10(1.0 / mse))


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein-1 distance of two samples (quantile functions on a common grid of 1000 levels)."""
    q = (np.arange(1000) + 0.5) / 1000
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def _compare(scan: Scan, target: Scan) -> dict[str, float]:
    t = target.brain_values()
    scale = float(np.percentile(t, 99))
    i = scan.brain_values()
    rescaled = scan.with_data(scan.data * (np.percentile(t, 95) / np.percentile(i, 95)))
    w_it = _w1(i, t)
    w_tp = _w1(rescaled.brain_values(), t)
    return {
        "identity_psnr": _psnr(scan, target, scale),
        "identity_w1": 100 * w_it / scale,
        "p95_psnr": _psnr(rescaled, target, scale),
        "p95_w1": 100 * w_tp / scale,
        "p95_nwd": w_tp / w_it if w_it > 0 else math.nan,
    }


def effect_ablation(
    profile: str = "default",
    seed: int = 0,
    *,
    n_subjects: int = 4,
    sites: Sequence[sim.SiteSpec] | None = None,
    target_site: str | None = None,
    voxel_mm: float | None = None,
    effects: Sequence[str] = EFFECTS,
) -> pd.DataFrame:
    """One row per configuration (``all on``, ``no <effect>`` for each effect, ``all off``): mean metrics.

    Columns: ``identity_psnr``, ``identity_w1``, ``p95_psnr``, ``p95_w1``, ``p95_nwd`` (each non-target scan
    against the same subject's target-site scan, averaged over subjects and sites), ``rescan_psnr`` and
    ``rescan_w1`` (target-site rescan against the scan), ``gap_db`` (rescan PSNR − rescale PSNR: what is left
    for harmonization beyond a global gain) and ``gap_share`` (the part of the all-on gap that disappears with
    the effect off).
    """
    site_list = sim.default_sites() if sites is None else list(sites)
    target_name = sim.DEFAULT_TARGET_SITE if target_site is None else target_site
    names = [s.name for s in site_list]
    if target_name not in names:
        raise ConfigError(f"target site {target_name!r} is not among the sites ({', '.join(names)})")
    if n_subjects < 1:
        raise ConfigError(f"n_subjects must be at least 1, got {n_subjects}")
    target = site_list[names.index(target_name)]
    configs: list[tuple[str, tuple[str, ...]]] = [("all on", ())]
    configs += [(f"no {e}", (e,)) for e in effects]
    configs.append(("all off", tuple(effects)))
    rows = []
    for label, off in configs:
        table = []
        for site in site_list:
            for effect in off:
                site = switch_off(site, effect, target)
            table.append(site)
        per_pair, per_rescan = [], []
        for index in range(n_subjects):
            scans = sim.simulate_subject(index, table, profile, seed, voxel_mm=voxel_mm, rescan_sites=[target_name])
            first = {s.site: s for s in scans if s.session is None}
            rescan = next(s for s in scans if s.session is not None)
            ref = first[target_name]
            per_pair += [_compare(first[n], ref) for n in names if n != target_name]
            r = _compare(rescan, ref)
            per_rescan.append({"rescan_psnr": r["identity_psnr"], "rescan_w1": r["identity_w1"]})
        row = {"configuration": label, **pd.DataFrame(per_pair).mean().to_dict()}
        row.update(pd.DataFrame(per_rescan).mean().to_dict())
        rows.append(row)
    out = pd.DataFrame(rows).set_index("configuration")
    out = out.drop(columns=["p95_nwd"]).assign(p95_nwd=out["p95_nwd"])
    out["gap_db"] = out["rescan_psnr"] - out["p95_psnr"]
    all_on = float(out.loc["all on", "gap_db"])
    out["gap_share"] = (all_on - out["gap_db"]) / all_on if all_on else math.nan
    return out


def format_table(table: pd.DataFrame) -> str:
    """A fixed-width text table of `effect_ablation`'s result."""
    return table.to_string(float_format=lambda x: f"{x:.3f}")
