"""Conformance checks for harmbench plugins, modelled on scikit-learn's ``check_estimator``.

A plugin author calls these from pytest, on a small simulated cohort built by
`simulated_split` (no fixture from this repository needed)::

    from harmbench.testing import check_harmonizer, simulated_split

    def test_conformance():
        data = simulated_split()  # train, target_site, reference, test_scans
        check_harmonizer(MyHarmonizer(), *data)

or gets one pass/fail result per check, as ``harmbench check NAME`` prints them::

    from harmbench.testing import run_checks

    results = run_checks(MyHarmonizer())
    assert all(r.passed for r in results), [r for r in results if not r.passed]

Every check raises ``AssertionError`` whose message starts with ``[check_name]``
and names the plugin, so a failing test says which part of the contract
(``harmbench.api``, docs/design.md §2) was broken. Each check is also public so that a
failure can be reproduced on its own.

Harmonizer checks never mutate the instance they are given: they work on fresh
clones built from ``type(h)(**h.get_params())``, which is itself a check.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from harmbench.api import EvalCase, Evaluator, Harmonizer, Meta, MetricSpec, transform_contract_violation
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import NotFittedError

log = logging.getLogger(__name__)

__all__ = [
    "CheckData",
    "CheckResult",
    "check_deterministic",
    "check_evaluator",
    "check_evaluator_prepare",
    "check_fit_does_not_change_params",
    "check_fit_returns_self",
    "check_get_params",
    "check_handles_unseen_sites",
    "check_harmonizer",
    "check_meta",
    "check_needs_source_sites",
    "check_not_fitted",
    "check_save_load",
    "check_transform_output",
    "check_uses_reference",
    "clone",
    "eval_cases",
    "run_checks",
    "simulated_cohort",
    "simulated_split",
]

RECORD_KEYS = frozenset({"subject", "site", "metric", "value"})
_UNSEEN_SITE = "harmbench-check-unseen-site"


class _CheckFailed(AssertionError):
    pass


def _fail(check: str, who: str, message: str) -> None:
    raise _CheckFailed(f"[{check}] {who}: {message}")


def _who(harmonizer: Harmonizer) -> str:
    meta = getattr(type(harmonizer), "meta", None)
    name = getattr(meta, "name", None) or type(harmonizer).__name__
    return f"harmonizer {name!r} ({type(harmonizer).__name__})"


def clone(harmonizer: Harmonizer) -> Harmonizer:
    """A fresh, unfitted instance with the same parameters."""
    return type(harmonizer)(**harmonizer.get_params())


@contextmanager
def _reraise_as(check: str, who: str, doing: str) -> Iterator[None]:
    """Turn an unexpected exception into an AssertionError that names the check."""
    try:
        yield
    except _CheckFailed:
        raise
    except Exception as exc:
        raise _CheckFailed(f"[{check}] {who}: {doing} raised {type(exc).__name__}: {exc}") from exc


def _fit(h: Harmonizer, train: Cohort, target_site: str, reference: Scan | None, seed: int, check: str) -> Harmonizer:
    with _reraise_as(check, _who(h), "fit()"):
        h.fit(train, target_site, reference, rng=np.random.default_rng(seed))
    return h


def _adapt(h: Harmonizer, scans: Sequence[Scan], check: str) -> Harmonizer:
    """As the runner does for ``meta.transductive``: ``adapt`` to each site's scans before any transform."""
    if h.meta.transductive:
        for site in dict.fromkeys(s.site for s in scans):
            with _reraise_as(check, _who(h), f"adapt() to the scans of site {site!r}"):
                h.adapt([s for s in scans if s.site == site])
    return h


def _transform(h: Harmonizer, scan: Scan, reference: Scan | None, check: str) -> Scan:
    with _reraise_as(check, _who(h), f"transform({scan.describe()})"):
        out = h.transform(scan, reference)
    if not isinstance(out, Scan):
        _fail(check, _who(h), f"transform() returned {type(out).__name__}, expected harmbench.Scan")
    return out


