"""The simulated traveling-subject cohort `harmbench-sim` (8 mm grids for speed)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from harmbench.data import sim
from harmbench.errors import ConfigError

V = 8.0  # mm: tiny volumes keep these tests fast


@pytest.fixture(scope="module")
def cohort():
    return sim.simulate_cohort("quick", seed=0, n_subjects=3, voxel_mm=V)


def test_cohort_layout(cohort):
    sites = [s.name for s in sim.default_sites()]
    assert cohort.name == "harmbench-sim"
    # every subject at every site, plus one rescan at the default target site
    assert len(cohort) == 3 * (len(sites) + 1)
    assert cohort.sites == sites
    assert cohort.subjects == ["sub-001", "sub-002", "sub-003"]
    assert cohort.traveling_subjects() == cohort.subjects
    scan = cohort.find("sub-002", sites[0])
    assert scan.source == f"harmbench-sim:sub-002@{sites[0]}" and scan.session is None
    rescans = [s for s in cohort if s.session == "rescan"]
    assert [(s.subject, s.site) for s in rescans] == [(subj, sim.DEFAULT_TARGET_SITE) for subj in cohort.subjects]
    assert cohort.find_rescan("sub-002", sim.DEFAULT_TARGET_SITE).source.endswith("#rescan")
    assert len(cohort.without_rescans()) == 3 * len(sites)
    manifest = cohort.manifest
    assert {"age", "sex"} <= set(manifest.columns)


def test_default_table():
    sites = sim.default_sites()
    assert len(sites) >= 6
    assert {s.sequence for s in sites} == {"mprage", "spgr"}
    assert {1.5, 3.0} <= {s.field_t for s in sites}
    names = [s.name for s in sites]
    assert sim.DEFAULT_TARGET_SITE in names
    assert len(sim.DEFAULT_UNSEEN_SITES) == 2
    assert set(sim.DEFAULT_UNSEEN_SITES) <= set(names) - {sim.DEFAULT_TARGET_SITE}
    for p in ("quick", "default", "standard", "full"):
        assert p in sim.PROFILES


def test_scans_are_valid(cohort):
    for scan in cohort:
        assert scan.data.dtype == np.float32
        assert np.isfinite(scan.data).all()
        assert (scan.data >= 0).all()
        assert scan.mask.dtype == bool and scan.mask.shape == scan.shape
        assert scan.labels.dtype == np.uint8
        assert set(np.unique(scan.labels)) <= {0, 1, 2, 3}
        assert ((scan.labels > 0) == scan.mask).all()
        assert (scan.data[~scan.mask] == 0).all()
        assert (scan.data[scan.mask] > 0).mean() > 0.99


def test_affine_is_the_grid_to_mni_mapping(cohort):
    scan = cohort[0]
    np.testing.assert_allclose(np.abs(np.diag(scan.affine)[:3]), [V, V, V])
    np.testing.assert_allclose(scan.affine[3], [0, 0, 0, 1])
    assert all(n % 8 == 0 for n in scan.shape)
    # The mask's centre of mass lands inside the MNI brain, near the origin.
    centre = np.argwhere(scan.mask).mean(axis=0)
    world = scan.affine[:3, :3] @ centre + scan.affine[:3, 3]
    assert np.all(np.abs(world - [0, -18, 15]) < 20), world
    shape, affine = sim.simulation_grid("quick", voxel_mm=V)
    assert shape == scan.shape
    np.testing.assert_array_equal(affine, scan.affine)


def test_profile_grids():
    shape4, affine4 = sim.simulation_grid("quick")
    shape2, affine2 = sim.simulation_grid("standard")
    np.testing.assert_allclose(np.diag(affine4)[:3], [4, 4, 4])
    np.testing.assert_allclose(np.diag(affine2)[:3], [2, 2, 2])
    # Both grids cover the same brain: their extents in MNI space agree to a voxel.
    for shape, affine in ((shape4, affine4), (shape2, affine2)):
        lo = affine[:3, 3]
        hi = lo + (np.array(shape) - 1) * np.diag(affine)[:3]
        assert np.all(lo < [-65, -100, -45]) and np.all(hi > [65, 65, 75])


def test_labels_and_mask_identical_across_sites(cohort):
    for subject in cohort.subjects:
        scans = [s for s in cohort if s.subject == subject]
        for s in scans[1:]:
            np.testing.assert_array_equal(s.labels, scans[0].labels)
            np.testing.assert_array_equal(s.mask, scans[0].mask)
            assert s.covariates == scans[0].covariates
            np.testing.assert_array_equal(s.affine, scans[0].affine)
    # ...but subjects differ from one another.
    a, b = cohort.without_rescans().by_site(cohort.sites[0])[:2]
    assert (a.labels != b.labels).mean() > 0.01


def test_covariates(cohort):
    for scan in cohort:
        assert 20 <= scan.covariates["age"] <= 80
        assert scan.covariates["sex"] in (0, 1)


def test_contrast_is_t1_weighted_at_every_site(cohort):
    for scan in cohort:
        med = [np.median(scan.data[scan.labels == t]) for t in (1, 2, 3)]
        assert med[2] > med[1] > med[0], (scan.source, med)


def test_sites_differ_clearly(cohort):
    scans = [s for s in cohort if s.subject == "sub-001"]
    wm = {s.site: float(np.median(s.data[s.labels == 3])) for s in scans}
    values = sorted(wm.values())
    # Scale: no two sites share a WM level within 10 %.
    assert all(b / a > 1.1 for a, b in itertools.pairwise(values)), wm
    # Contrast, with the scale removed: GM/WM ratios span a clear range.
    ratios = [np.median(s.data[s.labels == 2]) / np.median(s.data[s.labels == 3]) for s in scans]
    assert max(ratios) - min(ratios) > 0.08, ratios


def test_deterministic_for_a_seed():
    a = sim.simulate_subject(1, seed=5, voxel_mm=V)
    b = sim.simulate_subject(1, seed=5, voxel_mm=V)
    c = sim.simulate_subject(1, seed=6, voxel_mm=V)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.data, y.data)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.covariates == y.covariates
    assert any(not np.array_equal(x.data, z.data) for x, z in zip(a, c, strict=True))
    assert not np.array_equal(a[0].labels, c[0].labels)


def test_subset_of_subjects_gives_the_same_scans(cohort):
    small = sim.simulate_cohort("quick", seed=0, n_subjects=2, voxel_mm=V)
    for scan in small:
        full = (cohort.find_rescan if scan.session else cohort.find)(scan.subject, scan.site)
        np.testing.assert_array_equal(scan.data, full.data)
        np.testing.assert_array_equal(scan.labels, full.labels)
    # One subject alone, and one site alone, match the cohort too.
    alone = sim.simulate_subject(2, sites=sim.default_sites()[-1:], voxel_mm=V)
    np.testing.assert_array_equal(alone[0].data, cohort.find("sub-003", alone[0].site).data)


def test_worker_processes_give_the_same_scans(cohort):
    # Two workers (each simulating under the caller's BLAS thread counts) against one process: equal arrays.
    serial = sim.simulate_cohort("quick", seed=0, n_subjects=3, voxel_mm=V, n_jobs=1)
    assert [s.key for s in serial] == [s.key for s in cohort]
    parallel = sim.simulate_cohort("quick", seed=0, n_subjects=3, voxel_mm=V, n_jobs=2)
    assert [s.key for s in parallel] == [s.key for s in serial]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.covariates, a.source, a.session) == (b.covariates, b.source, b.session)


def test_atrophy_grows_csf_with_age():
    scans = [sim.simulate_subject(i, sites=sim.default_sites()[:1], voxel_mm=4.0)[0] for i in range(6)]
    ages = np.array([s.covariates["age"] for s in scans])
    csf = np.array([(s.labels == 1).sum() / s.mask.sum() for s in scans])
    assert np.corrcoef(ages, csf)[0, 1] > 0.5
    plain = sim.simulate_subject(0, sites=sim.default_sites()[:1], voxel_mm=4.0, atrophy=False)[0]
    if scans[0].covariates["age"] > 30:
        assert (scans[0].labels == 1).sum() > (plain.labels == 1).sum()


def test_physics_follows_field_strength():
    t1_15, t2s_15 = sim.relaxation_times(1.5)
    t1_3, t2s_3 = sim.relaxation_times(3.0)
    t1_7, _ = sim.relaxation_times(7.0)
    assert np.all(t1_3 > t1_15) and np.all(t1_7 > t1_3)
    assert np.all(t2s_3 < t2s_15)
    assert t1_15[0] > t1_15[1] > t1_15[2]  # CSF > GM > WM
    site = sim.default_sites()[0]
    lower_field = dataclasses.replace(site, field_t=1.5)
    assert not np.allclose(sim.tissue_signals(site), sim.tissue_signals(lower_field))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sites.toml"
    path.write_text(text)
    return path


EXTRA = """
[defaults]
target_site = "hitachi-1.2t-spgr"

