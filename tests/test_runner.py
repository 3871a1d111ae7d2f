"""The runner: leaderboards from a tiny suite, failure isolation, n/a cells, caching, resume."""

from __future__ import annotations

import json
import logging
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_suite

from harmbench import Harmonizer, Meta, hookimpl
from harmbench.api import Evaluator, MetricSpec
from harmbench.errors import ConfigError
from harmbench.leaderboard import SUMMARY_COLUMNS
from harmbench.plugins import Registry, get_plugin_manager
from harmbench.results import SCORES_FILE, read_parquet, read_scores
from harmbench.runner import Runner
from harmbench.suite import Component


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


class Hangs(_Base):
    meta = Meta(name="hangs", version="0", citation="-")

    def transform(self, scan, reference=None):
        import time

        time.sleep(60)
        return scan


class Transductive(_Base):
    """Records what ``adapt`` saw; refuses to transform a site it was not adapted to."""

    meta = Meta(name="transductive", version="0", citation="-", transductive=True)
    adapted: ClassVar[list] = []

    def adapt(self, scans):
        type(self).adapted.append(sorted(s.key for s in scans))
        self.sites_ = {*getattr(self, "sites_", set()), *(s.site for s in scans)}
        return self

    def transform(self, scan, reference=None):
        assert scan.site in self.sites_, f"transform of {scan.key} before adapt"
        return scan


class TargetOnlyRecorder(_Base):
    """Target-only; remembers the training scans it was given and reports them through ``fit_info``."""

    meta = Meta(name="target-only-recorder", version="0", citation="-", needs_source_sites=False)
    seen: ClassVar[list] = []

    def fit(self, train, target_site, reference=None, *, rng=None):
        type(self).seen = [s.key for s in train]
        self.n_ = np.array(len(train))
        self.fitted_ = True
        return self

    def fit_info(self):
        return {"n_parameters": 7, "kind": "recorder"}

    def transform(self, scan, reference=None):
        return scan.with_data(scan.data.copy())

    def get_state(self):
        return {"n": self.n_}

    def set_state(self, state):
        self.n_ = state["n"]
        return self


class SharedDirRecorder(_Base):
    """Records the ``shared_dir`` the runner gives each fit, per configuration."""

    meta = Meta(name="shared-dir-recorder", version="0", citation="-")
    seen: ClassVar[dict] = {}

    def __init__(self, stage2: int = 0):
        self.stage2 = stage2

    def fit(self, train, target_site, reference=None, *, rng=None):
        type(self).seen[self.stage2] = self.shared_dir
        return super().fit(train, target_site, reference, rng=rng)

    def transform(self, scan, reference=None):
        return scan


class TestPlugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [
            SharedDirRecorder,
            Raises,
            ReturnsNaN,
            WrongShape,
            FitFails,
            SeenOnly,
            CountingFits,
            Hangs,
            Transductive,
            TargetOnlyRecorder,
        ]


@pytest.fixture
def registry():
    return Registry(get_plugin_manager(extra_plugins=[TestPlugin()]))


def _cells(results):
    return results.groupby(["scenario", "harmonizer", "evaluator"])["status"].agg(lambda s: sorted(set(s)))


def test_tiny_suite_gives_a_full_leaderboard(tmp_path):
    report = Runner(tiny_suite(), tmp_path, progress=False).run()
    results = read_parquet(report.results_path)
    assert set(results["status"]) == {"ok"}
    assert set(results["scenario"]) == {"seen", "unseen"}
    assert {"nwd_ip", "nwd_tp", "w1_target", "psnr", "ssim", "ravd_gm", "ravd_wm", "ravd_csf"} <= set(results["metric"])
    # one row per metric per test scan, with provenance
    seen = results[(results.scenario == "seen") & (results.harmonizer == "identity") & (results.metric == "psnr")]
    assert len(seen) == len(seen[["subject", "site"]].drop_duplicates()) > 1
    for column in ("harmbench_version", "harmonizer_version", "params_hash", "seed", "device", "started"):
        assert results[column].notna().all()
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board.columns) == SUMMARY_COLUMNS
    assert set(board["harmonizer"]) == {"identity", "histogram", "ssimh", "rescan-ceiling"}
    # the leaderboards are rendered from the scores file, which reads back to the same boards
    assert read_scores(tmp_path / SCORES_FILE)["value"].notna().any()
    assert (tmp_path / "leaderboard.md").read_text().count("## Scenario:") == 2
    assert (tmp_path / "suite.toml").exists() and (tmp_path / "split.json").exists()


