"""Runs that cannot silently go wrong: validation before compute, versioned cache keys, atomic writes,
refits of unloadable models, malformed records, swallowed time-outs, read-only inputs, the dry-run plan."""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import ClassVar

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_suite

import harmbench
from harmbench import Harmonizer, Meta, hookimpl
from harmbench.api import Evaluator, MetricSpec
from harmbench.errors import ConfigError
from harmbench.plugins import Registry, get_plugin_manager
from harmbench.results import atomic_path, read_parquet
from harmbench.runner import Runner, time_limit
from harmbench.suite import load_suite


class Counting(Harmonizer):
    """Adds a learned constant; counts its fits (per class) so tests can see when the cache is used."""

    meta = Meta(name="counting-v1", version="1", citation="-")
    fits: ClassVar[int] = 0

    def __init__(self, offset: float = 1.0):
        self.offset = offset

    def fit(self, train, target_site, reference=None, *, rng=None):
        type(self).fits += 1
        self.offset_ = np.array(float(self.offset))
        self.fitted_ = True
        return self

    def transform(self, scan, reference=None):
        self.check_is_fitted()
        return scan.with_data(scan.data + float(self.offset_) * scan.brain)

    def get_state(self):
        return {"offset": self.offset_}

    def set_state(self, state):
        self.offset_ = np.asarray(state["offset"])
        return self


class CountingV2(Counting):
    meta = Meta(name="counting-v1", version="2", citation="-")  # same name, new version
    fits: ClassVar[int] = 0


class TargetAgnostic(Counting):
    """One model for every target: learns the mean brain intensity of all training scans, and is told the
    target at transform time through the reference scan."""

    meta = Meta(name="agnostic", version="0", citation="-", uses_reference=True, target_agnostic=True)
    fits: ClassVar[int] = 0
    targets: ClassVar[list] = []

    def fit(self, train, target_site, reference=None, *, rng=None):
        type(self).fits += 1
        self.offset_ = np.array(np.mean([s.brain_values().mean() for s in train]))
        self.fitted_ = True
        return self

    def transform(self, scan, reference=None):
        type(self).targets.append(reference.site)
        gain = float(reference.brain_values().mean()) / float(self.offset_)
        return scan.with_data(scan.data * np.float32(gain))


class BadState(Counting):
    meta = Meta(name="bad-state", version="0", citation="-")
    fits: ClassVar[int] = 0
    refuse: ClassVar[bool] = False

    def set_state(self, state):
        if type(self).refuse:
            raise IndexError("state from another version")
        return super().set_state(state)


class WritesInput(Counting):
    meta = Meta(name="writes-input", version="0", citation="-")

    def transform(self, scan, reference=None):
        scan.data[scan.brain] *= 2.0  # the bug under test: harmonizing in place
        return scan


class SwallowsException(Counting):
    meta = Meta(name="swallows-exception", version="0", citation="-")

    def transform(self, scan, reference=None):
        try:
            time.sleep(30)
        except Exception:  # the misbehaviour under test
            pass
        return scan


class SwallowsEverything(Counting):
    meta = Meta(name="swallows-everything", version="0", citation="-")

    def transform(self, scan, reference=None):
        try:
            time.sleep(30)
        except BaseException:  # the misbehaviour under test
            pass
        return scan


class _Records(Evaluator):
    version = "0"
    metrics = (MetricSpec("m", True),)
    record: ClassVar[dict] = {}

    def evaluate(self, cases):
        return [{"subject": c.input.subject, "site": c.input.site, "metric": "m", **self.record} for c in cases]


class MissingValue(_Records):
    name = "missing-value"
    record: ClassVar[dict] = {}


class TextValue(_Records):
    name = "text-value"
    record: ClassVar[dict] = {"value": "high"}


class WritesOutput(_Records):
    name = "writes-output"
    record: ClassVar[dict] = {"value": 1.0}

    def evaluate(self, cases):
        for c in cases:
            c.output.data[...] = 0.0
        return super().evaluate(cases)


class Plugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [Counting, TargetAgnostic, BadState, WritesInput, SwallowsException, SwallowsEverything]

    @hookimpl
    def harmbench_register_evaluators(self):
        return [MissingValue, TextValue, WritesOutput]


class PluginV2:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [CountingV2]


@pytest.fixture
def registry():
    return Registry(get_plugin_manager(extra_plugins=[Plugin()]))


def _results(report) -> pd.DataFrame:
    frame = read_parquet(report.results_path)
    return frame[frame["role"] == "method"]


