"""The registry: entry-point discovery, every hook, duplicate and unknown names, disabling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_distribution

from harmbench import DatasetSource, Evaluator, Harmonizer, Meta, MetricSpec, hookimpl
from harmbench.errors import PluginError
from harmbench.plugins import Registry, get_plugin_manager

BUILTIN_HARMONIZERS = {"identity", "histogram", "ssimh"}
BUILTIN_EVALUATORS = {"wasserstein", "paired", "volume"}


class _Stub(Harmonizer):
    meta = Meta(name="identity", version="9", citation="-")

    def fit(self, train, target_site, reference=None, *, rng=None):
        return self

    def transform(self, scan, reference=None):
        return scan

    def get_state(self):
        return {}

    def set_state(self, state):
        return self


class _DuplicatePlugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [_Stub]


class _Metric(Evaluator):
    name = "extra-metric"
    metrics = (MetricSpec("zero", higher_is_better=False, ideal=0.0),)

    def evaluate(self, cases):
        return []


class _Data(DatasetSource):
    name = "extra-data"

    def fingerprint(self):
        return "x"

    def load(self):
        raise NotImplementedError


class _ExtraPlugin:
    @hookimpl
    def harmbench_register_evaluators(self):
        return [_Metric]

    @hookimpl
    def harmbench_register_datasets(self):
        return [_Data]


def test_factory_returns_a_fresh_manager_each_time():
    assert get_plugin_manager() is not get_plugin_manager()


def test_builtins_come_through_the_entry_point_group():
    registry = Registry()
    assert BUILTIN_HARMONIZERS <= set(registry.names("harmonizers"))
    assert BUILTIN_EVALUATORS <= set(registry.names("evaluators"))
    assert "harmbench-sim" in registry.names("datasets")
    for entry in registry.entries("harmonizers"):
        if entry.name in BUILTIN_HARMONIZERS:
            assert entry.distribution.startswith("harmbench ")


def test_every_hook_collects_classes_from_an_extra_plugin():
    registry = Registry(get_plugin_manager(extra_plugins=[_ExtraPlugin()]))
    assert registry.evaluator("extra-metric") is _Metric
    assert registry.dataset("extra-data") is _Data


def test_duplicate_name_is_refused_naming_both_sources():
    with pytest.raises(PluginError) as err:
        Registry(get_plugin_manager(extra_plugins=[_DuplicatePlugin()]))
    message = str(err.value)
    assert "'identity'" in message and "harmbench 0.1.0" in message and "_DuplicatePlugin" in message


def test_unknown_name_suggests_close_matches():
    with pytest.raises(PluginError, match="did you mean histogram"):
        Registry().harmonizer("histogramm")


def test_disable_env_blocks_a_plugin_by_name(monkeypatch):
    monkeypatch.setenv("HARMBENCH_DISABLE_PLUGINS", "ssimh, volume")
    registry = Registry()
    assert "ssimh" not in registry.names("harmonizers")
    assert "volume" not in registry.names("evaluators")
    assert "identity" in registry.names("harmonizers")


def test_plugins_lists_distribution_and_version():
    plugins = dict(Registry().plugins())
    assert plugins["identity"].startswith("harmbench ")


# -- plugins that fail to load ---------------------------------------------------------------

GOOD_MODULE = """
    from harmbench import Meta, StatelessHarmonizer, hookimpl


    class Passthrough(StatelessHarmonizer):
        meta = Meta(name="good-passthrough", version="1.0", citation="none")

        def fit(self, train, target_site, reference=None, *, rng=None):
            self.fitted_ = True
            return self

        def transform(self, scan, reference=None):
            self.check_is_fitted()
            return scan.with_data(scan.data.copy())


    @hookimpl
    def harmbench_register_harmonizers():
        return [Passthrough]
"""

#: Imports a dependency that is not installed: the half-installed plugin of the issue.
MISSING_DEPENDENCY_MODULE = """
    import harmbench_dependency_that_is_not_installed  # noqa: F401
"""

RAISING_HOOK_MODULE = """
    from harmbench import hookimpl


    @hookimpl
    def harmbench_register_evaluators():
        raise RuntimeError("registry file missing")