def test_broken_plugins_fail_only_their_own_cells(tmp_path, registry):
    suite = tiny_suite(
        harmonizers=("identity", "broken-raises", "broken-nan", "broken-shape", "broken-fit"),
        evaluators=("wasserstein",),
    )
    report = Runner(suite, tmp_path, registry=registry, progress=False).run()
    results = read_parquet(report.results_path)
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
    results = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    results = results[results["role"] == "method"]
    by_scenario = results.groupby("scenario")["status"].agg(set)
    assert by_scenario["seen"] == {"ok"} and by_scenario["unseen"] == {"not_applicable"}
    assert results.loc[results.status == "not_applicable", "value"].isna().all()
    assert "n/a" in (tmp_path / "leaderboard.md").read_text()
    assert Runner(suite, tmp_path, registry=registry, progress=False).run().cells_computed == 0


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
    results = read_parquet(report.results_path)
    assert len(images) == len(results[["scenario", "subject", "site"]].drop_duplicates())
    assert images[0].parent.parent.name in {"seen", "unseen"} and images[0].parent.name == "identity"


def test_retry_failed_recomputes_failed_cells(tmp_path, registry):
    suite = tiny_suite(harmonizers=("broken-raises",), evaluators=("wasserstein",))
    Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert Runner(suite, tmp_path, registry=registry, progress=False).run().cells_computed == 0
    assert Runner(suite, tmp_path, registry=registry, progress=False, retry_failed=True).run().cells_computed == 2


def test_hanging_plugin_times_out_and_fails_its_cells(tmp_path, registry):
    suite = tiny_suite(harmonizers=("identity", "hangs"), evaluators=("wasserstein",), cell_timeout_s=1.0)
    results = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    status = results.groupby("harmonizer")["status"].agg(set)
    assert status["identity"] == {"ok"} and status["hangs"] == {"failed"}
    assert results.loc[results.harmonizer == "hangs", "error"].str.contains("longer than 1 s").all()


def test_transductive_harmonizer_is_adapted_per_site_with_all_its_test_scans(tmp_path, registry):
    Transductive.adapted = []
    suite = tiny_suite(harmonizers=("transductive",), evaluators=("wasserstein",))
    report = Runner(suite, tmp_path, registry=registry, progress=False).run()
    results = read_parquet(report.results_path)
    results = results[results["role"] == "method"]
    assert set(results["status"]) == {"ok"} and results["transductive"].all()
    n_test = len(report.split.test_subjects)
    sources = [s for s in report.split.seen_sites if s != report.split.target_site] + list(report.split.unseen_sites)
    assert len(Transductive.adapted) == len(sources)
    assert all(len(keys) == n_test for keys in Transductive.adapted)
    assert "†" in (tmp_path / "leaderboard.md").read_text()


def test_histogram_and_ssimh_beat_identity_on_seen_sites(tmp_path):
    """Both intensity methods move the target-site intensity distribution closer than doing nothing.

    Only the intensity axis is asserted: PSNR/SSIM are computed after per-image normalisation (paired
    evaluator), under which a global intensity map need not beat identity on the tiny cohort, and that is a
    finding about the methods, not something to assert away.
    """
    results = read_parquet(Runner(tiny_suite(), tmp_path, progress=False).run().results_path)
    seen = results[results.scenario == "seen"].groupby(["metric", "harmonizer"])["value"].mean()
    for method in ("histogram", "ssimh"):
        assert seen["nwd_tp", method] < 0.5 * seen["nwd_tp", "identity"]
        assert seen["w1_target", method] < seen["w1_target", "identity"]


# -- oracle row, timing and devices ---------------------------------------------------------------


class TimingProbe(Evaluator):
    """Echoes the runner's timing for each case, so the test sees exactly what evaluators get."""

    name = "timing-probe"
    version = "0"
    metrics = (
        MetricSpec("probe_fit_s", False, device_dependent=True),
        MetricSpec("probe_transform_s", False, device_dependent=True),
        MetricSpec("probe_peak_mem_mb", False, device_dependent=True),
    )

    def evaluate(self, cases):
        return [
            {"subject": c.input.subject, "site": c.input.site, "metric": f"probe_{k}", "value": c.timing[k]}
            for c in cases
            for k in ("fit_s", "transform_s", "peak_mem_mb")
        ]


class ProbePlugin:
    @hookimpl
    def harmbench_register_evaluators(self):
        return [TimingProbe]


