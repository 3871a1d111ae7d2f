"""CycleGAN harmonizer (Zhu et al. ICCV 2017): pairwise and pooled variants, on the tiny 8 mm cohort."""

from __future__ import annotations

import numpy as np
import pytest
from harmbench_plugins.harmonizers import cyclegan
from harmbench_plugins.harmonizers.cyclegan import (
    CycleGANHarmonizer,
    CycleGANPaperHarmonizer,
    CycleGANPooledHarmonizer,
    CycleGANPooledPaperHarmonizer,
    ImagePool,
)

from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.nn.checkpoint import TrainingCheckpoint
from harmbench.nn.cyclegan_nets import PatchDiscriminator2d, ResnetGenerator2d, UnetGenerator2d, count_parameters
from harmbench.testing import check_harmonizer

#: The conformance checks fit several times: a few hundred weights per network, a handful of steps.
TINY = {"filters": 4, "n_blocks": 1, "disc_filters": 4, "disc_layers": 2, "batch_size": 2, "steps": 3, "pool_size": 2}


def test_conformance(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(CycleGANHarmonizer(**TINY), train, target, reference, tests[:2])


def test_conformance_pooled_unet(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(CycleGANPooledHarmonizer(**TINY, generator="unet", unet_levels=2), train, target, reference, tests)


def test_one_generator_pair_per_source_site(tiny_split):
    train, target, reference, _ = tiny_split
    sources = [s for s in train.sites if s != target]
    assert len(sources) >= 2
    for keep in (1, len(sources)):
        sub = train.filter(lambda s, keep=keep: s.site == target or s.site in sources[:keep])
        h = CycleGANHarmonizer(**TINY).fit(sub, target, reference, rng=np.random.default_rng(0))
        info = h.fit_info()
        assert info["n_generator_pairs"] == keep == len(h.generators_)
        # per pair: G and F, a discriminator on each side
        per_pair = 2 * count_parameters(h._make_generator()) + 2 * count_parameters(PatchDiscriminator2d(1, 4, 2))
        assert info["n_parameters"] == keep * per_pair
    pooled = CycleGANPooledHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(0))
    assert pooled.fit_info()["n_generator_pairs"] == 1


def test_unseen_site_is_refused_by_pairwise_and_harmonized_by_pooled(tiny_split, tiny_cohort):
    train, target, reference, _ = tiny_split
    unseen = next(s for s in tiny_cohort if s.site not in train.sites)
    pairwise = CycleGANHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="no generator pair"):
        pairwise.transform(unseen)
    out = CycleGANPooledHarmonizer(**TINY).fit(train, target, rng=np.random.default_rng(0)).transform(unseen)
    assert np.isfinite(out.data).all() and not np.array_equal(out.data, unseen.data)
    assert not CycleGANHarmonizer.meta.handles_unseen_sites and CycleGANPooledHarmonizer.meta.handles_unseen_sites
    assert CycleGANHarmonizer.meta.stochastic and CycleGANPooledHarmonizer.meta.stochastic


def test_target_site_scan_and_background_are_left_alone(tiny_split, tiny_cohort):
    train, target, reference, tests = tiny_split
    h = CycleGANHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(0))
    same = tiny_cohort.find(tests[0].subject, target)
    np.testing.assert_array_equal(h.transform(same).data, same.data)
    out = h.transform(tests[0])
    np.testing.assert_array_equal(out.data[~tests[0].brain], tests[0].data[~tests[0].brain])
    assert not np.array_equal(out.data[tests[0].brain], tests[0].data[tests[0].brain])


def test_seed_matters_and_is_reproducible(tiny_split):
    train, target, reference, tests = tiny_split

    def run(seed: int) -> np.ndarray:
        h = CycleGANHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(seed))
        return h.transform(tests[0]).data

    first = run(3)
    np.testing.assert_allclose(first, run(3), rtol=1e-6, atol=1e-6)
    assert not np.allclose(first, run(4))


def test_weights_cached_and_reloaded(tiny_split, tmp_path):
    train, target, reference, tests = tiny_split
    h = CycleGANHarmonizer(**TINY).fit(train, target, reference, rng=np.random.default_rng(0))
    h.save(tmp_path)
    loaded = CycleGANHarmonizer(**TINY).load(tmp_path)
    assert loaded.sources_ == h.sources_ and loaded.fit_info() == h.fit_info()
    for scan in tests:
        np.testing.assert_array_equal(loaded.transform(scan).data, h.transform(scan).data)
    with pytest.raises(PluginError, match="filters"):
        CycleGANHarmonizer(**{**TINY, "filters": 6}).load(tmp_path)


