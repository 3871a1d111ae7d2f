from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from harmbench_plugins.evaluators.wasserstein import wasserstein_1d
from harmbench_plugins.harmonizers import hail
from harmbench_plugins.harmonizers.hail import HAILHarmonizer, normalise

from harmbench.data.scan import Cohort
from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.testing import check_harmonizer

#: The conformance checks fit six times: a network of a few hundred weights, a handful of steps.
TINY = {"channels": 4, "pretrain_steps": 4, "style_steps": 3, "pretrain_patch_size": 16}
#: Enough training for behaviour to show on the 8 mm cohort (a few seconds per fit).
MODEST = {"channels": 8, "pretrain_steps": 120, "style_steps": 40, "pretrain_patch_size": 16}


@pytest.fixture(scope="module")
def fitted(tiny_split):
    """MODEST fits with and without the consistency loss (shared by the behavioural tests)."""
    train, target, reference, _ = tiny_split
    rng = np.random.default_rng
    return {
        w: HAILHarmonizer(**MODEST, consistency_weight=w).fit(train, target, reference, rng=rng(0)) for w in (20.0, 0.0)
    }


def test_conformance(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(HAILHarmonizer(**TINY), train, target, reference, tests[:2])


def test_conformance_two_levels_and_no_consistency(tiny_split):
    train, target, reference, tests = tiny_split
    h = HAILHarmonizer(**TINY, levels=2, consistency_weight=0.0)
    out = h.fit(train, target, reference, rng=np.random.default_rng(1)).transform(tests[0], reference)
    assert out.shape == tests[0].shape and out.data.dtype == np.float32 and np.isfinite(out.data).all()
    # 24×32×24 is a multiple of the stride 2: an odd-shaped scan exercises the pad-and-crop of inference
    crop = (slice(0, 23), slice(0, 31), slice(1, 24))
    odd = dataclasses.replace(tests[0], data=tests[0].data[crop], mask=tests[0].brain[crop], labels=None)
    out = h.transform(odd, reference)
    assert out.shape == (23, 31, 23) and np.isfinite(out.data).all()


def test_moves_towards_the_target(fitted, tiny_split, tiny_cohort):
    _, target, reference, tests = tiny_split
    h = fitted[20.0]
    ratios = []
    for scan in tests:
        truth = tiny_cohort.find(scan.subject, target)
        before = wasserstein_1d(scan.brain_values(), truth.brain_values())
        after = wasserstein_1d(h.transform(scan, reference).brain_values(), truth.brain_values())
        ratios.append(after / before)  # nWD(t, p); identity gives 1
    assert np.mean(ratios) < 0.3, ratios


def test_consistency_keeps_a_same_site_input_close_to_itself(fitted, tiny_split, tiny_cohort):
    """Input and reference from the same (target) site: with the consistency loss the output stays nearer the
    input than without it — the paper's guard against over-correction."""
    _, target, reference, tests = tiny_split
    same_site = [tiny_cohort.find(s.subject, target) for s in tests]

    def deviation(h: HAILHarmonizer) -> float:
        devs = []
        for scan in same_site:
            out = h.transform(scan, reference)
            devs.append(np.abs(out.data[scan.brain] - scan.data[scan.brain]).mean() / scan.data[scan.brain].mean())
        return float(np.mean(devs))

    with_consistency, without = deviation(fitted[20.0]), deviation(fitted[0.0])
    # Simulator v1 gave a margin of more than 20 %; on simulator v2 (per-scan receive and transmit fields)
    # the guard still points the same way but is small: measured 0.125 with against 0.133 without.
    assert with_consistency < without, (with_consistency, without)
    assert with_consistency < 0.2


def test_output_is_in_the_reference_scale_and_background_is_kept(fitted, tiny_split):
    _, _, reference, tests = tiny_split
    scan = tests[0]
    rescaled = scan.with_data(scan.data * 7.0)  # a site with another gain gives the same output scale
    a, b = fitted[20.0].transform(scan, reference), fitted[20.0].transform(rescaled, reference)
    _, _, ref_p95 = normalise(reference)
    assert 0.7 < np.percentile(a.data[scan.brain], 95) / ref_p95 < 1.3
    np.testing.assert_allclose(a.data, b.data, rtol=1e-4, atol=1e-4 * ref_p95)
    np.testing.assert_array_equal(a.data[~scan.brain], scan.data[~scan.brain])


def test_seed_matters_and_is_reproducible(tiny_split):
    train, target, reference, tests = tiny_split

    def run(seed: int) -> np.ndarray:
        h = HAILHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(seed))
        return h.transform(tests[0], reference).data

    first = run(3)
    np.testing.assert_array_equal(first, run(3))
    assert not np.array_equal(first, run(4))


