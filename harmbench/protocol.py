"""The evaluation protocol (docs/design.md §4): sites → train/test split → scenarios.

- Sites split into *seen* (training) and *unseen*; the target site is seen.
- Test subjects are traveling subjects (scanned at the target site and at
  least one other site), disjoint from training subjects.
- Training is unpaired: every training subject contributes one scan, at one
  seen site, so no method can learn from same-subject pairs.
- One fixed target-site training scan is the one-shot reference.
- Rescans (``session == "rescan"``) never enter training or the test scenarios: a test subject's
  target-site rescan is the scan-rescan ceiling every metric is read against (`SplitData.rescan_of`).
- Scenario ``seen``: test scans from seen non-target sites; ``unseen``: test
  scans from unseen sites. Each is harmonized to the target site and compared
  with the same subject's target-site scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmbench.data.scan import RESCAN_SESSION, Cohort, Scan
from harmbench.errors import ConfigError, DataError

SCENARIOS: tuple[str, ...] = ("seen", "unseen")
#: Share of traveling subjects held out for testing when every subject travels.
DEFAULT_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class Split:
    """A resolved protocol split. ``assignment`` maps each training subject to its one site."""

    target_site: str
    seen_sites: tuple[str, ...]
    unseen_sites: tuple[str, ...]
    test_subjects: tuple[str, ...]
    assignment: tuple[tuple[str, str], ...]
    reference_subject: str

    def scenario_sites(self, scenario: str) -> tuple[str, ...]:
        if scenario == "seen":
            return tuple(s for s in self.seen_sites if s != self.target_site)
        if scenario == "unseen":
            return self.unseen_sites
        raise ConfigError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")

    def scenarios(self) -> list[str]:
        """The scenarios that have at least one source site."""
        return [s for s in SCENARIOS if self.scenario_sites(s)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_site": self.target_site,
            "seen_sites": list(self.seen_sites),
            "unseen_sites": list(self.unseen_sites),
            "test_subjects": list(self.test_subjects),
            "assignment": [list(pair) for pair in self.assignment],
            "reference_subject": self.reference_subject,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(
            target_site=d["target_site"],
            seen_sites=tuple(d["seen_sites"]),
            unseen_sites=tuple(d["unseen_sites"]),
            test_subjects=tuple(d["test_subjects"]),
            assignment=tuple((a, b) for a, b in d["assignment"]),
            reference_subject=d["reference_subject"],
        )


class SplitData:
    """A `Split` bound to the cohort's scans."""

    def __init__(self, split: Split, cohort: Cohort) -> None:
        self.split = split
        self.cohort = cohort
        assigned = dict(split.assignment)
        first_sessions = cohort.without_rescans()
        self.train = first_sessions.filter(lambda s: assigned.get(s.subject) == s.site, name=f"{cohort.name}:train")
        test_subjects = set(split.test_subjects)
        self.test = first_sessions.filter(lambda s: s.subject in test_subjects, name=f"{cohort.name}:test")
        self.rescans = cohort.filter(
            lambda s: s.session == RESCAN_SESSION and s.subject in test_subjects and s.site == split.target_site,
            name=f"{cohort.name}:rescan",
        )
        reference = self.train.find(split.reference_subject, split.target_site)
        if reference is None:
            raise DataError(f"reference scan {split.reference_subject}@{split.target_site} is not in the cohort")
        self.reference: Scan = reference

    @property
    def target_site(self) -> str:
        return self.split.target_site

    def scenario_scans(self, scenario: str) -> list[Scan]:
        sites = set(self.split.scenario_sites(scenario))
        return [s for s in self.test if s.site in sites]

    def paired_target(self, scan: Scan) -> Scan | None:
        """The same subject's target-site test scan (None where the subject was not scanned there)."""
        return self.test.find(scan.subject, self.split.target_site)

    def rescan_of(self, scan: Scan) -> Scan | None:
        """The same subject's target-site rescan (the scan-rescan ceiling), or None where the data has none."""
        return self.rescans.find_rescan(scan.subject, self.split.target_site)

    def target_pool(self) -> list[Scan]:
        return self.train.by_site(self.split.target_site)

    def target_only_train(self) -> Cohort:
        """Training data of a target-only method (``meta.needs_source_sites=False``): every target-site scan of
        every non-test subject.

        The unpaired assignment gives each training subject one seen site, so a method that looks at the
        target site alone would see only 1/(number of seen sites) of the training subjects. Such a method
        never sees a source-site scan, so no same-subject pair can reach it: it gets all of them.
        """
        test_subjects = set(self.split.test_subjects)
        target = self.split.target_site
        return self.cohort.filter(
            lambda s: s.site == target and s.subject not in test_subjects and s.session != RESCAN_SESSION,
            name=f"{self.cohort.name}:train[{target}]",
        )