def test_reference_row_is_the_rescan_ceiling_and_is_not_ranked(tmp_path):
    report = Runner(tiny_suite(harmonizers=("identity",)), tmp_path, progress=False).run()
    results = read_parquet(report.results_path)
    ceiling = results[results["harmonizer"] == "rescan-ceiling"]
    assert set(ceiling["role"]) == {"ceiling"} and set(ceiling["status"]) == {"ok"}
    assert set(results.loc[results["harmonizer"] == "identity", "role"]) == {"method"}
    # the output is a second scan at the target site: close to the target, but not the target itself
    nwd = ceiling.loc[ceiling["metric"] == "nwd_tp", "value"]
    assert (nwd > 0).all() and (nwd < 0.5).all()
    identity_psnr = results.loc[(results["harmonizer"] == "identity") & (results["metric"] == "psnr"), "value"]
    assert (ceiling.loc[ceiling["metric"] == "psnr", "value"] < 100).all()
    assert ceiling.loc[ceiling["metric"] == "psnr", "value"].mean() > identity_psnr.mean()
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    rows = [r for r in board["summary"] if r["harmonizer"] == "rescan-ceiling"]
    assert rows and all(r["rank"] is None and r["track"] == "reference" for r in rows)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| rescan-ceiling ‡ |" in md and "‡ rescan ceiling, not ranked" in md


def test_without_rescans_the_reference_row_falls_back_to_the_oracle_and_says_so(tmp_path):
    suite = tiny_suite(harmonizers=("identity",), evaluators=("wasserstein",))
    suite = suite.replace(dataset_params={**suite.dataset_params, "rescans": "none"})
    results = read_parquet(Runner(suite, tmp_path, progress=False).run().results_path)
    oracle = results[results["harmonizer"] == "oracle"]
    assert set(oracle["role"]) == {"oracle"} and np.allclose(oracle.loc[oracle["metric"] == "nwd_tp", "value"], 0.0)
    assert "‡ oracle, not ranked (this data has no rescans" in (tmp_path / "leaderboard.md").read_text()


def test_reference_row_can_be_switched_off_and_its_labels_are_reserved(tmp_path, registry):
    report = Runner(tiny_suite(harmonizers=("identity",), oracle=False), tmp_path, progress=False).run()
    assert set(read_parquet(report.results_path)["harmonizer"]) == {"identity"}
    for label in ("oracle", "rescan-ceiling"):
        clash = tiny_suite(harmonizers=("identity",)).replace(harmonizers=(Component(label=label, plugin="identity"),))
        with pytest.raises(ConfigError, match="reserved"):
            Runner(clash, tmp_path / "clash", progress=False)


class SeedRecorder(_Base):
    """A stochastic method whose output is its fit seed's draw: shows which seed each row came from."""

    meta = Meta(name="seed-recorder", version="0", citation="-", stochastic=True)
    fits: ClassVar[list[int]] = []

    def fit(self, train, target_site, reference=None, *, rng=None):
        self.offset_ = float(rng.uniform(0.5, 1.5))
        self.fitted_ = True
        SeedRecorder.fits.append(self.offset_)
        return self

    def transform(self, scan, reference=None):
        return scan.with_data(scan.data * np.float32(self.offset_))

    def get_state(self):
        return {"offset": np.array(self.offset_)}

    def set_state(self, state):
        self.offset_ = float(state["offset"])
        self.fitted_ = True
        return self


class SeedPlugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [SeedRecorder]


def test_stochastic_methods_are_fitted_once_per_seed_and_deterministic_ones_once(tmp_path):
    registry = Registry(get_plugin_manager(extra_plugins=[SeedPlugin()]))
    suite = tiny_suite(harmonizers=("identity", "seed-recorder"), evaluators=("wasserstein",), seeds=(0, 1, 2))
    SeedRecorder.fits.clear()
    results = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    assert SeedRecorder.fits == [float(np.random.default_rng(s).uniform(0.5, 1.5)) for s in (0, 1, 2)]
    assert set(results.loc[results["harmonizer"] == "seed-recorder", "seed"]) == {0, 1, 2}
    assert set(results.loc[results["harmonizer"] == "identity", "seed"]) == {0}
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    rows = board[(board["harmonizer"] == "seed-recorder") & (board["metric"] == "nwd_tp")]
    assert set(rows["n_seeds"]) == {3} and (rows["seed_sd"] > 0).all()
    assert set(board.loc[board["harmonizer"] == "identity", "n_seeds"]) == {1}
    # every seed's model is cached: a rerun fits nothing
    for cell in (tmp_path / "cells").glob("*seed-recorder*"):
        cell.unlink()
    Runner(suite, tmp_path, registry=registry, progress=False).run()
    assert len(SeedRecorder.fits) == 3


