"""The conformance kit must pass a correct plugin and catch each kind of broken one."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from harmbench.api import EvalCase, Evaluator, Harmonizer, Meta, MetricSpec, PerScanEvaluator
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import DataError
from harmbench.testing import (
    check_deterministic,
    check_evaluator,
    check_harmonizer,
    check_save_load,
    check_transform_output,
)


class MeanScale(Harmonizer):
    """A correct toy method: scales brain intensities so their mean matches the target site's."""

    meta = Meta(name="toy-meanscale", version="0", citation="none", needs_source_sites=False)

    def __init__(self, jitter: float = 0.0) -> None:
        self.jitter = jitter

    def fit(self, train: Cohort, target_site: str, reference: Scan | None = None, *, rng=None) -> Harmonizer:
        rng = rng if rng is not None else np.random.default_rng()
        values = np.concatenate([s.brain_values() for s in train.by_site(target_site)])
        self.target_mean_ = float(values.mean()) * (1.0 + self.jitter * rng.standard_normal())
        self.fitted_ = True
        return self

    def _factor(self, scan: Scan) -> float:
        return self.target_mean_ / float(scan.brain_values().mean())

    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        self.check_is_fitted()
        return scan.with_data(scan.data * np.float32(self._factor(scan)))

    def get_state(self) -> dict[str, np.ndarray]:
        return {"target_mean": np.array(self.target_mean_)}

    def set_state(self, state: Mapping[str, np.ndarray]) -> Harmonizer:
        self.target_mean_ = float(state["target_mean"])
        return self


class WrongShape(MeanScale):
    def transform(self, scan, reference=None):
        return super().transform(scan).with_data(scan.data[:-1])


class MakesNaN(MeanScale):
    def transform(self, scan, reference=None):
        out = super().transform(scan).data.copy()
        out[0, 0, 0] = np.nan
        return scan.with_data(out)


class Float64Output(MeanScale):
    def transform(self, scan, reference=None):
        import dataclasses

        return dataclasses.replace(super().transform(scan), data=scan.data.astype(np.float64))


class ChangesMask(MeanScale):
    def transform(self, scan, reference=None):
        import dataclasses

        return dataclasses.replace(super().transform(scan), mask=np.ones(scan.shape, dtype=bool))


class MutatesInput(MeanScale):
    def transform(self, scan, reference=None):
        self.check_is_fitted()
        scan.data[...] *= np.float32(self._factor(scan))  # the bug under test
        return scan.with_data(scan.data.copy())


class GlobalRandom(MeanScale):
    """Draws from numpy's global state instead of the rng it is given."""

    def fit(self, train, target_site, reference=None, *, rng=None):
        super().fit(train, target_site, reference, rng=rng)
        self.target_mean_ *= 1.0 + 0.1 * np.random.random()  # the bug under test
        return self


class UnseededRandom(MeanScale):
    def fit(self, train, target_site, reference=None, *, rng=None):
        super().fit(train, target_site, reference, rng=rng)
        self.target_mean_ *= 1.0 + 0.1 * np.random.default_rng().random()  # the bug under test: a fresh seed
        return self


class StateNotSaved(MeanScale):
    def get_state(self):
        return {}

    def set_state(self, state):
        self.target_mean_ = 1.0
        return self


class TransformsUnfitted(MeanScale):
    def transform(self, scan, reference=None):
        return scan.with_data(scan.data)


class FitReturnsNone(MeanScale):
    def fit(self, train, target_site, reference=None, *, rng=None):
        super().fit(train, target_site, reference, rng=rng)


class InitChangesParam(MeanScale):
    def __init__(self, jitter: float = 0.0) -> None:
        self.jitter = jitter + 1.0


class FitChangesParam(MeanScale):
    def fit(self, train, target_site, reference=None, *, rng=None):
        self.jitter = 0.5
        return super().fit(train, target_site, reference, rng=rng)


class SecretlyNeedsReference(MeanScale):
    """Declares uses_reference=False but fails without one."""

    def transform(self, scan, reference=None):
        if reference is None:
            raise DataError("no reference")
        return super().transform(scan)


class NeedsSourceSitesAfterAll(MeanScale):
    def fit(self, train, target_site, reference=None, *, rng=None):
        if len(train.sites) < 2:
            raise DataError("need source sites")
        return super().fit(train, target_site, reference, rng=rng)


class FailsOnUnseenSites(MeanScale):
    meta = Meta(name="toy-unseen", version="0", citation="none", needs_source_sites=True)

    def fit(self, train, target_site, reference=None, *, rng=None):
        self.sites_ = list(train.sites)
        return super().fit(train, target_site, reference, rng=rng)

    def get_state(self):
        return {**super().get_state(), "sites": np.array(self.sites_)}

    def set_state(self, state):
        self.sites_ = [str(s) for s in state["sites"]]
        return super().set_state(state)

    def transform(self, scan, reference=None):
        out = super().transform(scan)
        if scan.site not in self.sites_:
            return out.with_data(np.full(scan.shape, np.nan, dtype=np.float32))
        return out


class BadMeta(MeanScale):
    meta = Meta(name="toy-badmeta", version="0", citation="")


def _split(cohort: Cohort):
    sites, subjects = cohort.sites, cohort.subjects
    target = sites[0]
    train = Cohort(
        [cohort.find(subjects[0], target), cohort.find(subjects[1], target), cohort.find(subjects[2], sites[1])],
        name="train",
    )
    tests = [cohort.find(subjects[3], sites[1]), cohort.find(subjects[4], sites[1])]
    return train, target, cohort.find(subjects[0], target), tests