def _params_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # objects whose == is ambiguous count as unequal
        return False


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shapes {a.shape} vs {b.shape}"
    with np.errstate(invalid="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"{int(np.sum(~(a == b)))} voxels differ, max |diff| = {np.nanmax(d) if d.size else 0.0:.3g}"


# -- harmonizer checks ---------------------------------------------------------


def check_meta(harmonizer: Harmonizer) -> None:
    """``meta`` is a `harmbench.api.Meta` with a name, version and citation."""
    check, who = "check_meta", _who(harmonizer)
    meta = getattr(type(harmonizer), "meta", None)
    if not isinstance(meta, Meta):
        _fail(check, who, f"class attribute `meta` must be a harmbench.api.Meta, got {type(meta).__name__}")
    for attr in ("name", "version", "citation"):
        value = getattr(meta, attr)
        if not isinstance(value, str) or not value.strip():
            _fail(check, who, f"meta.{attr} must be a non-empty string, got {value!r}")
    for attr in ("uses_reference", "needs_source_sites", "handles_unseen_sites", "transductive"):
        if not isinstance(getattr(meta, attr), bool):
            _fail(check, who, f"meta.{attr} must be a bool, got {getattr(meta, attr)!r}")


def check_get_params(harmonizer: Harmonizer) -> None:
    """``type(h)(**h.get_params())`` works and has equal params (``__init__`` only stores)."""
    check, who = "check_get_params", _who(harmonizer)
    with _reraise_as(check, who, "get_params()"):
        params = harmonizer.get_params()
    with _reraise_as(check, who, f"{type(harmonizer).__name__}(**get_params()) with {params!r}"):
        other = clone(harmonizer)
    with _reraise_as(check, who, "get_params() on the clone"):
        again = other.get_params()
    if set(params) != set(again):
        _fail(check, who, f"clone has parameters {sorted(again)} instead of {sorted(params)}")
    for key, value in params.items():
        if not _params_equal(value, again[key]):
            _fail(check, who, f"parameter {key!r} does not round-trip: {value!r} became {again[key]!r}")
    if other.is_fitted:
        _fail(check, who, "a freshly constructed instance already reports is_fitted")


def check_not_fitted(harmonizer: Harmonizer, scan: Scan, reference: Scan | None = None) -> None:
    """``transform`` before ``fit`` raises `harmbench.errors.NotFittedError`."""
    check = "check_not_fitted"
    h = clone(harmonizer)
    who = _who(h)
    try:
        h.transform(scan, reference)
    except NotFittedError:
        return
    except Exception as exc:
        _fail(
            check,
            who,
            f"transform() before fit() raised {type(exc).__name__}: {exc}; expected NotFittedError "
            "(call self.check_is_fitted() first)",
        )
    _fail(check, who, "transform() before fit() returned instead of raising NotFittedError")


def check_fit_returns_self(
    harmonizer: Harmonizer, train: Cohort, target_site: str, reference: Scan | None = None, *, seed: int = 0
) -> None:
    """``fit`` returns the instance itself and marks it fitted."""
    check = "check_fit_returns_self"
    h = clone(harmonizer)
    who = _who(h)
    with _reraise_as(check, who, "fit()"):
        returned = h.fit(train, target_site, reference, rng=np.random.default_rng(seed))
    if returned is not h:
        _fail(check, who, f"fit() returned {type(returned).__name__} instead of self")
    if not h.is_fitted:
        _fail(check, who, "after fit() is_fitted is False (set self.fitted_ = True)")


def check_fit_does_not_change_params(
    harmonizer: Harmonizer, train: Cohort, target_site: str, reference: Scan | None = None, *, seed: int = 0
) -> None:
    """``fit`` leaves the ``__init__`` parameters alone (learned values go in ``name_`` attributes)."""
    check = "check_fit_does_not_change_params"
    h = clone(harmonizer)
    before = h.get_params()
    _fit(h, train, target_site, reference, seed, check)
    after = h.get_params()
    for key, value in before.items():
        if not _params_equal(value, after.get(key)):
            _fail(check, _who(h), f"fit() changed parameter {key!r} from {value!r} to {after.get(key)!r}")


def _check_output(check: str, who: str, scan: Scan, out: Scan) -> None:
    problem = transform_contract_violation(scan, out)
    if problem is not None:
        _fail(check, who, f"output of {scan.describe()}: {problem}")


def check_transform_output(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan | None,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
) -> None:
    """Output keeps shape, affine, mask and identity; is finite float32; the input is not modified."""
    check = "check_transform_output"
    h = _adapt(_fit(clone(harmonizer), train, target_site, reference, seed, check), test_scans, check)
    who = _who(h)
    for scan in test_scans:
        original = scan.data.copy()
        out = _transform(h, scan, reference, check)
        _check_output(check, who, scan, out)
        if not np.array_equal(scan.data, original):
            _fail(check, who, f"transform() modified its input {scan.describe()} in place")


def check_deterministic(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan | None,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
) -> None:
    """Two fresh instances fitted with ``default_rng(seed)`` give identical output.

    The global numpy random state is set to different values before each fit,
    so a plugin that draws from it (instead of ``rng``) fails here.
    """
    check = "check_deterministic"
    saved = np.random.get_state()
    outputs: list[list[np.ndarray]] = []
    try:
        for global_seed in (12345, 54321):
            np.random.seed(global_seed)  # perturbed on purpose: see the docstring
            h = _adapt(_fit(clone(harmonizer), train, target_site, reference, seed, check), test_scans, check)
            outputs.append([_transform(h, s, reference, check).data for s in test_scans])
    finally:
        np.random.set_state(saved)
    for scan, a, b in zip(test_scans, outputs[0], outputs[1], strict=True):
        if not np.array_equal(a, b):
            _fail(check, _who(harmonizer), f"two fits with seed {seed} disagree on {scan.describe()}: {_diff(a, b)}")


def check_save_load(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan | None,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
    directory: str | Path | None = None,
) -> None:
    """``save`` then ``load`` into a fresh instance gives identical output (state round-trips)."""
    check = "check_save_load"
    h = _adapt(_fit(clone(harmonizer), train, target_site, reference, seed, check), test_scans, check)
    who = _who(h)
    expected = [_transform(h, s, reference, check).data for s in test_scans]
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        with _reraise_as(check, who, "save()"):
            h.save(tmp)
        fresh = clone(harmonizer)
        with _reraise_as(check, who, "load() into a fresh instance"):
            loaded = fresh.load(tmp)
    if loaded is not fresh:
        _fail(check, who, "load() did not return self")
    if not fresh.is_fitted:
        _fail(check, who, "after load() is_fitted is False")
    _adapt(fresh, test_scans, check)
    for scan, a in zip(test_scans, expected, strict=True):
        b = _transform(fresh, scan, reference, check).data
        if not np.array_equal(a, b):
            _fail(
                check,
                who,
                f"after save/load the output for {scan.describe()} changed ({_diff(a, b)}): "
                "get_state() must hold everything transform() uses",
            )


def check_uses_reference(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan | None,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
) -> None:
    """``meta.uses_reference=False`` → ``transform(scan, None)`` works (and gives valid output)."""
    check = "check_uses_reference"
    if harmonizer.meta.uses_reference:
        return
    h = _adapt(_fit(clone(harmonizer), train, target_site, reference, seed, check), test_scans, check)
    for scan in test_scans:
        _check_output(check, _who(h), scan, _transform(h, scan, None, check))


def check_needs_source_sites(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan | None,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
) -> None:
    """``meta.needs_source_sites=False`` → fit on target-site scans only works (and then transform, if the
    method handles unseen sites)."""
    check = "check_needs_source_sites"
    if harmonizer.meta.needs_source_sites:
        return
    target_only = train.filter(lambda s: s.site == target_site, name=f"{train.name}[{target_site} only]")
    if len(target_only) == 0:
        _fail(check, _who(harmonizer), f"the training cohort has no scan from target site {target_site!r}")
    h = _adapt(_fit(clone(harmonizer), target_only, target_site, reference, seed, check), test_scans, check)
    # Every source site is unseen by a target-only fit; a method that cannot
    # harmonize unseen sites is only required to fit here.
    if harmonizer.meta.handles_unseen_sites:
        for scan in test_scans:
            _check_output(check, _who(h), scan, _transform(h, scan, reference, check))


def _unseen_scans(train: Cohort, test_scans: Sequence[Scan]) -> list[Scan]:
    seen = set(train.sites)
    unseen = [s for s in test_scans if s.site not in seen]
    if unseen:
        return [s for s in unseen if s.site == unseen[0].site]  # all of one site, as the runner gives them
    # No unseen scan was supplied: invent a "scanner" with a different gain and offset, applied to two scans
    # of different subjects where possible (transductive methods estimate a site from several scans).
    bases = list({s.subject: s for s in test_scans}.values())[:2]
    fakes = []
    for i, base in enumerate(bases if len(bases) == 2 else bases * 2):
        offset = np.float32((0.05 + 0.01 * i) * float(base.data.max()))
        data = base.data * np.float32(1.37) + np.where(base.brain, offset, np.float32(0))
        fakes.append(
            dataclasses.replace(
                base.with_data(data.astype(np.float32)),
                site=_UNSEEN_SITE,
                subject=f"{base.subject}-{i}" if len(bases) < 2 else base.subject,
                source=f"{base.describe()} (rescaled as an unseen site)",
            )
        )
    return fakes


def check_handles_unseen_sites(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan | None,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
) -> None:
    """``meta.handles_unseen_sites=True`` → a scan from a site absent from ``train`` is harmonized (finite)."""
    check = "check_handles_unseen_sites"
    if not harmonizer.meta.handles_unseen_sites or not test_scans:
        return
    h = _fit(clone(harmonizer), train, target_site, reference, seed, check)
    unseen = _unseen_scans(train, test_scans)
    _adapt(h, unseen, check)
    for scan in unseen:
        _check_output(check, _who(h), scan, _transform(h, scan, reference, check))


def check_harmonizer(
    harmonizer: Harmonizer,
    train: Cohort,
    target_site: str,
    reference: Scan,
    test_scans: Sequence[Scan],
    *,
    seed: int = 0,
) -> None:
    """Run every harmonizer check; the first failure raises ``AssertionError`` naming its check.

    ``train`` is the (unpaired) training cohort including target-site scans,
    ``reference`` the one-shot target-site scan, ``test_scans`` a few scans to
    transform (ideally from seen and unseen source sites).
    """
    if not test_scans:
        raise ValueError("check_harmonizer needs at least one test scan")
    check_meta(harmonizer)
    check_get_params(harmonizer)
    check_not_fitted(harmonizer, test_scans[0], reference)
    check_fit_returns_self(harmonizer, train, target_site, reference, seed=seed)
    check_fit_does_not_change_params(harmonizer, train, target_site, reference, seed=seed)
    common = (harmonizer, train, target_site, reference, test_scans)
    checks: tuple[Callable[..., None], ...] = (
        check_transform_output,
        check_deterministic,
        check_save_load,
        check_uses_reference,
        check_needs_source_sites,
        check_handles_unseen_sites,
    )
    for check in checks:
        check(*common, seed=seed)


# -- evaluator checks ----------------------------------------------------------


def check_evaluator(evaluator: Evaluator, cases: Sequence[EvalCase]) -> None:
    """Declared metrics are valid; ``evaluate`` returns well-formed records covering every case.

    Records must have exactly the keys ``subject, site, metric, value``, name
    only declared metrics, and carry float values (NaN allowed). Every declared
    metric appears once per case, or once with ``subject = site = "*"`` for
    scenario-level metrics.
    """
    check = "check_evaluator"
    who = f"evaluator {getattr(type(evaluator), 'name', type(evaluator).__name__)!r}"
    name = getattr(type(evaluator), "name", None)
    if not isinstance(name, str) or not name:
        _fail(check, who, "class attribute `name` must be a non-empty string")
    specs = getattr(type(evaluator), "metrics", None)
    if not isinstance(specs, tuple) or not specs or not all(isinstance(s, MetricSpec) for s in specs):
        _fail(check, who, "class attribute `metrics` must be a non-empty tuple of harmbench.api.MetricSpec")
    declared = [s.name for s in specs]
    if len(set(declared)) != len(declared):
        _fail(check, who, f"duplicate metric names in {declared}")
    with _reraise_as(check, who, "evaluate()"):
        records = evaluator.evaluate(cases)
    if not isinstance(records, list):
        _fail(check, who, f"evaluate() returned {type(records).__name__}, expected a list of dicts")
    seen: dict[tuple[str, str, str], int] = {}
    for rec in records:
        if not isinstance(rec, dict) or set(rec) != RECORD_KEYS:
            keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            _fail(check, who, f"record {rec!r} must have exactly the keys {sorted(RECORD_KEYS)}, got {keys}")
        if rec["metric"] not in declared:
            _fail(check, who, f"record names undeclared metric {rec['metric']!r} (declared: {declared})")
        value = rec["value"]
        if not isinstance(value, (float, np.floating)):
            _fail(check, who, f"metric {rec['metric']!r} value {value!r} is a {type(value).__name__}, not a float")
        key = (str(rec["subject"]), str(rec["site"]), rec["metric"])
        seen[key] = seen.get(key, 0) + 1
    expected: dict[tuple[str, str], int] = {}
    for case in cases:
        key2 = (case.input.subject, case.input.site)
        expected[key2] = expected.get(key2, 0) + 1
    for spec in specs:
        if ("*", "*", spec.name) in seen:
            continue
        for case in cases:
            n = seen.get((case.input.subject, case.input.site, spec.name), 0)
            want = expected[(case.input.subject, case.input.site)]
            if n != want:
                _fail(
                    check,
                    who,
                    f"metric {spec.name!r} reported {n} time(s) for {case.input.describe()} "
                    f"(subject {case.input.subject!r}, site {case.input.site!r}); expected {want}",
                )


# -- fixture builders ------------------------------------------------------------


def simulated_cohort(*, n_subjects: int = 6, voxel_mm: float = 8.0, seed: int = 0, profile: str = "quick") -> Cohort:
    """A small traveling-subject cohort from harmbench's simulator: every subject at every built-in site.

    The defaults (6 subjects, 8 mm voxels) take about a second and are what ``harmbench check`` uses.
    """
    from harmbench.data.sim import simulate_cohort

    return simulate_cohort(profile, seed=seed, n_subjects=n_subjects, voxel_mm=voxel_mm)


@dataclasses.dataclass(frozen=True)
class CheckData:
    """What the harmonizer checks take, in their argument order: ``check_harmonizer(h, *data)``.

    ``targets`` maps each test subject to its target-site test scan (the paired ground truth evaluators see).
    """

    train: Cohort
    target_site: str
    reference: Scan
    test_scans: list[Scan]
    targets: dict[str, Scan] = dataclasses.field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.train, self.target_site, self.reference, self.test_scans))


