from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from harmbench_plugins.harmonizers import murd
from harmbench_plugins.harmonizers.murd import PAPER_DEFAULTS, MURDHarmonizer, MURDPaperHarmonizer

from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.testing import check_harmonizer

#: The conformance checks fit several times: a few thousand weights, a handful of steps.
TINY = {
    "channels": 2,
    "n_res_blocks": 1,
    "style_blocks": 2,
    "style_dim": 4,
    "latent_dim": 4,
    "mapping_layers": 2,
    "steps": 3,
    "batch_size": 2,
    "n_style_samples": 16,
}
#: Enough training on the 8 mm cohort for the content/style split to reconstruct (a few seconds).
MODEST = {**TINY, "channels": 4, "n_downsample": 1, "style_dim": 8, "steps": 120, "batch_size": 4}


def _brain_mae(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a[mask] - b[mask]).mean())


@pytest.fixture(scope="module")
def fitted(tiny_split):
    train, target, reference, _ = tiny_split
    return MURDHarmonizer(**MODEST).fit(train, target, reference, rng=np.random.default_rng(0))


@pytest.mark.parametrize("mode", ["site", "reference"])
def test_conformance(tiny_split, mode):
    train, target, reference, tests = tiny_split
    check_harmonizer(MURDHarmonizer(**TINY, target_mode=mode), train, target, reference, tests[:2])


def test_concat_injection_and_resized_slices(tiny_split):
    """The authors' generator (style concatenated) and their fixed slice size run end to end."""
    train, target, reference, tests = tiny_split
    h = MURDHarmonizer(**TINY, style_injection="concat", slice_size=16)
    out = h.fit(train, target, reference, rng=np.random.default_rng(1)).transform(tests[0], reference)
    assert out.shape == tests[0].shape and np.isfinite(out.data).all()
    # an odd in-plane size exercises the pad/resize and crop of inference
    crop = (slice(0, 23), slice(0, 31), slice(1, 24))
    odd = dataclasses.replace(tests[0], data=tests[0].data[crop], mask=tests[0].brain[crop], labels=None)
    for slice_size in (16, None):  # resized to the network's grid, or padded to its stride
        out = h.set_params(slice_size=slice_size).transform(odd, reference)
        assert out.shape == (23, 31, 23) and np.isfinite(out.data).all()


def test_own_content_and_style_reconstruct_the_scan(fitted, tiny_split, tiny_cohort):
    """Recombining a scan's content with its own style gives back the scan, with an error well below the
    identity-to-target gap (how far the scan is from the same subject's target-site scan)."""
    _, target, _, tests = tiny_split
    ratios = []
    for scan in tests:
        truth = tiny_cohort.find(scan.subject, target)
        mask = scan.brain & truth.brain
        rebuilt = fitted.reconstruct(scan)
        ratios.append(_brain_mae(rebuilt.data, scan.data, mask) / _brain_mae(scan.data, truth.data, mask))
        np.testing.assert_array_equal(rebuilt.data[~scan.brain], scan.data[~scan.brain])
    assert max(ratios) < 0.5, ratios


def test_site_mode_follows_the_reference_site_and_target_scale(fitted, tiny_split, tiny_cohort):
    """One fitted model serves every training site as target: the reference's site label picks the style, and
    the output lands on that site's intensity scale."""
    train, _, _, tests = tiny_split
    scan = tests[0]
    outputs = {}
    for site in train.sites:
        ref = train.by_site(site)[0]
        out = fitted.transform(scan, ref)
        site_p95 = np.median([np.percentile(s.data[s.brain], 95) for s in train.by_site(site)])
        assert 0.7 < np.percentile(out.data[scan.brain], 95) / site_p95 < 1.3
        outputs[site] = out.data
    assert len({o.tobytes() for o in outputs.values()}) == len(outputs)


def test_reference_mode_accepts_an_unseen_target_site(fitted, tiny_split, tiny_cohort):
    train, _, _, tests = tiny_split
    unseen = [s for s in tiny_cohort if s.site not in train.sites]
    h = MURDHarmonizer(**MODEST, target_mode="reference").set_state(fitted.get_state())
    out = h.transform(tests[0], unseen[0])
    assert np.isfinite(out.data).all()
    with pytest.raises(DataError, match="target_mode='reference'"):
        fitted.transform(tests[0], unseen[0])
    with pytest.raises(DataError, match="reference"):
        fitted.transform(tests[0], None)