@pytest.fixture
def split(tiny_cohort):
    train, target, reference, tests = _split(tiny_cohort)
    # Private copies of the test scans: a broken plugin may write into them.
    tests = [s.with_data(s.data.copy()) for s in tests]
    return train, target, reference, tests


def test_a_correct_harmonizer_passes(split):
    check_harmonizer(MeanScale(), *split)
    check_harmonizer(MeanScale(jitter=0.1), *split, seed=3)  # uses its rng: still deterministic


@pytest.mark.parametrize(
    ("cls", "check", "fragment"),
    [
        (WrongShape, "check_transform_output", "shape"),
        (MakesNaN, "check_transform_output", "non-finite"),
        (Float64Output, "check_transform_output", "float32"),
        (ChangesMask, "check_transform_output", "mask"),
        (MutatesInput, "check_transform_output", "in place"),
        (GlobalRandom, "check_deterministic", "disagree"),
        (UnseededRandom, "check_deterministic", "disagree"),
        (StateNotSaved, "check_save_load", "save/load"),
        (TransformsUnfitted, "check_not_fitted", "NotFittedError"),
        (FitReturnsNone, "check_fit_returns_self", "self"),
        (InitChangesParam, "check_get_params", "jitter"),
        (FitChangesParam, "check_fit_does_not_change_params", "jitter"),
        (SecretlyNeedsReference, "check_uses_reference", "no reference"),
        (NeedsSourceSitesAfterAll, "check_needs_source_sites", "need source sites"),
        (FailsOnUnseenSites, "check_handles_unseen_sites", "non-finite"),
        (BadMeta, "check_meta", "citation"),
    ],
)
def test_a_broken_harmonizer_is_caught(split, cls, check, fragment):
    with pytest.raises(AssertionError) as err:
        check_harmonizer(cls(), *split)
    message = str(err.value)
    assert message.startswith(f"[{check}]"), message
    assert fragment in message and cls.meta.name in message, message


def test_individual_checks_are_public(split):
    with pytest.raises(AssertionError, match=r"^\[check_transform_output\]"):
        check_transform_output(MakesNaN(), *split)
    with pytest.raises(AssertionError, match=r"^\[check_deterministic\]"):
        check_deterministic(GlobalRandom(), *split)
    with pytest.raises(AssertionError, match=r"^\[check_save_load\]"):
        check_save_load(StateNotSaved(), *split)


def test_checks_leave_the_global_random_state_alone(split):
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    check_deterministic(MeanScale(), *split)
    assert np.random.random() == expected


def test_unseen_site_check_uses_real_unseen_scans_when_given(tiny_cohort, split):
    train, target, reference, tests = split
    unseen_site = next(s for s in tiny_cohort.sites if s not in train.sites)
    tests = [*tests, tiny_cohort.find(tiny_cohort.subjects[5], unseen_site)]
    with pytest.raises(AssertionError, match=unseen_site):
        check_harmonizer(FailsOnUnseenSites(), train, target, reference, tests)


# -- evaluators -------------------------------------------------------------------


class GoodEvaluator(PerScanEvaluator):
    name = "toy-mean"
    metrics = (MetricSpec("mean_ratio", higher_is_better=None, ideal=1.0), MetricSpec("nan_metric", False))

    def evaluate_scan(self, case):
        return {"mean_ratio": float(case.output.data.mean() / case.input.data.mean()), "nan_metric": math.nan}


class ScenarioEvaluator(Evaluator):
    name = "toy-scenario"
    metrics = (MetricSpec("count", higher_is_better=True),)

    def evaluate(self, cases):
        return [{"subject": "*", "site": "*", "metric": "count", "value": float(len(cases))}]


class MissingMetric(GoodEvaluator):
    def evaluate(self, cases):
        return [r for r in super().evaluate(cases) if r["metric"] != "nan_metric"]


class UndeclaredMetric(GoodEvaluator):
    def evaluate(self, cases):
        return [*super().evaluate(cases), {"subject": "s", "site": "x", "metric": "surprise", "value": 1.0}]


class ExtraKey(GoodEvaluator):
    def evaluate(self, cases):
        return [{**r, "unit": "%"} for r in super().evaluate(cases)]


class IntValue(GoodEvaluator):
    def evaluate(self, cases):
        return [{**r, "value": 1} for r in super().evaluate(cases)]


class MissingCase(GoodEvaluator):
    def evaluate(self, cases):
        return super().evaluate(cases[:-1])


class NoMetrics(GoodEvaluator):
    metrics = ()


@pytest.fixture
def cases(tiny_cohort):
    return [EvalCase(input=s, output=s, target=None) for s in tiny_cohort.scans[:3]]


def test_a_correct_evaluator_passes(cases):
    check_evaluator(GoodEvaluator(), cases)
    check_evaluator(ScenarioEvaluator(), cases)


@pytest.mark.parametrize(
    ("cls", "fragment"),
    [
        (MissingMetric, "'nan_metric' reported 0 time(s)"),
        (UndeclaredMetric, "undeclared metric 'surprise'"),
        (ExtraKey, "exactly the keys"),
        (IntValue, "not a float"),
        (MissingCase, "reported 0 time(s)"),
        (NoMetrics, "MetricSpec"),
    ],
)
def test_a_broken_evaluator_is_caught(cases, cls, fragment):
    with pytest.raises(AssertionError, match=r"^\[check_evaluator\]") as err:
        check_evaluator(cls(), cases)
    assert fragment in str(err.value)
