"""The runner: leaderboards from a tiny suite, failure isolation, n/a cells, caching, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_suite

from harmbench import Harmonizer, Meta, hookimpl
from harmbench.plugins import Registry, get_plugin_manager
from harmbench.runner import Runner


class _Base(Harmonizer):
    def __init__(self):
        pass

    def fit(self, train, target_site, reference=None, *, rng=None):
        self.fitted_ = True
        return self

    def get_state(self):
        return {}

    def set_state(self, state):
        return self


class Raises(_Base):
    meta = Meta(name="broken-raises", version="0", citation="-")

    def transform(self, scan, reference=None):
        raise RuntimeError("boom in transform")


class ReturnsNaN(_Base):
    meta = Meta(name="broken-nan", version="0", citation="-")

    def transform(self, scan, reference=None):
        return scan.with_data(np.full(scan.shape, np.nan, np.float32))


class WrongShape(_Base):
    meta = Meta(name="broken-shape", version="0", citation="-")

    def transform(self, scan, reference=None):
        return scan.with_data(scan.data[:-1])


class FitFails(_Base):
    meta = Meta(name="broken-fit", version="0", citation="-")

    def fit(self, train, target_site, reference=None, *, rng=None):
        raise ValueError("cannot fit this")

    def transform(self, scan, reference=None):
        return scan


class SeenOnly(_Base):
    meta = Meta(name="seen-only", version="0", citation="-", handles_unseen_sites=False)

    def transform(self, scan, reference=None):
        self.check_is_fitted()
        return scan


class CountingFits(_Base):
    meta = Meta(name="counting", version="0", citation="-")
    fits = 0

    def fit(self, train, target_site, reference=None, *, rng=None):
        type(self).fits += 1
        self.offset_ = np.array(1.0)
        self.fitted_ = True
        return self

    def transform(self, scan, reference=None):
        self.check_is_fitted()
        return scan.with_data(scan.data + float(self.offset_) * scan.brain)

    def get_state(self):
        return {"offset": self.offset_}

    def set_state(self, state):
        self.offset_ = state["offset"]
        return self


class TestPlugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [Raises, ReturnsNaN, WrongShape, FitFails, SeenOnly, CountingFits]


@pytest.fixture
def registry():
    return Registry(get_plugin_manager(extra_plugins=[TestPlugin()]))


def _cells(results):
    return results.groupby(["scenario", "harmonizer", "evaluator"])["status"].agg(lambda s: sorted(set(s)))


def test_tiny_suite_gives_a_full_leaderboard(tmp_path):
    report = Runner(tiny_suite(), tmp_path, progress=False).run()
    results = pd.read_parquet(report.results_path)
    assert set(results["status"]) == {"ok"}
    assert set(results["scenario"]) == {"seen", "unseen"}
    assert {"nwd_ip", "nwd_tp", "w1_target", "psnr", "ssim", "ravd_gm", "ravd_wm", "ravd_csf"} <= set(results["metric"])
    # one row per metric per test scan, with provenance
    seen = results[(results.scenario == "seen") & (results.harmonizer == "identity") & (results.metric == "psnr")]
    assert len(seen) == len(seen[["subject", "site"]].drop_duplicates()) > 1
    for column in ("harmbench_version", "harmonizer_version", "params_hash", "seed", "device", "started"):
        assert results[column].notna().all()
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board.columns) == ["scenario", "harmonizer", "metric", "mean", "ci_low", "ci_high", "n", "status"]
    assert set(board["harmonizer"]) == {"identity", "histogram", "ssimh"}
    assert (tmp_path / "leaderboard.md").read_text().count("## Scenario:") == 2
    assert (tmp_path / "suite.toml").exists() and (tmp_path / "split.json").exists()


def test_broken_plugins_fail_only_their_own_cells(tmp_path, registry):
    suite = tiny_suite(
        harmonizers=("identity", "broken-raises", "broken-nan", "broken-shape", "broken-fit"),
        evaluators=("wasserstein",),
    )
    report = Runner(suite, tmp_path, registry=registry, progress=False).run()
    results = pd.read_parquet(report.results_path)
    status = results.groupby("harmonizer")["status"].agg(set)
    assert status["identity"] == {"ok"}
    for name in ("broken-raises", "broken-nan", "broken-shape", "broken-fit"):
        assert status[name] == {"failed"}
    errors = results.groupby("harmonizer")["error"].first()
    assert "boom in transform" in errors["broken-raises"]
    assert "NaN" in errors["broken-nan"]
    assert "shape" in errors["broken-shape"]
    assert "cannot fit this" in errors["broken-fit"]
    board = (tmp_path / "leaderboard.md").read_text()
    assert "failed[^" in board and "boom in transform" in board
    assert list((tmp_path / "errors").glob("*.txt"))  # tracebacks kept


def test_meta_capability_gives_not_applicable(tmp_path, registry):
    suite = tiny_suite(harmonizers=("seen-only",), evaluators=("wasserstein",))
    results = pd.read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    by_scenario = results.groupby("scenario")["status"].agg(set)
    assert by_scenario["seen"] == {"ok"} and by_scenario["unseen"] == {"not_applicable"}
    assert results.loc[results.status == "not_applicable", "value"].isna().all()
    assert "n/a" in (tmp_path / "leaderboard.md").read_text()


def test_models_are_cached_and_missing_cells_rerun_only(tmp_path, registry):
    CountingFits.fits = 0
    suite = tiny_suite(harmonizers=("counting",), evaluators=("wasserstein", "paired"))
    Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert CountingFits.fits == 1
    first = (tmp_path / "leaderboard.csv").read_bytes()
    # an unchanged re-run computes nothing
    report = Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert report.cells_computed == 0 and CountingFits.fits == 1
    # delete one cell, as a killed run would have left it: only that cell is recomputed, from the cached model
    victim = sorted((tmp_path / "cells").glob("unseen--counting--paired--*.parquet"))[0]
    victim.unlink()
    report = Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert report.cells_computed == 1 and CountingFits.fits == 1
    assert (tmp_path / "leaderboard.csv").read_bytes() == first


def test_save_images_writes_volumes(tmp_path):
    suite = tiny_suite(harmonizers=("identity",), evaluators=("wasserstein",))
    report = Runner(suite, tmp_path, progress=False, save_images=True).run()
    images = sorted((tmp_path / "images").rglob("*.nii.gz"))
    results = pd.read_parquet(report.results_path)
    assert len(images) == len(results[["scenario", "subject", "site"]].drop_duplicates())
    assert images[0].parent.parent.name in {"seen", "unseen"} and images[0].parent.name == "identity"


def test_retry_failed_recomputes_failed_cells(tmp_path, registry):
    suite = tiny_suite(harmonizers=("broken-raises",), evaluators=("wasserstein",))
    Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert Runner(suite, tmp_path, registry=registry, progress=False).run().cells_computed == 0
    assert Runner(suite, tmp_path, registry=registry, progress=False, retry_failed=True).run().cells_computed == 2
