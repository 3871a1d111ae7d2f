"""Each simulated scanner effect shows, and disappears when switched off (8 mm grids for speed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harmbench.data import effects, sim

V = 8.0


def _site(name: str) -> sim.SiteSpec:
    return next(s for s in sim.default_sites() if s.name == name)


def _quiet(site: sim.SiteSpec, **changes) -> sim.SiteSpec:
    """The site with every effect off except those given in ``changes``."""
    base = dict(bias=0.0, transmit=0.0, noise=0.0, g_factor=1.0, voxel_mm=(0.0, 0.0, 0.0), apodization="none")
    return dataclasses.replace(site, **{**base, **changes})


def _scan(site: sim.SiteSpec, index: int, session: str | None = None) -> sim.Scan:
    scans = sim.simulate_subject(index, [site], voxel_mm=V, rescan_sites=[site.name] if session else ())
    return scans[-1]


def _log_ratio(a: sim.Scan, b: sim.Scan) -> np.ndarray:
    inside = a.mask & (a.data > 0) & (b.data > 0)
    return np.log(a.data[inside] / b.data[inside])


@pytest.mark.parametrize("bias", [0.25, 0.0])
def test_receive_field_differs_between_subjects_at_one_site(bias):
    site = _site("ge-3t-spgr")
    plain, biased = _quiet(site), _quiet(site, bias=bias)
    field = [_log_ratio(_scan(biased, i), _scan(plain, i)) for i in (0, 1)]
    mask = sim.simulate_subject(0, [plain], voxel_mm=V)[0].mask & sim.simulate_subject(1, [plain], voxel_mm=V)[0].mask
    if bias == 0.0:
        assert all(np.allclose(f, 0.0, atol=1e-5) for f in field)
        return
    # the field spans about ±bias over the brain, and it is not the same field for both subjects
    assert all(np.ptp(f) > bias for f in field)
    sessions = [_scan(biased, i).data / np.where(mask, _scan(plain, i).data, 1) for i in (0, 1)]
    difference = np.log(sessions[0][mask] / sessions[1][mask])
    assert np.std(difference) > 0.02


def test_receive_field_seen_from_each_head_position():
    site = _site("ge-3t-spgr")
    rng = [np.random.default_rng(i) for i in (1, 2)]
    a, b = (sim.scan_fields(site, np.ones(3), 0, r) for r in rng)
    assert not np.allclose(a.coil_mm, b.coil_mm)
    assert np.abs(np.log(a.receive) - np.log(b.receive)).max() > 0.05
    off = dataclasses.replace(site, bias=0.0)
    assert np.allclose(sim.scan_fields(off, np.ones(3), 0, np.random.default_rng(1)).receive, 1.0)


@pytest.mark.parametrize("name", ["ge-3t-spgr", "siemens-3t-mprage"])
def test_transmit_changes_tissue_contrast_not_only_brightness(name):
    site = _site(name)
    low, nominal, high = sim.tissue_signals(site, flip_scale=np.array([0.8, 1.0, 1.2]))
    ratio = [row[1] / row[2] for row in (low, nominal, high)]  # GM / WM
    assert abs(ratio[0] - ratio[1]) > 0.01 and abs(ratio[2] - ratio[1]) > 0.01, ratio
    # in a whole scan: with the transmit field on, the GM/WM ratio moves from the centre to the edge
    on, off = _scan(_quiet(site, transmit=0.2), 0), _scan(_quiet(site), 0)
    ratio_map = on.data / np.where(on.mask, off.data, 1)
    gm, wm = on.labels == 2, on.labels == 3
    assert abs(np.median(ratio_map[gm]) - np.median(ratio_map[wm])) > 0.003
    off_map = off.data / np.where(off.mask, off.data, 1)
    assert np.allclose(off_map[off.mask], 1.0)


def test_transmit_field_is_brighter_in_the_centre():
    site = _site("siemens-3t-mprage")
    fields = sim.scan_fields(site, np.ones(3), 0, np.random.default_rng(0))
    points = sim._lattice_points()
    rho = np.linalg.norm((points - sim._HEAD_CENTRE[:, None]) / sim._HEAD_RADII[:, None], axis=0)
    assert fields.transmit[rho < 0.2].mean() > 1.1 and fields.transmit[(rho > 0.9) & (rho < 1.0)].mean() < 0.95


def _edge_profile(voxel_z: float, apodization: str = "none") -> np.ndarray:
    step = np.zeros((4, 4, 128), dtype=np.float32)
    step[..., 40:88] = 1.0  # a sharp slab, 1 mm samples along z
    return sim.acquire(step, (1.0, 1.0, 1.0), (0.0, 0.0, voxel_z), apodization)[0, 0]


def test_gibbs_ringing_next_to_a_sharp_edge_at_a_low_resolution_site():
    thick = _edge_profile(3.0)
    assert thick.max() > 1.06  # overshoot next to the edge (Gibbs: ≈ 9 %)
    assert thick[30:40].min() < -0.03  # undershoot outside it
    assert thick[38] > 0.05  # blur: signal leaks a voxel outside
    # switched off (no truncation): the edge stays sharp
    np.testing.assert_allclose(_edge_profile(0.0), np.pad(np.ones(48), (40, 40)), atol=1e-5)
    # a vendor window trades ringing for blur
    assert _edge_profile(3.0, "hamming").max() < 1.01


def test_thick_partitions_survive_on_the_common_grid():
    site = _site("ge-1.5t-spgr")
    sharp, thick = _scan(_quiet(site), 0), _scan(_quiet(site, voxel_mm=(0.94, 0.94, 3.0)), 0)
    thin = _scan(_quiet(site, voxel_mm=(0.94, 0.94, 0.94)), 0)
    inside = sharp.mask
    thick_change = np.abs(thick.data - sharp.data)[inside].mean()
    # even on an 8 mm grid a 3 mm partition shows (the object is drawn on 2 mm slices), a sub-millimetre one does not
    assert thick_change > 0.003 * np.median(sharp.data[inside])
    assert np.abs(thin.data - sharp.data)[inside].mean() < 0.1 * thick_change


def _noise_by_region(site: sim.SiteSpec) -> tuple[float, float]:
    clean = _scan(_quiet(site), 0)
    noisy = _scan(_quiet(site, noise=0.05, g_factor=site.g_factor), 0)
    grid_shape, affine = sim.simulation_grid(voxel_mm=V)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid_shape], indexing="ij")).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *grid_shape)
    rho = np.sqrt(sum(((xyz[i] - sim._HEAD_CENTRE[i]) / sim._HEAD_RADII[i]) ** 2 for i in range(3)))
    residual = noisy.data - clean.data
    centre, edge = clean.mask & (rho < 0.35), clean.mask & (rho > 0.7)
    return float(np.std(residual[centre])), float(np.std(residual[edge]))


def test_g_factor_noise_varies_in_space():
    site = dataclasses.replace(_site("ge-3t-spgr"), g_factor=1.6)
    centre, edge = _noise_by_region(site)
    assert centre > 1.2 * edge
    centre, edge = _noise_by_region(dataclasses.replace(site, g_factor=1.0))
    assert 0.8 < centre / edge < 1.2


def test_rescan_differs_from_the_scan_but_has_the_same_labels():
    site = _site(sim.DEFAULT_TARGET_SITE)
    first, rescan = sim.simulate_subject(3, [site], voxel_mm=V, rescan_sites=[site.name])
    assert rescan.session == "rescan" and rescan.site == first.site and rescan.subject == first.subject
    np.testing.assert_array_equal(rescan.labels, first.labels)
    np.testing.assert_array_equal(rescan.mask, first.mask)
    assert not np.array_equal(rescan.data, first.data)
    # not only new noise: the fields moved with the head (a noise-free rescan differs too)
    quiet = dataclasses.replace(site, noise=0.0)
    a, b = sim.simulate_subject(3, [quiet], voxel_mm=V, rescan_sites=[site.name])
    assert np.abs(np.log(a.data[a.mask] / b.data[a.mask])).mean() > 0.005
    # with every scanner effect that varies between sessions off, the rescan equals the scan
    still = _quiet(site)
    c, d = sim.simulate_subject(3, [still], voxel_mm=V, rescan_sites=[site.name])
    np.testing.assert_array_equal(c.data, d.data)


def test_rescan_site_choice():
    sites = sim.default_sites()[:2]
    assert [s.session for s in sim.simulate_subject(0, sites, voxel_mm=V, rescan_sites="all")] == [
        None,
        None,
        "rescan",
        "rescan",
    ]
    assert len(sim.simulate_subject(0, sites, voxel_mm=V, rescan_sites="none")) == 2
    with pytest.raises(sim.ConfigError, match="rescan"):
        sim.simulate_subject(0, sites, voxel_mm=V, rescan_sites=["nowhere"])


def test_gm_wm_boundary_shift_changes_cortical_thickness():
    fractions = np.array(sim._grid(V).object_tissue, dtype=np.float32)
    wm0, gm0, total0 = fractions[2].sum(), fractions[1].sum(), fractions.sum()
    thinner = sim.shift_gm_wm_boundary(fractions.copy(), 0.5, sim._grid(V).object_spacing)
    thicker = sim.shift_gm_wm_boundary(fractions.copy(), -0.5, sim._grid(V).object_spacing)
    assert thinner[2].sum() > 1.01 * wm0 and thinner[1].sum() < gm0
    assert thicker[2].sum() < 0.99 * wm0 and thicker[1].sum() > gm0
    np.testing.assert_allclose([thinner.sum(), thicker.sum()], total0, rtol=1e-5)
    assert thinner.min() >= 0 and thicker.min() >= 0


def test_anatomy_varies_in_thickness_and_ventricles_between_subjects():
    window = None
    records = []
    for index in range(8):
        varied = sim._anatomy(index, 0, V, atrophy=False, variation=True)
        plain = sim._anatomy(index, 0, V, atrophy=False, variation=False)
        if window is None:
            grid = sim._grid(V)
            z = grid.object_axes_mm
            d = [((z[i] - sim._VENTRICLE_CENTRE[i]) / sim._VENTRICLE_SIGMA_MM[i]) for i in range(3)]
            window = (d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2) < 1
        csf_change = varied.fractions[0][window].sum() / plain.fractions[0][window].sum()
        wm_change = varied.fractions[2].sum() / plain.fractions[2].sum()
        records.append((varied.variation, csf_change, wm_change))
    ventricles = np.log([r[0]["ventricle_volume"] for r in records])
    shifts = np.array([r[0]["cortex_shift_mm"] for r in records])
    assert np.ptp(ventricles) > 0.3 and np.ptp(shifts) > 0.2  # subjects differ
    assert np.corrcoef(ventricles, np.log([r[1] for r in records]))[0, 1] > 0.8
    assert np.corrcoef(shifts, np.log([r[2] for r in records]))[0, 1] > 0.5
    off = sim._anatomy(0, 0, V, atrophy=False, variation=False).variation
    assert off["ventricle_volume"] == 1.0 and off["cortex_shift_mm"] == 0.0


def test_effect_ablation_table():
    sites = sim.default_sites()[:3]
    table = effects.effect_ablation("quick", 0, n_subjects=1, sites=sites, voxel_mm=V)
    assert list(table.index) == ["all on", *[f"no {e}" for e in effects.EFFECTS], "all off"]
    # all off: every site is the target site's scanner without noise, so the scans are identical
    assert table.loc["all off", "identity_psnr"] == effects.PSNR_MAX_DB
    assert table.loc["all on", "identity_psnr"] < 30
    # the gain alone is what the per-scan rescale removes
    assert table.loc["no gain", "p95_psnr"] == pytest.approx(table.loc["all on", "p95_psnr"], abs=1e-6)
    assert table.loc["no gain", "identity_psnr"] > table.loc["all on", "identity_psnr"]
    assert table.loc["no contrast", "p95_psnr"] > table.loc["all on", "p95_psnr"]
    text = effects.format_table(table)
    assert "no transmit" in text and "gap_share" in text
    with pytest.raises(effects.ConfigError):
        effects.switch_off(sites[0], "colour", sites[0])
