"""The protocol: unpaired training, traveling test subjects, scenarios, fixed reference."""

from __future__ import annotations

import pytest

from harmbench.errors import ConfigError, DataError
from harmbench.protocol import SplitData, make_split


def test_split_follows_the_protocol(tiny_cohort):
    sites = tiny_cohort.sites
    target, unseen = sites[0], sites[-2:]
    split = make_split(tiny_cohort, target, unseen, n_test_subjects=2, seed=0)
    data = SplitData(split, tiny_cohort)
    # unpaired training: one scan per training subject, never at an unseen site, never a test subject
    train_subjects = [s.subject for s in data.train]
    assert len(train_subjects) == len(set(train_subjects)) == len(tiny_cohort.subjects) - 2
    assert not set(train_subjects) & set(split.test_subjects)
    assert not {s.site for s in data.train} & set(unseen)
    # test subjects are seen at every site; scenarios cover the right sites
    assert {s.site for s in data.scenario_scans("seen")} == set(sites[1:-2])
    assert {s.site for s in data.scenario_scans("unseen")} == set(unseen)
    for scan in data.scenario_scans("unseen"):
        target_scan = data.paired_target(scan)
        assert target_scan.subject == scan.subject and target_scan.site == target
    assert data.reference.site == target and data.reference in data.train.scans
    assert split.scenarios() == ["seen", "unseen"]


def test_split_is_deterministic_for_a_seed(tiny_cohort):
    sites = tiny_cohort.sites
    a = make_split(tiny_cohort, sites[0], sites[-2:], n_test_subjects=2, seed=1)
    b = make_split(tiny_cohort, sites[0], sites[-2:], n_test_subjects=2, seed=1)
    assert a == b
    assert a.to_dict() == type(a).from_dict(a.to_dict()).to_dict()


def test_unknown_sites_are_named(tiny_cohort):
    with pytest.raises(ConfigError, match="nowhere"):
        make_split(tiny_cohort, "nowhere")
    with pytest.raises(ConfigError, match="both the target and an unseen"):
        make_split(tiny_cohort, tiny_cohort.sites[0], [tiny_cohort.sites[0]])


def test_seen_site_without_training_scan_is_refused(tiny_cohort):
    with pytest.raises(DataError, match="no training scan"):
        make_split(tiny_cohort, tiny_cohort.sites[0], n_test_subjects=5, seed=0)


def test_own_dataset_with_traveling_subjects(tiny_cohort):
    """Non-traveling training subjects + a few traveling subjects: the travelers become the test set."""
    from harmbench.data.scan import Cohort

    sites = tiny_cohort.sites[:3]
    travelers = tiny_cohort.subjects[:2]
    scans = [s for s in tiny_cohort if s.site in sites and (s.subject in travelers)]
    # everybody else is scanned at one site only
    for i, subject in enumerate(tiny_cohort.subjects[2:]):
        scans.append(tiny_cohort.find(subject, sites[i % 3]))
    cohort = Cohort(scans, name="mine")
    split = make_split(cohort, sites[0])
    assert set(split.test_subjects) == set(travelers)


def test_assignment_does_not_depend_on_the_target_site(tiny_cohort):
    sites = tiny_cohort.sites
    a = make_split(tiny_cohort, sites[0], sites[-2:], n_test_subjects=2, seed=3)
    b = make_split(tiny_cohort, sites[1], sites[-2:], n_test_subjects=2, seed=3)
    assert a.assignment == b.assignment and a.test_subjects == b.test_subjects
    assert a.reference_subject != b.reference_subject or a.target_site == b.target_site


def test_rescans_never_train_or_test_and_are_found_for_the_ceiling(tiny_cohort):
    import dataclasses

    from harmbench.data.scan import RESCAN_SESSION, Cohort

    target = tiny_cohort.sites[0]
    first_sessions = tiny_cohort.without_rescans()
    rescans = [
        dataclasses.replace(s, session=RESCAN_SESSION, data=s.data + 1.0) for s in first_sessions.by_site(target)
    ]
    cohort = Cohort([*first_sessions.scans, *rescans], name="with-rescans")
    split = make_split(cohort, target, tiny_cohort.sites[-2:], n_test_subjects=2, seed=0)
    assert split == make_split(first_sessions, target, tiny_cohort.sites[-2:], n_test_subjects=2, seed=0)
    data = SplitData(split, cohort)
    every = [*data.train, *data.test, *data.target_only_train(), data.reference]
    assert all(s.session != RESCAN_SESSION for s in every)
    for scan in data.scenario_scans("seen"):
        rescan = data.rescan_of(scan)
        assert rescan is not None and rescan.session == RESCAN_SESSION
        assert (rescan.subject, rescan.site) == (scan.subject, target)
        assert data.paired_target(scan).session != RESCAN_SESSION
    assert SplitData(split, first_sessions).rescan_of(data.scenario_scans("seen")[0]) is None
