"""Suite files: parsing, defaults, round trip, clear errors."""

from __future__ import annotations

import pytest

from harmbench.errors import ConfigError
from harmbench.suite import load_suite


def test_builtin_default_suite():
    suite = load_suite()
    assert suite.name == "default"
    assert [c.label for c in suite.harmonizers] == ["identity", "histogram", "ssimh", "combat", "combat-refit"]
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
