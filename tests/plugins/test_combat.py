from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest
from harmbench_plugins.evaluators.wasserstein import wasserstein_1d
from harmbench_plugins.harmonizers import combat
from harmbench_plugins.harmonizers.combat import ComBatHarmonizer, ComBatRefitHarmonizer
from neuroHarmonize import harmonizationApply, harmonizationLearn

from harmbench.data.scan import Cohort, Scan, stack_brain
from harmbench.data.sim import simulate_cohort
from harmbench.errors import ConfigError, DataError
from harmbench.testing import (
    check_harmonizer,
)

COVARIATES = ["age", "sex"]


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    """Twelve subjects at every simulated site, 8 mm voxels (ages 32–73)."""
    return simulate_cohort("quick", seed=0, n_subjects=12, voxel_mm=8)


@pytest.fixture(scope="module")
def split(cohort):
    """Unpaired training: subjects 1–9 over three seen sites, three scans each; subjects 10–12 are test subjects."""
    sites, subjects = cohort.sites, cohort.subjects
    seen, unseen = sites[:3], sites[4:]
    train = Cohort([cohort.find(s, seen[i % 3]) for i, s in enumerate(subjects[:9])], name="train")
    target = seen[0]
    reference = train.by_site(target)[0]
    test_seen = [cohort.find(s, site) for s in subjects[9:] for site in seen[1:]]
    test_unseen = {site: [cohort.find(s, site) for s in subjects[9:]] for site in unseen}
    return train, target, reference, test_seen, test_unseen


def _covars(scans) -> pd.DataFrame:
    return pd.DataFrame({"SITE": [s.site for s in scans], **{c: [s.covariates[c] for s in scans] for c in COVARIATES}})


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    # our output is float32: compare to 1e-6 of the intensity scale
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * float(np.abs(theirs).max()))


# -- conformance -------------------------------------------------------------------------------------------------


def test_conformance_combat(split):
    train, target, reference, test_seen, _ = split
    check_harmonizer(ComBatHarmonizer(), train, target, reference, test_seen[:4])


def test_conformance_combat_refit(split):
    train, target, reference, test_seen, test_unseen = split
    # seen-site scans plus every scan of one unseen site: the kit adapts to each site as the runner does
    site, scans = next(iter(test_unseen.items()))
    check_harmonizer(ComBatRefitHarmonizer(), train, target, reference, [*test_seen[:4], *scans])
    fitted = ComBatRefitHarmonizer().fit(train, target, reference).adapt(scans)
    assert site in set(fitted.get_state()["site_labels"])


def test_conformance_combat_refit_invents_an_unseen_site(split):
    """Without real unseen scans, the kit's invented scanner (two scans) goes through adapt() too."""
    train, target, reference, test_seen, _ = split
    check_harmonizer(ComBatRefitHarmonizer(), train, target, reference, test_seen[:4])


def test_meta_and_registration():
    assert combat.harmbench_register_harmonizers() == [ComBatHarmonizer, ComBatRefitHarmonizer]
    assert ComBatHarmonizer.meta.name == "combat" and not ComBatHarmonizer.meta.handles_unseen_sites
    refit = ComBatRefitHarmonizer.meta
    assert refit.name == "combat-refit" and refit.transductive and refit.handles_unseen_sites
    assert "transductive" in refit.description.lower()


# -- equality with neuroHarmonize -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_voxels", [65536, 333])
def test_equals_neuroharmonize_learn_and_apply(split, chunk_voxels):
    train, target, _, test_seen, _ = split
    h = ComBatHarmonizer(chunk_voxels=chunk_voxels).fit(train, target)
    mask = h.mask_
    assert np.array_equal(h.combat_mask_, mask)  # no degenerate voxel in this cohort: the whole model is ComBat
    X = stack_brain(list(train), mask)
    model, adjusted = harmonizationLearn(X, _covars(train), eb=True, ref_batch=target)
    for key, ours in (("B_hat", h.B_hat_), ("gamma_star", h.gamma_star_), ("delta_star", h.delta_star_)):
        np.testing.assert_allclose(ours, model[key], rtol=1e-6, atol=1e-9, err_msg=key)
    np.testing.assert_allclose(h.var_pooled_, model["var_pooled"][:, 0], rtol=1e-6)
    _assert_close(np.stack([h.transform(s).data[mask] for s in train]), adjusted)

    # with ref_batch, harmonizationApply needs every trained site in the batch: stack train + test rows
    T = stack_brain(test_seen, mask)
    applied = harmonizationApply(np.vstack([X, T]), _covars([*train, *test_seen]), model)[len(train) :]
    for scan, expected in zip(test_seen, applied, strict=True):
        inside = scan.brain[mask]  # voxels outside the scan's own brain stay as input (mask preserved)
        _assert_close(h.transform(scan).data[mask][inside], expected[inside])
    # and our state, handed back to neuroHarmonize as a model dict, gives the same
    again = harmonizationApply(np.vstack([X, T]), _covars([*train, *test_seen]), h.neuroharmonize_model())
    np.testing.assert_allclose(again[len(train) :], applied, rtol=1e-9, atol=1e-9)