def test_evaluators_get_fit_and_transform_timing_with_peak_memory(tmp_path):
    registry = Registry(get_plugin_manager(extra_plugins=[ProbePlugin()]))
    suite = tiny_suite(harmonizers=("identity",), evaluators=("timing-probe",))
    results = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    method = results[results["role"] == "method"]
    assert set(method["status"]) == {"ok"} and method["device_dependent"].all()
    values = method.groupby("metric")["value"]
    assert (values.min() >= 0).all()
    # one fit, so one fit time on every case; the oracle row has nothing to time, so no cells
    assert method.loc[method["metric"] == "probe_fit_s", "value"].nunique() == 1
    assert "oracle" not in set(results["harmonizer"])
    board = (tmp_path / "leaderboard.md").read_text()
    assert "probe_transform_s@cpu ↓" in board


def test_cached_fit_keeps_its_recorded_timing(tmp_path):
    registry = Registry(get_plugin_manager(extra_plugins=[ProbePlugin()]))
    suite = tiny_suite(harmonizers=("histogram",), evaluators=("timing-probe",))
    first = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    for cell in (tmp_path / "cells").iterdir():
        cell.unlink()  # evaluate again from the cached model
    second = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    pick = lambda r: sorted(r.loc[r["metric"].isin(["probe_fit_s", "probe_peak_mem_mb"]), "value"])  # noqa: E731
    assert pick(first) == pick(second)


def test_cuda_request_without_a_gpu_runs_on_the_cpu_and_records_it(tmp_path, caplog, monkeypatch):
    import harmbench.timing

    monkeypatch.setattr(harmbench.timing, "cuda_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="harmbench.timing"):
        runner = Runner(tiny_suite(harmonizers=("identity",), device="cuda"), tmp_path, progress=False)
    assert runner.device == "cpu" and "no CUDA device" in caplog.text
    results = read_parquet(runner.run().results_path)
    assert set(results["device"]) == {"cpu"}


def test_target_only_methods_get_every_target_site_training_scan_and_provenance_is_kept(tmp_path, registry):
    suite = tiny_suite(harmonizers=("target-only-recorder", "counting"), evaluators=("wasserstein",))
    runner = Runner(suite, tmp_path, registry=registry, progress=False)
    report = runner.run()
    split = report.split
    test_subjects = set(split.test_subjects)
    expected = sorted(
        f"{subject}_{split.target_site}" for subject in runner.cohort().subjects if subject not in test_subjects
    )
    assert sorted(TargetOnlyRecorder.seen) == expected
    # more than the unpaired assignment would have given it: one seen site per training subject
    assert len(expected) > sum(site == split.target_site for _, site in split.assignment)
    results = read_parquet(report.results_path)
    recorder = results[results["harmonizer"] == "target-only-recorder"]
    assert set(recorder["n_train"]) == {float(len(expected))} == set(recorder["n_train_target"])
    assert set(recorder["fit_info"]) == {json.dumps({"kind": "recorder", "n_parameters": 7})}
    counting = results[results["harmonizer"] == "counting"]
    assert set(counting["n_train"]) == {float(len(split.assignment))}
    assert set(results.loc[results["metric"] == "nwd_tp", "axis"]) <= {"", "intensity"}
    # the provenance survives a re-run that loads the model from the cache
    (tmp_path / "results.parquet").unlink()
    for cell in (tmp_path / "cells").glob("*target-only-recorder*"):
        cell.unlink()
    again = read_parquet(Runner(suite, tmp_path, registry=registry, progress=False).run().results_path)
    assert set(again.loc[again["harmonizer"] == "target-only-recorder", "n_train"]) == {float(len(expected))}


def test_configurations_of_one_plugin_share_one_folder_that_others_do_not(tmp_path, registry):
    # Harmonizer.shared_dir: for a stage that several configurations compute identically (hail's stage 1)
    suite = tiny_suite(evaluators=("wasserstein",)).replace(
        harmonizers=(
            Component("one", "shared-dir-recorder", {"stage2": 1}),
            Component("two", "shared-dir-recorder", {"stage2": 2}),
            Component("counting", "counting"),
        )
    )
    Runner(suite, tmp_path, registry=registry, progress=False).run()
    one, two = SharedDirRecorder.seen[1], SharedDirRecorder.seen[2]
    assert one == two and one.parent == tmp_path / "cache" / "shared" and one.name.startswith("shared-dir-recorder-")
    other = Runner(suite.replace(target_site="ge-3t-spgr"), tmp_path / "other", registry=registry, progress=False)
    other.run()
    assert SharedDirRecorder.seen[1].name != one.name  # another protocol context, another folder
