"""Loading real data: BIDS-like folders, CSV manifests, and every refusal naming the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from harmbench.data.io import load_bids, load_manifest, load_path, write_bids
from harmbench.data.scan import Cohort
from harmbench.errors import DataError


def _save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def _manifest(tmp_path, rows, columns=("subject", "site", "path")):
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def _volume(seed, shape=(6, 7, 5)):
    rng = np.random.default_rng(seed)
    vol = rng.uniform(1, 2, size=shape).astype(np.float32)
    vol[0] = 0
    return vol


def test_bids_round_trip_is_unchanged(tiny_cohort, tmp_path):
    small = Cohort([s for s in tiny_cohort if s.subject in tiny_cohort.subjects[:3]], name="harmbench-sim")
    write_bids(small, tmp_path / "bids", progress=False)
    back = load_bids(tmp_path / "bids", progress=False)
    assert len(back) == len(small)
    rescans = [s for s in small if s.session == "rescan"]
    assert rescans, "the simulated cohort has target-site rescans"
    for scan in small:
        other = (back.find_rescan if scan.session else back.find)(scan.subject, scan.site)
        assert other is not None and other.key == scan.key and other.session == scan.session
        np.testing.assert_array_equal(other.data, scan.data)
        np.testing.assert_array_equal(other.mask, scan.mask)
        np.testing.assert_array_equal(other.labels, scan.labels)
        np.testing.assert_allclose(other.affine, scan.affine, atol=1e-5)
        assert dict(other.covariates) == pytest.approx(dict(scan.covariates))
    assert set(back.traveling_subjects()) == set(small.subjects)


def test_manifest_resolves_relative_paths_and_reads_covariates(tmp_path):
    for i in range(4):
        _save(tmp_path / "img" / f"s{i}.nii.gz", _volume(i))
    path = _manifest(
        tmp_path,
        [(f"p{i % 2}", f"site{i // 2}", f"img/s{i}.nii.gz", 30 + i) for i in range(4)],
        columns=("subject", "site", "path", "age"),
    )
    cohort = load_path(path, progress=False)
    assert cohort.sites == ["site0", "site1"]
    assert cohort.scans[2].covariates == {"age": 32}
    assert cohort.traveling_subjects() == ["p0", "p1"]


def test_manifest_without_site_column(tmp_path):
    path = _manifest(tmp_path, [("a", "x.nii.gz")], columns=("subject", "path"))
    with pytest.raises(DataError, match="no 'site' column") as err:
        load_manifest(path, progress=False)
    assert str(path) in str(err.value)


def test_truncated_nifti_is_named(tmp_path):
    good = _save(tmp_path / "a.nii.gz", _volume(0))
    bad = tmp_path / "b.nii.gz"
    bad.write_bytes(good.read_bytes()[:200])
    path = _manifest(tmp_path, [("a", "s", "a.nii.gz"), ("b", "s", "b.nii.gz")])
    with pytest.raises(DataError, match="cannot read") as err:
        load_manifest(path, progress=False)
    assert str(bad) in str(err.value)


def test_4d_image_is_refused(tmp_path):
    _save(tmp_path / "a.nii.gz", np.ones((4, 4, 4, 3), np.float32))
    path = _manifest(tmp_path, [("a", "s", "a.nii.gz")])
    with pytest.raises(DataError, match="4-D") as err:
        load_manifest(path, progress=False)
    assert "a.nii.gz" in str(err.value)


def test_mismatched_shapes_are_refused(tmp_path):
    _save(tmp_path / "a.nii.gz", _volume(0))
    _save(tmp_path / "b.nii.gz", _volume(1, shape=(6, 7, 6)))
    path = _manifest(tmp_path, [("a", "s", "a.nii.gz"), ("b", "s", "b.nii.gz")])
    with pytest.raises(DataError, match="shape") as err:
        load_manifest(path, progress=False)
    assert "b.nii.gz" in str(err.value)


def test_site_with_one_scan_is_refused(tmp_path):
    for name in "abc":
        _save(tmp_path / f"{name}.nii.gz", _volume(ord(name)))
    path = _manifest(tmp_path, [("a", "s1", "a.nii.gz"), ("b", "s1", "b.nii.gz"), ("c", "lonely", "c.nii.gz")])
    with pytest.raises(DataError, match="'lonely' has only 1 scan") as err:
        load_manifest(path, progress=False)
    assert "c.nii.gz" in str(err.value)


def test_nan_and_empty_mask_are_refused(tmp_path):
    vol = _volume(0)
    vol[2, 2, 2] = np.nan
    _save(tmp_path / "nan.nii.gz", vol)
    _save(tmp_path / "ok.nii.gz", _volume(1))
    _save(tmp_path / "empty_mask.nii.gz", np.zeros((6, 7, 5), np.uint8))
    path = _manifest(tmp_path, [("a", "s", "nan.nii.gz"), ("b", "s", "ok.nii.gz")])
    with pytest.raises(DataError, match="NaN") as err:
        load_manifest(path, progress=False)
    assert "nan.nii.gz" in str(err.value)
    path = _manifest(
        tmp_path, [("b", "s", "ok.nii.gz", "empty_mask.nii.gz")], columns=("subject", "site", "path", "mask")
    )
    with pytest.raises(DataError, match="mask is empty"):
        load_manifest(path, progress=False)


def test_missing_file_is_named(tmp_path):
    path = _manifest(tmp_path, [("a", "s", "missing.nii.gz")])
    with pytest.raises(DataError, match=r"missing\.nii\.gz"):
        load_manifest(path, progress=False)


def test_bids_rescans_come_back_as_sessions(tiny_cohort, tmp_path):
    """`harmbench data synth` output: the rescan folder is read back as session "rescan" at the same site."""
    subject = tiny_cohort.subjects[0]
    scans = [s for s in tiny_cohort if s.subject in tiny_cohort.subjects[:2]]
    write_bids(Cohort(scans, name="x"), tmp_path / "bids", progress=False)
    sessions = pd.read_csv(tmp_path / "bids" / subject / f"{subject}_sessions.tsv", sep="\t", dtype=str)
    assert "rescan" in set(sessions["session"])
    back = load_bids(tmp_path / "bids", progress=False)
    rescan = [s for s in back if s.session == "rescan" and s.subject == subject]
    assert len(rescan) == 1
    original = tiny_cohort.find_rescan(subject, rescan[0].site)
    np.testing.assert_array_equal(rescan[0].data, original.data)
    first = back.find(subject, rescan[0].site)
    assert first.session is None and not np.array_equal(first.data, rescan[0].data)


def test_manifest_session_column_marks_rescans(tmp_path):
    for i in range(4):
        _save(tmp_path / "img" / f"s{i}.nii.gz", _volume(i))
    rows = [("p0", "a", "img/s0.nii.gz", ""), ("p0", "a", "img/s1.nii.gz", "rescan")]
    rows += [("p0", "b", "img/s2.nii.gz", ""), ("p1", "b", "img/s3.nii.gz", "")]
    cohort = load_path(_manifest(tmp_path, rows, columns=("subject", "site", "path", "session")), progress=False)
    assert cohort.find("p0", "a").source.endswith("s0.nii.gz")
    assert cohort.find_rescan("p0", "a").source.endswith("s1.nii.gz")
    assert cohort.find_rescan("p0", "b") is None