"""


@pytest.fixture
def mixed_site(tmp_path: Path) -> Path:
    """One good outside plugin, one that cannot be imported, one whose registration hook raises."""
    site = tmp_path / "site"
    write_distribution(site, "harmbench-good", "1.2.0", {"hb_good": GOOD_MODULE}, {"good-demo": "hb_good"})
    write_distribution(
        site, "harmbench-broken", "0.0.7", {"hb_broken": MISSING_DEPENDENCY_MODULE}, {"broken-demo": "hb_broken"}
    )
    write_distribution(
        site, "harmbench-raising", "2.0", {"hb_raising": RAISING_HOOK_MODULE}, {"raising-demo": "hb_raising"}
    )
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harmbench.cli", *args], capture_output=True, text=True, env=env)


def _lines_about(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


def test_list_survives_a_broken_plugin_and_names_it_in_one_line(mixed_site):
    proc = _cli("list", env=_env(mixed_site))
    assert proc.returncode == 0, proc.stderr
    assert "good-passthrough" in proc.stdout and "harmbench-good 1.2.0" in proc.stdout
    assert "identity" in proc.stdout  # the built-ins still load
    assert "Traceback" not in proc.stderr
    [line] = _lines_about(proc.stderr, "broken-demo")
    for part in (
        "entry point broken-demo = hb_broken",
        "harmbench-broken 0.0.7",
        "ModuleNotFoundError: No module named 'harmbench_dependency_that_is_not_installed'",
        "HARMBENCH_DISABLE_PLUGINS=broken-demo",
    ):
        assert part in line, line
    [line] = _lines_about(proc.stderr, "raising-demo")
    assert "harmbench-raising 2.0" in line and "RuntimeError: registry file missing" in line, line


def test_plugins_lists_the_broken_ones_as_broken(mixed_site):
    proc = _cli("plugins", env=_env(mixed_site))
    assert proc.returncode == 0, proc.stderr
    [good] = _lines_about(proc.stdout, "good-demo")
    assert "harmbench-good 1.2.0" in good and "BROKEN" not in good
    [broken] = _lines_about(proc.stdout, "broken-demo")
    assert "BROKEN" in broken and "harmbench-broken 0.0.7" in broken and "ModuleNotFoundError" in broken


def test_a_run_naming_the_broken_plugin_fails_with_that_line(mixed_site, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(
        '[suite]\nname = "t"\nharmonizers = ["broken-demo"]\nevaluators = ["wasserstein"]\n'
        '[dataset]\nname = "harmbench-sim"\nn_subjects = 4\nvoxel_mm = 8\n'
    )
    proc = _cli("run", str(suite), "--out", str(tmp_path / "out"), env=_env(mixed_site))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("harmbench: error:")]
    assert "broken-demo" in error and "harmbench-broken 0.0.7" in error and "ModuleNotFoundError" in error


def test_disabling_the_broken_plugin_silences_it(mixed_site):
    proc = _cli("list", "harmonizers", env=_env(mixed_site, HARMBENCH_DISABLE_PLUGINS="broken-demo,raising-demo"))
    assert proc.returncode == 0
    assert "good-passthrough" in proc.stdout
    assert not _lines_about(proc.stderr, "broken-demo") and not _lines_about(proc.stderr, "raising-demo")


def test_registry_keeps_the_good_plugins_and_records_the_broken(mixed_site, monkeypatch):
    monkeypatch.syspath_prepend(str(mixed_site))
    registry = Registry()
    assert "good-passthrough" in registry.names("harmonizers")
    broken = {b.name: b for b in registry.broken}
    assert broken["broken-demo"].distribution == "harmbench-broken 0.0.7"
    assert broken["broken-demo"].target == "hb_broken"
    assert broken["raising-demo"].error == "harmbench_register_evaluators() raised RuntimeError: registry file missing"
    with pytest.raises(PluginError, match=r"broken-demo.*is broken: ModuleNotFoundError"):
        registry.harmonizer("broken-demo")
    with pytest.raises(PluginError, match=r"unknown harmonizer 'nope'.*broken-demo"):
        registry.harmonizer("nope")


class _HalfBroken:
    """Registers a harmonizer, then fails in its evaluator hook: none of its classes may be used."""

    @hookimpl
    def harmbench_register_harmonizers(self):
        return [_Stub]

    @hookimpl
    def harmbench_register_evaluators(self):
        raise ValueError("bad config")


def test_a_plugin_broken_in_one_hook_contributes_nothing():
    registry = Registry(get_plugin_manager(load_entrypoints=False, extra_plugins=[_HalfBroken()]))
    assert registry.names("harmonizers") == []
    [broken] = registry.broken
    assert "_HalfBroken" in broken.name and "ValueError: bad config" in broken.error