def make_split(
    cohort: Cohort,
    target_site: str,
    unseen_sites: Sequence[str] = (),
    *,
    n_test_subjects: int | None = None,
    seed: int = 0,
) -> Split:
    """Split a cohort under the protocol; deterministic for a seed."""
    sites = cohort.sites
    if target_site not in sites:
        raise ConfigError(f"target site {target_site!r} is not in the dataset (sites: {', '.join(sites)})")
    for site in unseen_sites:
        if site not in sites:
            raise ConfigError(f"unseen site {site!r} is not in the dataset (sites: {', '.join(sites)})")
        if site == target_site:
            raise ConfigError(f"site {site!r} cannot be both the target and an unseen site")
    unseen = tuple(s for s in sites if s in set(unseen_sites))
    seen = tuple(s for s in sites if s not in set(unseen))

    sites_of: dict[str, set[str]] = {}
    for scan in cohort:
        sites_of.setdefault(scan.subject, set()).add(scan.site)
    subjects = cohort.subjects
    traveling = [s for s in subjects if target_site in sites_of[s] and len(sites_of[s]) >= 2]
    if not traveling:
        raise DataError(
            f"dataset {cohort.name!r} has no traveling subject scanned at the target site {target_site!r} and "
            "another site; the protocol needs them as test subjects"
        )
    everyone_travels = len(traveling) == len(subjects)
    if n_test_subjects is None:
        n_test_subjects = max(2, round(DEFAULT_TEST_FRACTION * len(traveling))) if everyone_travels else len(traveling)
    if not 1 <= n_test_subjects <= len(traveling):
        raise ConfigError(f"n_test_subjects={n_test_subjects} but there are {len(traveling)} traveling subjects")
    rng = np.random.default_rng(seed)
    test = sorted(rng.choice(traveling, size=n_test_subjects, replace=False).tolist(), key=subjects.index)

    train_subjects = [s for s in subjects if s not in set(test)]
    load = dict.fromkeys(seen, 0)
    assignment: list[tuple[str, str]] = []
    for subject in rng.permutation(np.array(train_subjects, dtype=object)).tolist() if train_subjects else []:
        options = [site for site in seen if site in sites_of[subject]]
        if not options:
            continue  # scanned at unseen sites only: never used for training
        # the least-loaded seen site keeps training sites balanced; ties go by seen-site order. The target is
        # not preferred: the assignment must not depend on which site is the target, so that a model that
        # does not depend on the target either (meta.target_agnostic) is fitted once for every target.
        site = min(options, key=lambda s: (load[s], seen.index(s)))
        load[site] += 1
        assignment.append((subject, site))
    assignment.sort(key=lambda pair: subjects.index(pair[0]))
    empty = [site for site in seen if load[site] == 0]
    if empty:
        raise DataError(
            f"seen site(s) {', '.join(empty)} have no training scan once the {len(test)} test subjects are held "
            "out; add scans, lower n_test_subjects, or declare those sites unseen"
        )
    reference_subject = next(subj for subj, site in assignment if site == target_site)
    return Split(
        target_site=target_site,
        seen_sites=seen,
        unseen_sites=unseen,
        test_subjects=tuple(test),
        assignment=tuple(assignment),
        reference_subject=reference_subject,
    )