def test_refit_equals_neuroharmonize_orig_model(split, monkeypatch):
    """Our new-site estimates equal neuroHarmonize's ``orig_model`` path, once its 2.5.2 bugs are worked around."""
    nh_learn = sys.modules["neuroHarmonize.harmonizationLearn"]  # the package exports a function of that name
    train, target, _, _, test_unseen = split
    scans = next(iter(test_unseen.values()))
    h = ComBatRefitHarmonizer().fit(train, target)
    nb, ref = len(h.site_labels_), h.ref_level_
    # bug 1: info_dict of the new site lacks 'ref_level' (KeyError); bug 2: shapes only align when the model has
    # as many sites as the new data, so hand it the reference site alone (all the new-site path reads from it)
    for fn, info_dict_arg in (("find_parametric_adjustments", 2), ("adjust_data_final", 7)):
        original = getattr(nh_learn, fn)

        def patched(*args, _original=original, _at=info_dict_arg, **kwargs):
            args[_at].setdefault("ref_level", None)
            return _original(*args, **kwargs)

        monkeypatch.setattr(nh_learn, fn, patched)
    reduced = {
        **h.neuroharmonize_model(),
        "SITE_labels": np.array([target]),
        "B_hat": np.vstack([h.B_hat_[[ref]], h.B_hat_[nb:]]),
        "gamma_star": h.gamma_star_[[ref]],
        "delta_star": h.delta_star_[[ref]],
        "info_dict": {"n_batch": 1, "batch_levels": np.arange(1), "ref_level": 0},
    }
    X = stack_brain(scans, h.combat_mask_)
    model, adjusted = harmonizationLearn(X, _covars(scans), eb=True, orig_model=reduced)
    h.adapt(scans)
    np.testing.assert_allclose(h.gamma_star_[-1], model["gamma_star"][-1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(h.delta_star_[-1], model["delta_star"][-1], rtol=1e-6)
    np.testing.assert_allclose(h.B_hat_[nb], model["B_hat"][1], rtol=1e-6)
    for scan, expected in zip(scans, adjusted, strict=True):
        inside = scan.brain[h.combat_mask_]
        _assert_close(h.transform(scan).data[h.combat_mask_][inside], expected[inside])


# -- behaviour ---------------------------------------------------------------------------------------------------


def test_refit_equals_combat_on_seen_sites_and_adapt_is_a_no_op_there(split):
    train, target, _, test_seen, _ = split
    plain = ComBatHarmonizer().fit(train, target)
    refit = ComBatRefitHarmonizer().fit(train, target)
    before = {k: v.copy() for k, v in refit.get_state().items()}
    refit.adapt([s for s in test_seen if s.site == test_seen[0].site])
    for key, value in refit.get_state().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    for scan in test_seen:
        np.testing.assert_array_equal(refit.transform(scan).data, plain.transform(scan).data)


def test_target_site_scans_are_left_unchanged(split, cohort):
    train, target, _, _, _ = split
    h = ComBatHarmonizer().fit(train, target)
    scan = cohort.find(cohort.subjects[7], target)
    np.testing.assert_array_equal(h.transform(scan).data, scan.data)


def test_combat_refuses_an_unseen_site(split):
    train, target, _, _, test_unseen = split
    h = ComBatHarmonizer().fit(train, target)
    scan = next(iter(test_unseen.values()))[0]
    with pytest.raises(DataError, match="not in training"):
        h.transform(scan)
    with pytest.raises(DataError, match="not in training"):
        ComBatRefitHarmonizer().fit(train, target).transform(scan)  # refit too, until adapt() saw the site


def test_refit_state_round_trips_after_adapt(split, tmp_path):
    train, target, _, _, test_unseen = split
    site, scans = next(iter(test_unseen.items()))
    h = ComBatRefitHarmonizer().fit(train, target).adapt(scans)
    h.save(tmp_path)
    loaded = ComBatRefitHarmonizer().load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(scans[0]).data, h.transform(scans[0]).data)
    state = np.load(tmp_path / "state.npz", allow_pickle=False)
    assert state["site_labels"].dtype.kind == "U" and site in set(state["site_labels"])


def test_refit_needs_two_scans_of_a_new_site(split):
    train, target, _, _, test_unseen = split
    scans = next(iter(test_unseen.values()))
    h = ComBatRefitHarmonizer().fit(train, target)
    with pytest.raises(DataError, match="at least 2"):
        h.adapt(scans[:1])
    with pytest.raises(DataError, match="one site"):
        h.adapt([*scans[:1], *list(test_unseen.values())[1][:1]])


def test_lowers_w1_to_the_target_versus_identity(split, cohort):
    train, target, _, test_seen, test_unseen = split
    h = ComBatRefitHarmonizer().fit(train, target)
    for scans in test_unseen.values():
        h.adapt(scans)
    before, after = [], []
    for scan in [*test_seen, *(s for scans in test_unseen.values() for s in scans)]:
        truth = cohort.find(scan.subject, target).brain_values()
        before.append(wasserstein_1d(scan.brain_values(), truth))
        after.append(wasserstein_1d(h.transform(scan).brain_values(), truth))
    assert np.mean(after) < 0.5 * np.mean(before), (np.mean(before), np.mean(after))


@pytest.mark.parametrize("value", [0.0, 100.0])
def test_voxels_constant_across_scans_give_no_nan(split, value):
    """neuroHarmonize returns NaN for a voxel zero in every scan (and divides by ~1e-13 for any other constant);
    we leave such voxels out of ComBat and map them with the site-level fallback."""
    train, target, _, test_seen, _ = split
    mask = train.common_mask()
    where = tuple(np.argwhere(mask)[:5].T)
    flat_scans = []
    for scan in train:
        data = scan.data.copy()
        data[where] = value
        flat_scans.append(scan.with_data(data))
    flat = Cohort(flat_scans, name="flat")
    X = stack_brain(list(flat), mask)
    with np.errstate(all="ignore"):
        _, adjusted = harmonizationLearn(X, _covars(flat), ref_batch=target)
    if value == 0.0:
        assert np.isnan(adjusted).any()  # what neuroHarmonize does with them
    h = ComBatHarmonizer().fit(flat, target)
    assert not h.combat_mask_[where].any() and h.combat_mask_.sum() == mask.sum() - 5
    for scan in [*flat, *test_seen]:
        out = h.transform(scan)
        assert np.isfinite(out.data).all()
    source = next(s for s in flat if s.site != target)
    j = int(np.flatnonzero(h.site_labels_ == source.site)[0])
    expected = h.fallback_scale_[j] * value + h.fallback_shift_[j]
    np.testing.assert_allclose(h.transform(source).data[where], expected, rtol=1e-5)


def test_brain_voxels_outside_the_common_mask_use_the_site_fallback(split):
    train, target, _, test_seen, _ = split
    h = ComBatHarmonizer().fit(train, target)
    scan = test_seen[0]
    outside = scan.brain & ~h.combat_mask_
    assert outside.any()
    out = h.transform(scan)
    j = int(np.flatnonzero(h.site_labels_ == scan.site)[0])
    np.testing.assert_allclose(
        out.data[outside], h.fallback_scale_[j] * scan.data[outside] + h.fallback_shift_[j], rtol=1e-5
    )
    np.testing.assert_array_equal(out.data[~scan.brain], scan.data[~scan.brain])  # background untouched
    assert h.fallback_scale_[h.ref_level_] == 1.0 and h.fallback_shift_[h.ref_level_] == 0.0


# -- errors ------------------------------------------------------------------------------------------------------


def test_a_site_with_one_training_scan_is_refused(split):
    train, target, _, _, _ = split
    lonely = train.by_site(train.sites[1])[0]
    fewer = train.filter(lambda s: s.site != lonely.site or s is lonely)
    with pytest.raises(DataError, match=rf"at least 2 .*{lonely.site} \(1\)"):
        ComBatHarmonizer().fit(fewer, target)


def _with_covariates(cohort: Cohort, index: int, **covariates) -> Cohort:
    scans = list(cohort)
    scans[index] = dataclasses.replace(scans[index], covariates={**scans[index].covariates, **covariates})
    return Cohort(scans, name=cohort.name)


@pytest.mark.parametrize(
    ("value", "match"), [(None, "missing"), (float("nan"), "missing"), ("F", "not a number"), (np.inf, "not finite")]
)
def test_bad_covariates_are_refused(split, value, match):
    train, target, _, _, _ = split
    with pytest.raises(DataError, match=match):
        ComBatHarmonizer().fit(_with_covariates(train, 2, sex=value), target)


def test_covariates_can_be_chosen(split):
    train, target, _, test_seen, _ = split
    bad = _with_covariates(train, 2, sex="F")
    h = ComBatHarmonizer(covariates=["age"]).fit(bad, target)
    assert h.covariate_names_ == ["age"] and np.isfinite(h.transform(test_seen[0]).data).all()
    assert ComBatHarmonizer(covariates=[]).fit(bad, target).B_hat_.shape[0] == len(h.site_labels_)


def test_collinear_covariate_is_refused(split):
    train, target, _, _, _ = split
    codes = {site: float(i) for i, site in enumerate(train.sites)}
    scans = [dataclasses.replace(s, covariates={**s.covariates, "scanner": codes[s.site]}) for s in train]
    with pytest.raises(DataError, match="singular"):
        ComBatHarmonizer().fit(Cohort(scans), target)


def test_covariate_out_of_range(split):
    train, target, _, test_seen, _ = split
    old = dataclasses.replace(test_seen[0], covariates={**test_seen[0].covariates, "age": 95.0})
    with pytest.raises(DataError, match="outside the training range"):
        ComBatHarmonizer().fit(train, target).transform(old)
    clipped = ComBatHarmonizer(covariate_range="clip").fit(train, target).transform(old)
    high = ComBatHarmonizer(covariate_range="clip").fit(train, target).covariate_high_[0]
    at_edge = dataclasses.replace(old, covariates={**old.covariates, "age": float(high)})
    edge = ComBatHarmonizer(covariate_range="extrapolate").fit(train, target).transform(at_edge)
    np.testing.assert_allclose(clipped.data, edge.data, rtol=1e-5)
    assert np.isfinite(ComBatHarmonizer(covariate_range="extrapolate").fit(train, target).transform(old).data).all()


@pytest.mark.parametrize(
    ("params", "match"), [({"covariate_range": "wrap"}, "covariate_range"), ({"chunk_voxels": 0}, "chunk_voxels")]
)
def test_invalid_parameters_name_the_parameter(split, params, match):
    train, target, _, _, _ = split
    with pytest.raises(ConfigError, match=match):
        ComBatHarmonizer(**params).fit(train, target)


def test_missing_target_site_is_refused(split):
    train, _, _, _, _ = split
    with pytest.raises(DataError, match="no scan from target site"):
        ComBatHarmonizer().fit(train, "nowhere")


def test_wrong_shape_is_refused(split):
    train, target, _, test_seen, _ = split
    small: Scan = test_seen[0].with_data(test_seen[0].data[:-1])
    small = dataclasses.replace(small, mask=None)
    with pytest.raises(DataError, match="shape"):
        ComBatHarmonizer().fit(train, target).transform(small)


# -- in the runner -----------------------------------------------------------------------------------------------


def test_runner_scores_combat_on_seen_and_not_applicable_on_unseen(tmp_path):
    from conftest import tiny_suite

    from harmbench.runner import Runner

    suite = dataclasses.replace(
        tiny_suite(harmonizers=("identity", "combat", "combat-refit"), evaluators=("wasserstein",)),
        dataset_params={"profile": "quick", "n_subjects": 16, "voxel_mm": 8},
    )
    results = pd.read_parquet(Runner(suite, tmp_path, progress=False).run().results_path)
    status = results.groupby(["harmonizer", "scenario"])["status"].agg(set).to_dict()
    assert status[("combat", "seen")] == {"ok"} and status[("combat", "unseen")] == {"not_applicable"}
    assert status[("combat-refit", "seen")] == {"ok"} and status[("combat-refit", "unseen")] == {"ok"}
    nwd = results[results["metric"] == "nwd_tp"].groupby(["harmonizer", "scenario"])["value"].mean()
    assert nwd[("combat", "seen")] < 0.5 * nwd[("identity", "seen")]
    assert nwd[("combat-refit", "unseen")] < 0.5 * nwd[("identity", "unseen")]
    assert nwd[("combat-refit", "seen")] == nwd[("combat", "seen")]
    assert results.loc[results["harmonizer"] == "combat-refit", "transductive"].all()
