from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from harmbench_plugins.harmonizers import blindharmony
from harmbench_plugins.harmonizers.blindharmony import (
    BlindHarmonyHarmonizer,
    BlindHarmonyPaperHarmonizer,
    flat_region_mask,
    normalise,
    structural_distance,
)

from harmbench.errors import ConfigError, DataError, PluginError
from harmbench.nn.checkpoint import TrainingCheckpoint
from harmbench.nn.runtime import seeded
from harmbench.nn.slices import pad_to_multiple_2d, volume_slices
from harmbench.protocol import SplitData, make_split
from harmbench.testing import check_harmonizer

#: The conformance checks fit several times: a flow of a few hundred weights, a handful of steps.
TINY = {"levels": 2, "steps": 1, "hidden": 4, "bins": 4, "train_steps": 3, "batch_size": 4, "iterations": 2}
#: Enough training for the likelihood to tell sites apart on the 8 mm cohort (a few seconds).
MODEST = {"levels": 2, "steps": 1, "hidden": 8, "train_steps": 150, "batch_size": 8}


@pytest.fixture(scope="module")
def split(tiny_cohort) -> SplitData:
    sites = tiny_cohort.sites
    return SplitData(make_split(tiny_cohort, sites[0], sites[-2:], n_test_subjects=2, seed=0), tiny_cohort)


@pytest.fixture(scope="module")
def fitted(split) -> BlindHarmonyHarmonizer:
    return BlindHarmonyHarmonizer(**MODEST).fit(
        split.target_only_train(), split.target_site, rng=np.random.default_rng(0)
    )


def test_conformance(tiny_split):
    train, target, reference, tests = tiny_split
    check_harmonizer(BlindHarmonyHarmonizer(**TINY), train, target, reference, tests[:2])


def test_trains_on_target_site_scans_only(split):
    full = split.cohort.without_rescans().filter(lambda s: s.subject not in set(split.split.test_subjects))
    h = BlindHarmonyHarmonizer(**TINY).fit(full, split.target_site, rng=np.random.default_rng(0))
    info = h.fit_info()
    assert info["n_train_scans"] == len(split.target_only_train()) < len(full)
    assert info["n_parameters"] > 0 and np.isfinite(info["final_bits_per_dim"])
    with pytest.raises(DataError, match="no scan of the target site"):
        BlindHarmonyHarmonizer(**TINY).fit(split.target_only_train(), "nowhere")


def _target_slices(split: SplitData, multiple: int) -> torch.Tensor:
    scan = split.paired_target(split.scenario_scans("seen")[0])
    data, brain, _ = normalise(scan)
    keep = volume_slices(brain.astype(np.float32)).mean(dim=(1, 2, 3)) >= blindharmony.MIN_BRAIN_FRACTION
    x, _ = pad_to_multiple_2d(volume_slices(data)[keep], multiple)
    return x - 0.5


def test_flow_is_invertible_on_real_slices(fitted, split):
    x = _target_slices(split, 2**fitted.levels)
    with torch.no_grad():
        z, _ = fitted.flow_.encode(x)
        back = fitted.flow_.decode(z)
    assert z.shape == (x.shape[0], x[0].numel())
    assert float((back - x).abs().max()) < 1e-4


def test_held_out_target_slices_are_more_likely_than_source_slices(fitted, split):
    """Bits/dim (lower = more likely) of the test subjects' target-site scans, never trained on, against
    the same subjects' scans at every source site, seen and unseen."""
    target = [split.paired_target(s) for s in split.scenario_scans("seen")]
    target_bpd = np.mean([fitted.slice_bits_per_dim(s).mean() for s in {t.key: t for t in target}.values()])
    for scenario in ("seen", "unseen"):
        by_site: dict[str, list[float]] = {}
        for scan in split.scenario_scans(scenario):
            by_site.setdefault(scan.site, []).append(float(fitted.slice_bits_per_dim(scan).mean()))
        for site, values in by_site.items():
            assert np.mean(values) > target_bpd, (scenario, site, np.mean(values), target_bpd)


def test_output_is_in_the_target_scale_and_background_is_kept(fitted, split):
    scan = split.scenario_scans("unseen")[0]
    out = fitted.transform(scan)
    rescaled = fitted.transform(scan.with_data(scan.data * 5.0))
    target_p99 = np.median([np.percentile(s.brain_values(), 99) for s in split.target_only_train()])
    assert 0.7 < np.percentile(out.brain_values(), 99) / target_p99 < 1.3
    np.testing.assert_allclose(out.data, rescaled.data, rtol=1e-3, atol=1e-3 * target_p99)
    np.testing.assert_array_equal(out.data[~scan.brain], scan.data[~scan.brain])
    gain = target_p99 / np.percentile(scan.brain_values(), 99)
    assert not np.allclose(out.data[scan.brain], scan.data[scan.brain] * gain)