def simulated_split(cohort: Cohort | None = None, *, seed: int = 0) -> CheckData:
    """The benchmark protocol applied to ``cohort`` (default: `simulated_cohort`).

    The first site is the target and the last two are held out of training, as in a real run; the test
    scans are the seen-site ones (the unseen-site check then uses the held-out sites' scans only when
    given them, and otherwise invents an unseen scanner).
    """
    from harmbench.protocol import SplitData, make_split

    cohort = cohort if cohort is not None else simulated_cohort(seed=seed)
    sites = cohort.sites
    if len(sites) < 3:
        raise ValueError(f"simulated_split needs a cohort with at least 3 sites, got {len(sites)}")
    data = SplitData(make_split(cohort, sites[0], sites[-2:], n_test_subjects=2, seed=seed), cohort)
    # Private copies: a broken plugin may write into the scans it is given.
    tests = [s.with_data(s.data.copy()) for s in data.scenario_scans("seen")]
    targets = {s.subject: target for s in tests if (target := data.paired_target(s)) is not None}
    return CheckData(data.train, data.target_site, data.reference, tests, targets)


def eval_cases(data: CheckData | None = None) -> list[EvalCase]:
    """Evaluation cases as the runner builds them, with each test scan as its own (unharmonized) output,
    the same subject's target-site scan as ``target`` and the target-site training scans as ``target_pool``."""
    data = data if data is not None else simulated_split()
    pool = list(data.train.by_site(data.target_site))
    cases = []
    for scan in data.test_scans:
        cases.append(EvalCase(input=scan, output=scan, target=data.targets.get(scan.subject), target_pool=pool))
    return cases