# -- validation before compute -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ("[evaluators.site_removal]\nn_quantile = 5\n", r"\[evaluators.site_removal\] unknown parameter 'n_quantile'"),
        ("[evaluators.site_removal]\nC = -1.0\n", r"\[evaluators.site_removal\] .*'C' must be a finite number > 0"),
        ("[harmonizers.hist]\nplugin = 'ssimh'\naxis = 5\n", r"\[harmonizers.hist\] .*'axis' must be 0, 1 or 2"),
        ("[harmonizers.hist]\nplugin = 'histogram'\nbins = 5\n", r"\[harmonizers.hist\] unknown parameter 'bins'"),
        ("[dataset]\nvoxels = 8\n", r"\[dataset\] unknown parameter 'voxels'"),
    ],
)
def test_bad_plugin_parameters_fail_before_any_compute(tmp_path, table, needle):
    path = tmp_path / "suite.toml"
    head = "[suite]\nharmonizers = ['identity', 'hist']\nevaluators = ['wasserstein', 'site_removal']\n"
    if not table.startswith("[harmonizers.hist]"):
        head += "[harmonizers.hist]\nplugin = 'histogram'\n"
    path.write_text(head + table)
    with pytest.raises(ConfigError, match=needle) as err:
        Runner(load_suite(path), tmp_path / "out", progress=False)
    assert str(err.value).startswith(f"{path}: [") and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# -- cache keys ----------------------------------------------------------------------------------


def test_cells_and_models_are_keyed_on_suite_name_and_versions(tmp_path, registry, monkeypatch):
    Counting.fits = CountingV2.fits = 0
    suite = tiny_suite(harmonizers=("counting-v1",), evaluators=("wasserstein",), oracle=False)
    first = Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert Counting.fits == 1 and first.cells_computed == 2
    assert Runner(suite, tmp_path, registry=registry, progress=False).run().cells_computed == 0
    # another suite name: nothing reused
    renamed = Runner(suite.replace(name="other"), tmp_path, registry=registry, progress=False).run()
    assert renamed.cells_computed == 2 and Counting.fits == 2
    # the plugin's version changed: refitted, recomputed
    v2 = Registry(get_plugin_manager(extra_plugins=[PluginV2()]))
    assert Runner(suite, tmp_path, registry=v2, progress=False).run().cells_computed == 2
    assert CountingV2.fits == 1
    # harmbench itself upgraded: recomputed
    monkeypatch.setattr(harmbench, "__version__", "99.0")
    assert Runner(suite, tmp_path, registry=registry, progress=False).run().cells_computed == 2
    assert Counting.fits == 3


def test_target_agnostic_model_is_fitted_once_for_two_targets(tmp_path, registry):
    TargetAgnostic.fits = Counting.fits = 0
    TargetAgnostic.targets = []
    sites = ["siemens-3t-mprage", "ge-3t-spgr"]
    for target in sites:
        suite = tiny_suite(harmonizers=("agnostic", "counting-v1"), evaluators=("wasserstein",), target_site=target)
        report = Runner(suite, tmp_path, registry=registry, progress=False).run()
        results = _results(report)
        assert set(results["status"]) == {"ok"} and report.split.target_site == target
    assert TargetAgnostic.fits == 1  # one fit served both targets
    assert Counting.fits == 2  # a target-specific method is fitted per target
    assert set(TargetAgnostic.targets) == set(sites)


# -- atomic writes -------------------------------------------------------------------------------


def _write_repeatedly(folder, value: float, n: int) -> None:
    """One writer: save a model (1 MB of state) and an image into ``folder``, ``n`` times."""
    model = Counting(offset=value).fit(None, "t")
    model.offset_ = np.full(250_000, value, np.float32)
    for _ in range(n):
        model.save(folder / "model")
        with atomic_path(folder / "images" / "s_a.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.full((4, 4, 4), value, np.float32), np.eye(4)), tmp)


def test_two_writers_into_one_folder_never_collide(tmp_path):
    """Two processes save a model and an image into the same folder 100 times each: both finish, no
    temporary file is left, and what is there loads whole (a fixed temporary name fails this)."""
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_repeatedly, args=(tmp_path, v, 100)) for v in (1.0, 2.0)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["params.json", "state.npz"]
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["s_a.nii.gz"]
    loaded = Counting().load(tmp_path / "model").offset_
    assert loaded.shape == (250_000,) and len(set(loaded.tolist())) == 1 and float(loaded[0]) in {1.0, 2.0}
    assert float(nib.load(tmp_path / "images" / "s_a.nii.gz").get_fdata()[0, 0, 0]) in {1.0, 2.0}


# -- refit, malformed records, time-outs --------------------------------------------------------


def test_an_unloadable_cached_model_is_refitted_not_failed(tmp_path, registry, caplog):
    BadState.fits = 0
    BadState.refuse = False
    suite = tiny_suite(harmonizers=("bad-state",), evaluators=("wasserstein",), oracle=False)
    Runner(suite, tmp_path, registry=registry, progress=False).run()
    (state,) = (tmp_path / "cache" / "models").glob("bad-state-*/state.npz")
    for corrupt in ("truncated", "refused"):
        for cell in (tmp_path / "cells").iterdir():
            cell.unlink()
        if corrupt == "truncated":
            state.write_bytes(state.read_bytes()[:20])
        BadState.refuse = corrupt == "refused"
        with caplog.at_level(logging.WARNING, logger="harmbench.runner"):
            report = Runner(suite, tmp_path, registry=registry, progress=False).run()
        assert set(_results(report)["status"]) == {"ok"}
        assert "cannot be loaded" in caplog.text and "refitting" in caplog.text
        caplog.clear()
    assert BadState.fits == 3