def test_no_iterations_is_the_rescaled_source_and_the_shrink_moves_it(fitted, split):
    scan = split.scenario_scans("seen")[0]
    data, brain, _ = normalise(scan)
    h = BlindHarmonyHarmonizer(**MODEST).set_state(fitted.get_state())
    np.testing.assert_allclose(h.set_params(iterations=0).transform(scan).data[brain], data[brain] * h.target_scale_)
    still = h.set_params(iterations=2, alpha=0.0, beta_grad=0.0).transform(scan).data[brain]
    moved = h.set_params(alpha=0.2).transform(scan).data[brain]
    # with no shrink and no edge term the source is a fixed point of the NCC step (up to the flow round trip)
    np.testing.assert_allclose(still, data[brain] * h.target_scale_, atol=1e-3 * h.target_scale_)
    assert np.abs(moved - still).mean() > 0.01 * h.target_scale_


def test_structural_distance_and_flat_mask():
    gen = torch.Generator().manual_seed(0)
    source = torch.rand((2, 1, 16, 16), generator=gen)
    mask = flat_region_mask(source)
    assert 0.0 < float(mask.mean()) <= 0.31
    d_same = structural_distance(source, source, mask, 1.0, 0.0)
    d_contrast = structural_distance(0.3 * source + 0.1, source, mask, 1.0, 0.0)
    d_other = structural_distance(torch.rand((2, 1, 16, 16), generator=gen), source, mask, 1.0, 0.0)
    torch.testing.assert_close(d_same, torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(d_contrast, torch.zeros(2), atol=1e-6, rtol=0)  # NCC ignores contrast
    assert bool((d_other > 0.5).all())


def test_state_round_trip_reproduces_the_transform(fitted, split, tmp_path):
    scan = split.scenario_scans("seen")[0]
    fitted.save(tmp_path)
    loaded = BlindHarmonyHarmonizer(**MODEST).load(tmp_path)
    np.testing.assert_allclose(loaded.transform(scan).data, fitted.transform(scan).data, rtol=1e-6, atol=1e-6)
    with pytest.raises(PluginError, match="levels/steps/hidden"):
        BlindHarmonyHarmonizer(**{**MODEST, "hidden": 6}).load(tmp_path)


def test_seed_matters_and_is_reproducible(split):
    scan = split.scenario_scans("seen")[0]

    def run(seed: int) -> np.ndarray:
        h = BlindHarmonyHarmonizer(**{**TINY, "train_steps": 10})
        h.fit(split.target_only_train(), split.target_site, rng=np.random.default_rng(seed))
        return h.transform(scan).data

    first = run(3)
    np.testing.assert_allclose(first, run(3), rtol=1e-6, atol=1e-6)
    assert not np.allclose(first, run(4))


def test_killed_fit_resumes_from_its_checkpoint(split, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(blindharmony, "CHECKPOINT_EVERY", 5)
    params = {**TINY, "train_steps": 12}
    train, target, scan = split.target_only_train(), split.target_site, split.scenario_scans("seen")[0]
    whole = BlindHarmonyHarmonizer(**params).fit(train, target, rng=np.random.default_rng(7)).transform(scan).data

    original = TrainingCheckpoint.maybe_save

    def save_then_die(self, step, objects, generator=None):
        original(self, step, objects, generator)
        if step == 10:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", save_then_die)
    first = BlindHarmonyHarmonizer(**params)
    first.checkpoint_dir = tmp_path
    with pytest.raises(KeyboardInterrupt):
        first.fit(train, target, rng=np.random.default_rng(7))
    assert (tmp_path / "training.pt").exists()
    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", original)
    second = BlindHarmonyHarmonizer(**params)
    second.checkpoint_dir = tmp_path
    with caplog.at_level(logging.INFO, logger="harmbench.nn.checkpoint"):
        second.fit(train, target, rng=np.random.default_rng(7))
    assert "at step 10" in caplog.text
    assert not (tmp_path / "training.pt").exists()
    np.testing.assert_allclose(second.transform(scan).data, whole, rtol=1e-5, atol=1e-5 * float(whole.max()))


def test_paper_configuration_has_the_papers_size():
    h = BlindHarmonyPaperHarmonizer(device="cpu")
    assert (h.levels, h.steps, h.bins, h.hidden, h.train_steps, h.batch_size) == (4, 7, 8, 96, 10_000, 256)
    with seeded(0):
        flow = h._build((144, 176), torch.device("cpu"))
    n = sum(p.numel() for p in flow.parameters())
    assert 13e6 < n < 16e6, n  # the authors report 14.5 M weights for 1×144×176 slices
    assert BlindHarmonyPaperHarmonizer.meta.name == "blindharmony-paper"


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"levels": 0}, "levels"),
        ({"levels": 7}, "levels"),
        ({"hidden": 1.5}, "hidden"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"beta_fidel": float("nan")}, "beta_fidel"),
        ({"step_size": "1"}, "step_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"iterations": -1}, "iterations"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters_name_themselves(split, params, name):
    with pytest.raises(ConfigError, match=name):
        BlindHarmonyHarmonizer(**{**TINY, **params}).fit(split.target_only_train(), split.target_site)


def test_registered():
    assert blindharmony.harmbench_register_harmonizers() == [BlindHarmonyHarmonizer, BlindHarmonyPaperHarmonizer]
    meta = BlindHarmonyHarmonizer.meta
    assert not meta.needs_source_sites and meta.handles_unseen_sites and meta.stochastic
    assert not meta.uses_reference and "cuda" in meta.devices
