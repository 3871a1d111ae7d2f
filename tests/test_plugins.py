"""The registry: entry-point discovery, every hook, duplicate and unknown names, disabling."""

from __future__ import annotations

import pytest

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