[[site]]
name = "hitachi-1.2t-spgr"
field_t = 1.2
sequence = "spgr"
tr_ms = 20.0
te_ms = 4.0
flip_deg = 25.0
voxel_mm = [1.0, 1.0, 4.0]
bias = 0.3
noise = 0.05
gain = 40.0

[[site]]
name = "siemens-3t-mprage"
field_t = 3.0
sequence = "mprage"
tr_ms = 2000.0
ti_ms = 1000.0
te_ms = 2.5
flip_deg = 8.0
echo_spacing_ms = 6.0
voxel_mm = [1.0, 1.0, 1.0]
bias = 0.0
noise = 0.0
gain = 1.0
"""


def test_extra_sites_from_toml(tmp_path):
    path = _write(tmp_path, EXTRA)
    sites, defaults = sim.resolve_sites(path)
    names = [s.name for s in sites]
    base = [s.name for s in sim.default_sites()]
    assert names == [*base, "hitachi-1.2t-spgr"]  # replaced in place, new one appended
    replaced = sites[names.index("siemens-3t-mprage")]
    assert replaced.tr_ms == 2000.0 and replaced.train_length == 160 and replaced.noise == 0.0
    assert defaults["target_site"] == "hitachi-1.2t-spgr"
    assert defaults["unseen_sites"] == list(sim.DEFAULT_UNSEEN_SITES)
    scans = sim.simulate_subject(0, sites=[sites[names.index("hitachi-1.2t-spgr")], replaced], voxel_mm=V)
    assert [s.site for s in scans] == ["hitachi-1.2t-spgr", "siemens-3t-mprage"]
    # Other sites are unaffected by which sites are simulated alongside them.
    ref = sim.simulate_subject(0, sites=sim.default_sites()[1:2], voxel_mm=V)[0]
    again = sim.simulate_subject(0, sites=[sites[-1], sites[1]], voxel_mm=V)[1]
    np.testing.assert_array_equal(ref.data, again.data)


def test_user_table_can_replace_the_defaults(tmp_path):
    body = EXTRA.replace("[defaults]", "[defaults]\ninclude_default_sites = false")
    sites, defaults = sim.resolve_sites(_write(tmp_path, body))
    assert [s.name for s in sites] == ["hitachi-1.2t-spgr", "siemens-3t-mprage"]
    assert "unseen_sites" not in defaults


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("tr_ms = 20.0", 'tr_ms = "fast"', "tr_ms"),
        ("flip_deg = 25.0", "flip_deg = -5.0", "flip_deg"),
        ("voxel_mm = [1.0, 1.0, 4.0]", "voxel_mm = [1.0, 4.0]", "voxel_mm"),
        ("voxel_mm = [1.0, 1.0, 4.0]", "fwhm_mm = [1.0, 1.0, 4.0]", "fwhm_mm"),
        ("gain = 40.0", 'gain = 40.0\napodization = "gauss"', "apodization"),
        ("gain = 40.0", "gain = 40.0\ng_factor = 0.5", "g_factor"),
        ("gain = 40.0", "gain = 40.0\ntransmit = 0.9", "transmit"),
        ('sequence = "spgr"', 'sequence = "epi"', "sequence"),
        ("gain = 40.0", "gain = 40.0\ncolour = 3", "colour"),
        ("noise = 0.05\n", "", "noise"),
        ('name = "hitachi-1.2t-spgr"', 'name = "hitachi_1"', "name"),
        ("ti_ms = 1000.0", "ti_ms = 100.0", "ti_ms"),
        ('target_site = "hitachi-1.2t-spgr"', 'target_site = "nowhere"', "target_site"),
    ],
)
def test_bad_site_field_raises_config_error(tmp_path, old, new, field):
    assert old in EXTRA
    path = _write(tmp_path, EXTRA.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        sim.resolve_sites(path)
    message = str(info.value)
    assert str(path) in message and repr(field) in message, message


def test_invalid_toml_and_non_t1_contrast(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        sim.load_sites(_write(tmp_path, "[[site]\nname ="))
    # A long-TR, low-flip SPGR is PD-weighted: CSF brightest. Refused, naming the site.
    pd_weighted = EXTRA.replace("tr_ms = 20.0", "tr_ms = 2000.0").replace("flip_deg = 25.0", "flip_deg = 5.0")
    with pytest.raises(ConfigError, match=r"hitachi-1\.2t-spgr.*T1-weighted"):
        sim.load_sites(_write(tmp_path, pd_weighted))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="profile"):
        sim.simulate_cohort("huge")
    with pytest.raises(ConfigError, match="n_subjects"):
        sim.simulate_cohort("quick", n_subjects=0, voxel_mm=V)
    with pytest.raises(ConfigError, match="simulate_cohort: parameter 'n_jobs'"):
        sim.simulate_cohort("quick", n_subjects=1, voxel_mm=V, n_jobs=0)


def test_dataset_plugin(tmp_path):
    from harmbench_plugins.datasets.sim import SimulatedDataset, harmbench_register_datasets

    assert harmbench_register_datasets() == [SimulatedDataset]
    ds = SimulatedDataset(n_subjects=2, voxel_mm=V)
    assert ds.get_params() == {
        "profile": "quick",
        "seed": 0,
        "n_subjects": 2,
        "voxel_mm": V,
        "sites_file": None,
        "rescans": "target",
    }
    fp = ds.fingerprint()
    assert fp == SimulatedDataset(n_subjects=2, voxel_mm=V).fingerprint()
    assert fp != SimulatedDataset(n_subjects=2, voxel_mm=V, seed=1).fingerprint()
    assert fp != SimulatedDataset(n_subjects=3, voxel_mm=V).fingerprint()
    assert fp != SimulatedDataset(n_subjects=2, voxel_mm=V, rescans="all").fingerprint()
    cohort = ds.load()
    assert cohort.subjects == ["sub-001", "sub-002"]
    assert [s.site for s in cohort if s.session == "rescan"] == [sim.DEFAULT_TARGET_SITE] * 2
    none = SimulatedDataset(n_subjects=2, voxel_mm=V, rescans="none").load()
    assert all(s.session is None for s in none)
    with pytest.raises(ConfigError, match="rescans"):
        SimulatedDataset(rescans="some").fingerprint()
    assert ds.default_target_site(cohort) == sim.DEFAULT_TARGET_SITE
    assert ds.default_unseen_sites(cohort) == list(sim.DEFAULT_UNSEEN_SITES)

    path = _write(tmp_path, EXTRA)
    user = SimulatedDataset(n_subjects=1, voxel_mm=V, sites_file=str(path))
    fp_user = user.fingerprint()
    assert fp_user != fp
    path.write_text(EXTRA.replace("gain = 40.0", "gain = 41.0"))
    assert user.fingerprint() != fp_user
    cohort = user.load()
    assert "hitachi-1.2t-spgr" in cohort.sites
    assert user.default_target_site(cohort) == "hitachi-1.2t-spgr"
    with pytest.raises(ConfigError):
        SimulatedDataset(profile="nope").fingerprint()


def test_dataset_plugin_is_registered():
    from harmbench.plugins import get_plugin_manager

    pm = get_plugin_manager()
    names = [cls.name for group in pm.hook.harmbench_register_datasets() for cls in group]
    assert "harmbench-sim" in names
