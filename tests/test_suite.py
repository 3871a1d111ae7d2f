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
        "scale",
        "histogram",
        "ssimh",
        "combat",
        "combat-refit",
        "hail",
        "hail-no-consistency",
        "blindharmony",
        "murd",
        "murd-reference",
        "cyclegan",
        "cyclegan-pooled",
    ]
    by_label = {c.label: c for c in suite.harmonizers}
    assert by_label["hail-no-consistency"].plugin == "hail"
    assert by_label["hail-no-consistency"].params == {"consistency_weight": 0.0}
    assert by_label["murd-reference"].plugin == "murd"
    assert by_label["murd-reference"].params == {"target_mode": "reference"}
    assert [c.label for c in suite.evaluators] == ["wasserstein", "paired", "volume", "segmentation", "site_removal"]
    assert suite.dataset == "harmbench-sim" and suite.dataset_params == {"profile": "default"}
    assert suite.n_test_subjects == 30
    assert suite.baselines == ("identity", "scale") and suite.fit_seeds == (suite.seed,)


def test_fit_seeds_and_baselines_round_trip_and_are_checked(tmp_path):
    from harmbench.suite import parse_suite

    head = {"name": "s", "seed": 3, "harmonizers": ["identity", "hail"], "evaluators": ["paired"]}
    suite = parse_suite({"suite": {**head, "seeds": [3, 4, 5], "baselines": ["identity"]}}, "s.toml")
    assert suite.fit_seeds == (3, 4, 5) and suite.baselines == ("identity",)
    path = tmp_path / "s.toml"
    path.write_text(suite.to_toml())
    assert load_suite(path) == suite
    for bad, match in (({"seeds": [1, 1]}, "distinct"), ({"seeds": "0"}, "seeds"), ({"baselines": ["scale"]}, "scale")):
        with pytest.raises(ConfigError, match=match):
            parse_suite({"suite": {**head, **bad}}, "s.toml")


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


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[protocol]\nunseen_sites = 'ge'\n", r"\[protocol\] unseen_sites must be a list of site names, got a string"),
        ("[protocol]\ntarget_site = 3\n", r"\[protocol\] target_site must be a site name"),
        ("[protocol]\nn_test_subjects = 0\n", r"\[protocol\] n_test_subjects must be an integer >= 1"),
        ("[protocol]\nn_test_subjects = 2.5\n", r"\[protocol\] n_test_subjects must be an integer"),
        ("[suite]\nseed = '1'\n", r"\[suite\] seed must be a non-negative integer, got a string"),
        ("[suite]\nseed = true\n", r"\[suite\] seed must be a non-negative integer, got a boolean"),
        ("[suite]\nname = 3\n", r"\[suite\] name must be a non-empty string"),
        ("[suite]\nharmonizers = 'identity'\n", r"\[suite\] harmonizers must be a list of names"),
        ("[suite]\nevaluators = ['a', 2]\n", r"\[suite\] evaluators must be a list of names"),
        ("[suite]\ncell_timeout_s = -1\n", r"\[suite\] cell_timeout_s must be a number of seconds > 0"),
        ("[suite]\noracle = 'yes'\n", r"\[suite\] oracle must be true or false"),
        ("[suite]\ndevice = 0\n", r"\[suite\] device must be a device string"),
        ("[suite]\nharmonisers = ['a']\n", r"unknown \[suite\] key 'harmonisers'"),
        ("[dataset]\nname = 3\n", r"\[dataset\] name must be a dataset name"),
        ("suite = 3\n", r"\[suite\] must be a table"),
        ("[suite]\nharmonizers = ['a']\n[harmonizers]\na = 1\n", r"\[harmonizers\] a must be a table"),
        ("[suite]\nharmonizers = ['a']\n[harmonizers.a]\nplugin = 1\n", r"\[harmonizers.a\] plugin must be a name"),
        ("[suite]\nharmonizers = ['a', 'a']\n", r"lists 'a' twice"),
    ],
)
def test_every_suite_field_is_type_checked_in_one_line(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as err:
        load_suite(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_valid_fields_keep_their_types(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(
        "[suite]\nname = 'ok'\ncell_timeout_s = 5\n[protocol]\nunseen_sites = ['ge']\nn_test_subjects = 2\n"
        "[dataset]\nname = 'harmbench-sim'\nvoxel_mm = 8\n"
    )
    suite = load_suite(path)
    assert suite.unseen_sites == ("ge",) and suite.n_test_subjects == 2
    assert suite.cell_timeout_s == 5.0 and suite.dataset_params == {"voxel_mm": 8}
    assert suite.source == str(path)