def test_killed_fit_resumes_from_its_checkpoint(tiny_split, tmp_path, monkeypatch):
    """A fit killed part-way (here in the second pair) resumes from the checkpoint and ends where an
    uninterrupted fit ends."""
    train, target, reference, tests = tiny_split
    params = {**TINY, "steps": 4, "checkpoint_every": 2}
    expected = CycleGANHarmonizer(**params).fit(train, target, reference, rng=np.random.default_rng(5))

    original = TrainingCheckpoint.maybe_save

    def killed_after_six(self, step, objects, generator=None):
        original(self, step, objects, generator)
        if step == 6:
            raise KeyboardInterrupt

    interrupted = CycleGANHarmonizer(**params)
    interrupted.checkpoint_dir = tmp_path
    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", killed_after_six)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, target, reference, rng=np.random.default_rng(5))
    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", original)
    assert (tmp_path / "training.pt").exists()

    resumed = CycleGANHarmonizer(**params)
    resumed.checkpoint_dir = tmp_path
    resumed.fit(train, target, reference, rng=np.random.default_rng(5))
    assert not (tmp_path / "training.pt").exists()
    for scan in tests:
        np.testing.assert_allclose(resumed.transform(scan).data, expected.transform(scan).data, rtol=1e-5, atol=1e-5)


def test_image_pool_state_round_trips():
    import torch

    gen = torch.Generator().manual_seed(0)
    pool = ImagePool(3, gen, torch.device("cpu"))
    batch = torch.arange(8, dtype=torch.float32).reshape(4, 1, 1, 2)
    out = pool.query(batch)
    torch.testing.assert_close(out[:3], batch[:3])  # filling: returned as given
    assert len(pool.images) == 3
    other = ImagePool(3, gen, torch.device("cpu"))
    other.load_state_dict(pool.state_dict())
    torch.testing.assert_close(torch.stack(other.images), torch.stack(pool.images))
    assert ImagePool(0, gen, torch.device("cpu")).query(batch) is batch


def test_paper_configurations_have_the_papers_size():
    for cls in (CycleGANPaperHarmonizer, CycleGANPooledPaperHarmonizer):
        h = cls()
        params = h.get_params()
        assert params["filters"] == 64 and params["n_blocks"] == 9 and params["slice_size"] == 256
        assert cls(steps=5).get_params()["steps"] == 5
    g = ResnetGenerator2d(1, 64, 2, 9)
    assert 11.3e6 < count_parameters(g) < 11.4e6  # Zhu et al.'s ResNet-9-blocks for one channel
    assert 2.7e6 < count_parameters(PatchDiscriminator2d(1, 64, 3)) < 2.8e6
    assert count_parameters(CycleGANHarmonizer()._make_generator()) < 0.5e6


def test_networks_keep_the_slice_shape():
    import torch

    x = torch.zeros(2, 1, 24, 32)
    assert ResnetGenerator2d(1, 4, 2, 1)(x).shape == x.shape
    assert UnetGenerator2d(1, 4, 3)(x).shape == x.shape
    assert PatchDiscriminator2d(1, 4, 3)(x).dim() == 4


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"generator": "vgg"}, "generator"),
        ({"filters": 0}, "filters"),
        ({"cycle_weight": -1.0}, "cycle_weight"),
        ({"identity_ratio": float("nan")}, "identity_ratio"),
        ({"decay_fraction": 1.5}, "decay_fraction"),
        ({"beta1": 1.0}, "beta1"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters_name_themselves(tiny_split, params, name):
    train, target, reference, _ = tiny_split
    with pytest.raises(ConfigError, match=name):
        CycleGANHarmonizer(**{**TINY, **params}).fit(train, target, reference)


def test_needs_a_source_site(tiny_split):
    train, target, reference, _ = tiny_split
    with pytest.raises(DataError, match="source"):
        CycleGANHarmonizer(**TINY).fit(train.filter(lambda s: s.site == target), target, reference)


def test_registered():
    names = [cls.meta.name for cls in cyclegan.harmbench_register_harmonizers()]
    assert names == ["cyclegan", "cyclegan-pooled", "cyclegan-paper", "cyclegan-pooled-paper"]
