"""Suite files: parsing, defaults, round trip, clear errors."""

from __future__ import annotations

import pytest

from harmbench.errors import ConfigError
from harmbench.suite import load_suite


def test_builtin_default_suite():
    suite = load_suite()
    assert suite.name == "default"
    assert [c.label for c in suite.harmonizers] == [
        "identity",
        "histogram",
        "ssimh",
        "combat",
        "combat-refit",
        "hail",
        "hail-no-consistency",
    ]
    ablation = suite.harmonizers[-1]
    assert ablation.plugin == "hail" and ablation.params == {"consistency_weight": 0.0}
    assert [c.label for c in suite.evaluators] == ["wasserstein", "paired", "volume", "segmentation", "site_removal"]
    assert suite.dataset == "harmbench-sim" and suite.dataset_params == {"profile": "quick"}


def test_round_trip_through_toml(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        """
[suite]
name = "x"
seed = 3
harmonizers = ["identity", "hist-site"]
evaluators = ["wasserstein"]
[dataset]
name = "harmbench-sim"
profile = "quick"
[protocol]
target_site = "a"
unseen_sites = ["b"]
[harmonizers.hist-site]
plugin = "histogram"
standard = "site"
"""
    )
    suite = load_suite(path)
    assert suite.harmonizers[1].plugin == "histogram" and suite.harmonizers[1].params == {"standard": "site"}
    again = tmp_path / "again.toml"
    again.write_text(suite.to_toml())
    assert load_suite(again) == suite


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[suite]\nseed = -1\n", "seed"),
        ("[nonsense]\n", "nonsense"),
        ("[protocol]\ntarget = 'a'\n", "target"),
        ("[suite]\nharmonizers = ['a']\n[harmonizers.b]\nx = 1\n", "harmonizers.b"),
        ("not toml = = \n", "invalid TOML"),
    ],
)
def test_bad_suite_names_the_problem(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as err:
        load_suite(path)
    assert str(path) in str(err.value)


def test_builtin_suites_load_by_name_and_name_registered_plugins():
    from harmbench.plugins import Registry
    from harmbench.suite import builtin_suites

    assert {"default", "throughput"} <= set(builtin_suites())
    registry = Registry()
    for name in builtin_suites():
        suite = load_suite(name)
        assert suite.name == name
        for c in suite.harmonizers:
            registry.harmonizer(c.plugin)
        for c in suite.evaluators:
            registry.evaluator(c.plugin)


def test_unknown_suite_lists_the_builtin_ones(tmp_path):
    with pytest.raises(ConfigError, match="built-in suites: default"):
        load_suite(tmp_path / "nope.toml")