def test_a_malformed_evaluator_record_fails_that_cell_only(tmp_path, registry):
    suite = tiny_suite(harmonizers=("identity",), evaluators=("wasserstein", "missing-value", "text-value"))
    report = Runner(suite, tmp_path, registry=registry, progress=False).run()
    results = read_parquet(report.results_path)
    status = results.groupby("evaluator")["status"].agg(set)
    assert status["wasserstein"] == {"ok"}
    assert status["missing-value"] == status["text-value"] == {"failed"}
    errors = results.groupby("evaluator")["error"].first()
    assert "has no value" in errors["missing-value"]
    assert "non-numeric value 'high'" in errors["text-value"]


def test_time_out_also_covers_a_plugin_that_swallows_it(tmp_path, registry):
    suite = tiny_suite(
        harmonizers=("identity", "swallows-exception", "swallows-everything"),
        evaluators=("wasserstein",),
        cell_timeout_s=0.3,
        oracle=False,
    )
    started = time.monotonic()
    results = _results(Runner(suite, tmp_path, registry=registry, progress=False).run())
    assert time.monotonic() - started < 60
    status = results.groupby("harmonizer")["status"].agg(set)
    assert status["identity"] == {"ok"}
    assert status["swallows-exception"] == status["swallows-everything"] == {"failed"}
    errors = results.groupby("harmonizer")["error"].first()
    assert "longer than 0.3 s" in errors["swallows-exception"]
    assert "caught the time-out" in errors["swallows-everything"]


def test_time_limit_post_check_without_the_alarm_reaching_the_plugin():
    from harmbench.runner import CellTimeout

    with pytest.raises(CellTimeout, match="caught the time-out"), time_limit(0.05, "a block"):
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            try:
                time.sleep(0.01)
            except BaseException:  # a plugin that swallows every alarm
                pass
    assert not isinstance(CellTimeout("x"), Exception)


# -- read-only inputs ----------------------------------------------------------------------------


def test_a_plugin_writing_into_its_input_fails_its_own_cells_and_corrupts_nothing(tmp_path, registry):
    alone = _results(
        Runner(tiny_suite(harmonizers=("identity",)), tmp_path / "alone", registry=registry, progress=False).run()
    )
    suite = tiny_suite(harmonizers=("writes-input", "identity"), evaluators=("writes-output", "wasserstein", "paired"))
    results = _results(Runner(suite, tmp_path / "both", registry=registry, progress=False).run())
    status = results.groupby(["harmonizer", "evaluator"])["status"].agg(set)
    assert all(status["writes-input", e] == {"failed"} for e in ("writes-output", "wasserstein", "paired"))
    assert status["identity", "writes-output"] == {"failed"}
    assert status["identity", "wasserstein"] == status["identity", "paired"] == {"ok"}
    error = results.loc[results["harmonizer"] == "writes-input", "error"].iloc[0]
    assert "wrote into a read-only input scan" in error
    # identity's scores are those of a run without the misbehaving plugins: they changed nothing it saw
    key = ["scenario", "evaluator", "metric", "subject", "site"]
    mine = results[(results["harmonizer"] == "identity") & (results["status"] == "ok")].set_index(key)["value"]
    ref = alone[alone["evaluator"].isin(["wasserstein", "paired"])].set_index(key)["value"]
    pd.testing.assert_series_equal(mine.sort_index(), ref.sort_index(), rtol=1e-9)


def test_runner_hands_plugins_read_only_scans(tmp_path):
    runner = Runner(tiny_suite(harmonizers=("identity",)), tmp_path, progress=False)
    scan = runner.cohort().scans[0]
    for array in (scan.data, scan.mask, scan.labels, scan.affine):
        assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        scan.data[0, 0, 0] = 1.0


# -- dry run -------------------------------------------------------------------------------------


def test_dry_run_plans_without_computing_or_writing(tmp_path, registry):
    Counting.fits = 0
    suite = tiny_suite(harmonizers=("counting-v1", "identity"), evaluators=("wasserstein",))
    out = tmp_path / "out"
    plan = Runner(suite, out, registry=registry, progress=False).dry_run()
    assert not out.exists() and Counting.fits == 0
    assert {what for _, what in plan.cells} == {"compute"} and len(plan.cells) == 6
    assert plan.models == {"counting-v1": "fit", "identity": "fit"}
    Runner(suite, out, registry=registry, progress=False).run()
    plan = Runner(suite, out, registry=registry, progress=False).dry_run()
    assert {what for _, what in plan.cells} == {"cached"}
    assert plan.models == {"counting-v1": "none", "identity": "none"}
    victim = next((out / "cells").glob("unseen--counting-v1--*.parquet"))
    victim.unlink()
    plan = Runner(suite, out, registry=registry, progress=False).dry_run()
    assert [c.cell_id for c, what in plan.cells if what == "compute"] == [victim.stem]
    assert plan.models == {"counting-v1": "reuse", "identity": "none"}
    text = plan.render()
    assert f"compute  {victim.stem}" in text and "6 cells: 5 cached, 1 to compute; 0 model(s) to fit" in text
    assert Counting.fits == 1