# -- one result per check ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One conformance check's outcome: ``status`` is ``pass``, ``fail`` or ``n/a`` (does not apply)."""

    check: str
    status: str
    reason: str
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status != "fail"


def _summary(func: Callable[..., Any]) -> str:
    first_paragraph = (func.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(first_paragraph.split()).replace("``", "")


def _run_one(name: str, func: Callable[[], None], summary: str) -> CheckResult:
    start = time.perf_counter()
    try:
        func()
    except AssertionError as exc:
        log.debug("%s failed", name, exc_info=True)  # `harmbench --debug check` shows where
        message = str(exc)
        prefix = f"[{name}] "
        reason = message[len(prefix) :] if message.startswith(prefix) else message
        return CheckResult(name, "fail", reason, time.perf_counter() - start)
    # A plugin may break in ways the checks did not anticipate (e.g. no `meta` at all); that is a failure
    # of this check, reported with its type and message, and the traceback goes to the debug log.
    except Exception as exc:
        log.debug("%s raised", name, exc_info=True)
        return CheckResult(name, "fail", f"raised {type(exc).__name__}: {exc}", time.perf_counter() - start)
    return CheckResult(name, "pass", summary, time.perf_counter() - start)


def _not_applicable(harmonizer: Harmonizer, name: str) -> str | None:
    meta = getattr(type(harmonizer), "meta", None)
    flags = {
        "check_uses_reference": ("uses_reference", True),
        "check_needs_source_sites": ("needs_source_sites", True),
        "check_handles_unseen_sites": ("handles_unseen_sites", False),
    }
    if name not in flags or not isinstance(meta, Meta):
        return None
    attr, skip_when = flags[name]
    if getattr(meta, attr) is skip_when:
        return f"does not apply: meta.{attr}={skip_when}"
    return None


def _harmonizer_results(h: Harmonizer, data: CheckData, seed: int) -> list[CheckResult]:
    train, target, reference, tests = data
    first = tests[0]
    calls: list[tuple[Callable[..., None], Callable[[], None]]] = [
        (check_meta, lambda: check_meta(h)),
        (check_get_params, lambda: check_get_params(h)),
        (check_not_fitted, lambda: check_not_fitted(h, first, reference)),
        (check_fit_returns_self, lambda: check_fit_returns_self(h, train, target, reference, seed=seed)),
        (
            check_fit_does_not_change_params,
            lambda: check_fit_does_not_change_params(h, train, target, reference, seed=seed),
        ),
    ]
    for func in (
        check_transform_output,
        check_deterministic,
        check_save_load,
        check_uses_reference,
        check_needs_source_sites,
        check_handles_unseen_sites,
    ):
        calls.append((func, functools.partial(func, h, train, target, reference, tests, seed=seed)))
    results = []
    for func, call in calls:
        skip = _not_applicable(h, func.__name__)
        if skip is not None:
            results.append(CheckResult(func.__name__, "n/a", skip))
        else:
            results.append(_run_one(func.__name__, call, _summary(func)))
    return results


def check_evaluator_prepare(evaluator: Evaluator, train: Cohort, target_site: str) -> None:
    """``prepare`` (the evaluator's once-per-dataset training) runs on the training cohort."""
    who = f"evaluator {getattr(type(evaluator), 'name', type(evaluator).__name__)!r}"
    with tempfile.TemporaryDirectory() as tmp, _reraise_as("check_evaluator_prepare", who, "prepare()"):
        evaluator.prepare(train, target_site, Path(tmp))


def run_checks(plugin: Harmonizer | Evaluator, data: CheckData | None = None, *, seed: int = 0) -> list[CheckResult]:
    """Run every conformance check on a harmonizer or evaluator instance; never raises for a broken plugin.

    Unlike `check_harmonizer`, which stops at the first failure, every check runs and reports
    ``pass`` (with what it verified), ``fail`` (with why) or ``n/a`` (with the ``meta`` flag that makes it
    not apply). ``data`` defaults to `simulated_split`.
    """
    data = data if data is not None else simulated_split(seed=seed)
    if not data.test_scans:
        raise ValueError("run_checks needs at least one test scan")
    if isinstance(plugin, Harmonizer):
        return _harmonizer_results(plugin, data, seed)
    if isinstance(plugin, Evaluator):
        prepared = _run_one(
            "check_evaluator_prepare",
            lambda: check_evaluator_prepare(plugin, data.train, data.target_site),
            _summary(check_evaluator_prepare),
        )
        if not prepared.passed:
            return [prepared, CheckResult("check_evaluator", "fail", "not run: prepare() failed")]
        cases = eval_cases(data)
        return [
            prepared,
            _run_one("check_evaluator", lambda: check_evaluator(plugin, cases), _summary(check_evaluator)),
        ]
    raise TypeError(f"run_checks takes a harmbench Harmonizer or Evaluator instance, got {type(plugin).__name__}")