def test_seed_matters_and_is_reproducible(tiny_split):
    train, target, reference, tests = tiny_split

    def run(seed: int) -> np.ndarray:
        h = MURDHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(seed))
        return h.transform(tests[0], reference).data

    first = run(3)
    np.testing.assert_allclose(first, run(3), rtol=1e-6, atol=1e-6 * float(first.max()))
    assert not np.allclose(first, run(4))


def test_weights_cached_and_reloaded(fitted, tiny_split, tmp_path):
    _, _, reference, tests = tiny_split
    fitted.save(tmp_path)
    loaded = MURDHarmonizer(**MODEST).load(tmp_path)
    np.testing.assert_array_equal(
        loaded.transform(tests[0], reference).data, fitted.transform(tests[0], reference).data
    )
    assert loaded.sites_ == fitted.sites_
    with pytest.raises(PluginError, match="architecture"):
        MURDHarmonizer(**{**MODEST, "channels": 6}).load(tmp_path)


def test_checkpoint_resume_matches_an_uninterrupted_fit(tiny_split, tmp_path):
    """A fit killed after its first checkpoint resumes there and ends where an uninterrupted fit ends."""
    train, target, reference, tests = tiny_split
    params = {**TINY, "steps": 6, "checkpoint_every": 2}
    full = MURDHarmonizer(**params).fit(train, target, reference, rng=np.random.default_rng(5))

    class Killed(RuntimeError):
        pass

    interrupted = MURDHarmonizer(**params)
    interrupted.checkpoint_dir = tmp_path
    original = interrupted._update_ema

    def die_after_four(ema, nets, step):
        original(ema, nets, step)
        if step == 4:
            raise Killed

    interrupted._update_ema = die_after_four
    with pytest.raises(Killed):
        interrupted.fit(train, target, reference, rng=np.random.default_rng(5))
    assert (tmp_path / "training.pt").exists()
    resumed = MURDHarmonizer(**params)
    resumed.checkpoint_dir = tmp_path
    resumed.fit(train, target, reference, rng=np.random.default_rng(5))
    assert not (tmp_path / "training.pt").exists()
    a, b = full.transform(tests[0], reference).data, resumed.transform(tests[0], reference).data
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.max()))


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"target_mode": "random"}, "target_mode"),
        ({"style_injection": "add"}, "style_injection"),
        ({"channels": 0}, "channels"),
        ({"n_downsample": 5}, "n_downsample"),
        ({"slice_size": 30}, "slice_size"),
        ({"steps": 1.5}, "steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"cycle_weight": -1.0}, "cycle_weight"),
        ({"r1_weight": float("nan")}, "r1_weight"),
        ({"diversity_weight": float("inf")}, "diversity_weight"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters_name_themselves(tiny_split, params, name):
    train, target, reference, _ = tiny_split
    with pytest.raises(ConfigError, match=name):
        MURDHarmonizer(**{**TINY, **params}).fit(train, target, reference)


def test_paper_configuration():
    """``murd-paper`` carries the authors' sizes as its defaults (never trained in CI: only built and counted)."""
    h = MURDPaperHarmonizer()
    params = h.get_params()
    assert all(params[k] == v for k, v in PAPER_DEFAULTS.items())
    assert MURDPaperHarmonizer(steps=7).get_params()["steps"] == 7
    nets, disc = h._build(4, murd.resolve_device("cpu"))
    assert sum(p.numel() for p in disc.parameters()) > 0
    n_inference = sum(p.numel() for p in nets.parameters())
    assert 15_000_000 < n_inference < 25_000_000, n_inference
    assert nets.content.out_channels == 256 and nets.generator.injection == "concat"


def test_registered():
    assert murd.harmbench_register_harmonizers() == [MURDHarmonizer, MURDPaperHarmonizer]
    for cls in (MURDHarmonizer, MURDPaperHarmonizer):
        meta = cls.meta
        assert meta.uses_reference and meta.handles_unseen_sites and meta.stochastic and meta.target_agnostic
        assert "cuda" in meta.devices