def test_save_load_round_trip_and_architecture_mismatch(fitted, tiny_split, tmp_path):
    _, _, reference, tests = tiny_split
    h = fitted[20.0]
    h.save(tmp_path)
    loaded = HAILHarmonizer(**MODEST, consistency_weight=20.0).load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(tests[0], reference).data, h.transform(tests[0], reference).data)
    with pytest.raises(PluginError, match="channels"):
        HAILHarmonizer(**{**MODEST, "channels": 6}).load(tmp_path)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"style_weight": -1.0}, "style_weight"),
        ({"consistency_weight": float("nan")}, "consistency_weight"),
        ({"content_weight": "1"}, "content_weight"),
        ({"channels": 0}, "channels"),
        ({"levels": 5}, "levels"),
        ({"patch_size": 30, "levels": 3}, "patch_size"),
        ({"pretrain_patch_size": 2}, "pretrain_patch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"pretrain_steps": -1}, "pretrain_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"device": "tpu"}, "device"),
        ({"content_weight": 0.0, "style_weight": 0.0, "consistency_weight": 0.0}, "consistency_weight"),
    ],
)
def test_bad_parameters_name_themselves(tiny_split, params, name):
    train, target, reference, _ = tiny_split
    with pytest.raises(ConfigError, match=name):
        HAILHarmonizer(**{**TINY, **params}).fit(train, target, reference)


def test_transform_needs_the_reference(fitted, tiny_split):
    _, _, _, tests = tiny_split
    with pytest.raises(DataError, match="reference"):
        fitted[20.0].transform(tests[0], None)


def test_training_scans_must_share_a_grid(tiny_cohort):
    a = tiny_cohort[0]
    b = tiny_cohort[1]
    b = dataclasses.replace(b, data=np.pad(b.data, 1), mask=np.pad(b.brain, 1), labels=None)
    with pytest.raises(DataError, match="shapes"):
        HAILHarmonizer(**TINY).fit(Cohort([a, b]), a.site, a)


def test_registered():
    assert hail.harmbench_register_harmonizers() == [HAILHarmonizer]
    meta = HAILHarmonizer.meta
    assert meta.name == "hail" and meta.uses_reference and meta.handles_unseen_sites and "cuda" in meta.devices


def test_stage_one_is_shared_between_configurations_bit_for_bit(tiny_split, tmp_path, monkeypatch):
    # hail and hail-no-consistency differ only in stage 2: with a shared_dir the second pre-trains no more,
    # and every weight equals a fit that pre-trained itself
    train, target, reference, _ = tiny_split
    pretrained = []
    real = HAILHarmonizer._pretrain
    monkeypatch.setattr(HAILHarmonizer, "_pretrain", lambda self, *a: pretrained.append(1) or real(self, *a))

    def fit(shared, **params):
        h = HAILHarmonizer(**{**TINY, **params})
        h.shared_dir = shared
        return h.fit(train, target, reference, rng=np.random.default_rng(5))

    fit(tmp_path, consistency_weight=20.0)
    assert len(pretrained) == 1 and len(list(tmp_path.glob("stage1-*/training.pt"))) == 1
    shared = fit(tmp_path, consistency_weight=0.0)
    assert len(pretrained) == 1  # loaded, not trained
    alone = fit(None, consistency_weight=0.0)
    assert len(pretrained) == 2
    for key, value in alone.get_state().items():
        np.testing.assert_array_equal(shared.get_state()[key], value, err_msg=key)
    # a stage-1 parameter changes the key: pre-trained again
    fit(tmp_path, consistency_weight=0.0, pretrain_steps=TINY["pretrain_steps"] + 1)
    assert len(pretrained) == 3 and len(list(tmp_path.glob("stage1-*"))) == 2
