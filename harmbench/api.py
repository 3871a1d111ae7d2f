"""Contracts every plugin implements: `Harmonizer`, `Evaluator`, `DatasetSource`.

Harmonizers follow scikit-learn's estimator conventions: ``__init__`` only
stores its keyword parameters under the same names, ``fit`` returns ``self``,
``get_params`` / ``set_params`` come for free. Fitted state is exposed as a
flat dict of numpy arrays (``get_state`` / ``set_state``) so that the runner
can cache it as an ``.npz`` without pickling arbitrary objects.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, NotFittedError, PluginError
from harmbench.results import atomic_path, atomic_write_text

__all__ = [
    "AXES",
    "DatasetSource",
    "EvalCase",
    "Evaluator",
    "Harmonizer",
    "Meta",
    "MetricSpec",
    "PerScanEvaluator",
    "StatelessHarmonizer",
    "params_hash",
    "transform_contract_violation",
]


@dataclass(frozen=True)
class Meta:
    """What a harmonizer is and what it can do; the runner reads only this.

    ``uses_reference``: needs one target-site scan at transform time (one-shot).
    ``needs_source_sites``: trains on source-site scans (False for target-only
    methods). ``handles_unseen_sites``: can harmonize scans from sites absent
    from training; when False the ``unseen`` scenario is ``not_applicable``.
    ``transductive``: looks at the test scans of a site to harmonize them; the
    runner then calls ``adapt`` with all of a site's test scans before
    transforming any of them.
    ``devices``: the torch device kinds it can run on.
    ``stochastic``: ``fit`` draws from its ``rng`` (weight initialisation, batches), so its result depends
    on the seed; the runner fits it once per seed of the suite (``seeds``) and the leaderboard shows the
    between-seed spread. Deterministic methods are fitted once.
    ``target_agnostic``: the fitted model does not depend on which site is the target (e.g. one model
    for all sites, told the target at transform time); the runner keys its model cache on the training
    data only, so one fit serves every target.
    """

    name: str
    version: str
    citation: str
    description: str = ""
    uses_reference: bool = False
    needs_source_sites: bool = True
    handles_unseen_sites: bool = True
    transductive: bool = False
    devices: tuple[str, ...] = ("cpu",)
    stochastic: bool = False
    target_agnostic: bool = False


#: The axes a leaderboard ranks on, in display order; a metric names at most one (`MetricSpec.axis`).
AXES: tuple[str, ...] = ("intensity", "fidelity", "anatomy", "downstream", "site")


def check_number(
    owner: str, name: str, value: Any, *, integer: bool = False, minimum: float = 0.0, strict: bool = False
) -> None:
    """Raise `ConfigError` naming ``owner``'s parameter ``name`` unless ``value`` is a finite number
    (an integer if ``integer``; never a bool) that is ``>= minimum`` (``> minimum`` if ``strict``)."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        what = "an integer" if integer else "a finite number"
        rel = ">" if strict else ">="
        raise ConfigError(f"{owner}: parameter {name!r} must be {what} {rel} {minimum:g}, got {value!r}")


def params_hash(params: Mapping[str, Any]) -> str:
    """Short stable hash of a parameter dict (JSON with sorted keys)."""
    blob = json.dumps(dict(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def transform_contract_violation(given: Scan, output: object) -> str | None:
    """What ``output`` of ``transform(given)`` breaks in the contract, or None when it keeps it.

    The one definition used by the runner (to fail a cell) and by `harmbench.testing` (to fail a check):
    a `Scan` with the input's shape, affine, mask, subject/site/session, float32 and finite values.
    """
    if not isinstance(output, Scan):
        return f"returned {type(output).__name__}, not a harmbench.Scan"
    if output.data.shape != given.data.shape:
        return f"returned shape {output.data.shape}, expected {given.data.shape}"
    if output.data.dtype != np.float32:
        return f"returned dtype {output.data.dtype}, expected float32"
    if not np.array_equal(output.affine, given.affine):
        return "changed the affine"
    if (output.mask is None) != (given.mask is None) or (
        given.mask is not None and not np.array_equal(output.mask, given.mask)
    ):
        return "changed the brain mask"
    if (output.subject, output.site, output.session) != (given.subject, given.site, given.session):
        return f"changed subject/site/session to {output.key!r}"
    n_bad = int(np.count_nonzero(~np.isfinite(output.data)))
    if n_bad:
        return f"returned {n_bad} non-finite (NaN or infinite) voxels"
    return None


class _Parametrised:
    """``get_params`` / ``set_params`` read from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def validate_params(self) -> None:
        """Raise `harmbench.errors.ConfigError` naming any parameter whose value is unusable.

        The runner calls it on every harmonizer and evaluator of a suite before any compute, so a bad value
        fails the run in a second rather than after an hour's fit. Override it to check your parameters;
        the default runs the plugin's ``_validate()`` when it has one (the built-in plugins' convention).
        """
        check = getattr(self, "_validate", None)
        if callable(check):
            check()

    def set_params(self, **params: Any) -> _Parametrised:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise PluginError(
                    f"{type(self).__name__} has no parameter {key!r}; valid: {', '.join(sorted(valid)) or 'none'}"
                )
            setattr(self, key, value)
        return self


class Harmonizer(_Parametrised, ABC):
    """Maps a scan from any site into the target site's intensity scale.

    Subclasses set ``meta`` and implement ``fit``, ``transform``,
    ``get_state`` and ``set_state``. ``transform`` must return a scan of the
    same shape, affine and mask as its input, with finite values, and must not
    fit anything implicitly.
    """

    meta: ClassVar[Meta]

    #: torch device string the runner asks for; plugins that ignore it run on CPU.
    device: str = "cpu"
    #: Folder the runner gives a fit for its own training checkpoints (None: do not checkpoint). A long fit
    #: killed part-way resumes from there, since the runner's model cache is written only after ``fit``.
    checkpoint_dir: Path | None = None
    #: Folder the runner shares between every configuration of this plugin fitted in one protocol context
    #: (dataset, split, target) on one device kind (None: share nothing): for an intermediate result that
    #: several configurations compute identically, such as a pre-training stage that only later parameters
    #: change. Key each entry on everything it depends on (parameters, seed, data, threads); the runner
    #: never clears it.
    shared_dir: Path | None = None

    @abstractmethod
    def fit(
        self,
        train: Cohort,
        target_site: str,
        reference: Scan | None = None,
        *,
        rng: np.random.Generator | None = None,
    ) -> Harmonizer:
        """Learn from the (unpaired) training cohort; returns ``self``."""

    @abstractmethod
    def transform(self, scan: Scan, reference: Scan | None = None) -> Scan:
        """Harmonize one scan to the target site."""

    def fit_info(self) -> dict[str, int | float | str]:
        """Facts about the fitted model worth keeping with its results (e.g. ``n_parameters``); default none.

        The runner stores them in the model cache and in every result row's ``fit_info`` column (JSON).
        """
        return {}

    def adapt(self, scans: Sequence[Scan]) -> Harmonizer:
        """Transductive step (only for ``meta.transductive``): see every test scan of one site
        before transforming them, e.g. to estimate a new site's effect. Default: nothing; returns self."""
        return self

    @abstractmethod
    def get_state(self) -> dict[str, np.ndarray]:
        """Fitted state as named numpy arrays (empty for stateless methods)."""

    @abstractmethod
    def set_state(self, state: Mapping[str, np.ndarray]) -> Harmonizer:
        """Restore what ``get_state`` returned; returns ``self``."""

    # -- provided -------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return bool(getattr(self, "fitted_", False))

    def check_is_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"harmonizer {self.meta.name!r} is not fitted: call fit() before transform()")

    def save(self, directory: str | Path) -> None:
        """Write fitted state to ``directory/state.npz`` (no pickle) and params to ``params.json``."""
        self.check_is_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: np.asarray(v) for k, v in self.get_state().items()}
        for key, value in state.items():
            if value.dtype == object:
                raise PluginError(f"harmonizer {self.meta.name!r}: state entry {key!r} is an object array")
        # each file under a unique temporary name, renamed into place: two runs saving into one folder
        # never interleave, and a reader sees the old file or the new one, never half of one
        with atomic_path(directory / "state.npz") as tmp:
            np.savez(tmp, **state)
        atomic_write_text(
            directory / "params.json",
            json.dumps(
                {"name": self.meta.name, "version": self.meta.version, "params": self.get_params()},
                sort_keys=True,
                default=str,
            ),
        )

    def load(self, directory: str | Path) -> Harmonizer:
        """Restore state written by ``save``; returns ``self``."""
        with np.load(Path(directory) / "state.npz", allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
        self.set_state(state)
        self.fitted_ = True
        return self

    def params_hash(self) -> str:
        return params_hash(self.get_params())


class StatelessHarmonizer(Harmonizer):
    """A harmonizer that learns nothing it must keep (e.g. one-shot methods): empty fitted state."""

    def get_state(self) -> dict[str, np.ndarray]:
        return {}

    def set_state(self, state: Mapping[str, np.ndarray]) -> StatelessHarmonizer:
        return self


@dataclass(frozen=True)
class MetricSpec:
    """One metric an evaluator computes.

    ``higher_is_better``: True / False, or None for metrics where the best
    value is ``ideal`` itself and both directions away from it are worse
    (e.g. nWD(i,p), ideal 1). ``ideal`` is the value of a perfect
    harmonization (``None`` if there is none). A metric with neither a
    direction nor an ideal is informational (a chance level, say): it is shown
    but never ranked. ``main`` metrics get a leaderboard column.
    ``device_dependent`` metrics (timings, memory) are only comparable on one
    device, so the leaderboard gives each device its own column.
    ``axis``: the ranking axis (one of `AXES`) this metric stands for on the summary board, or None.
    """

    name: str
    higher_is_better: bool | None
    unit: str = ""
    ideal: float | None = None
    main: bool = True
    description: str = ""
    device_dependent: bool = False
    axis: str | None = None

    def __post_init__(self) -> None:
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"metric {self.name!r}: axis {self.axis!r} is not one of {', '.join(AXES)}")

    @property
    def ranked(self) -> bool:
        return self.higher_is_better is not None or self.ideal is not None


@dataclass(frozen=True)
class EvalCase:
    """Everything an evaluator may look at for one harmonized test scan.

    ``target`` is the same subject's scan at the target site (traveling
    subject) or ``None``; ``target_pool`` holds target-site training scans for
    metrics that fall back to the site's pooled distribution; ``timing`` holds
    the runner's measurements (``fit_s``, ``transform_s``, ``peak_mem_mb``); ``rescan`` is the same subject's
    second target-site scan (a scan-rescan repeat, the ceiling a harmonized scan is read against) or ``None``
    where the data has none.
    """

    input: Scan
    output: Scan
    target: Scan | None
    target_pool: Sequence[Scan] = ()
    timing: Mapping[str, float] = field(default_factory=dict)
    rescan: Scan | None = None


class Evaluator(_Parametrised, ABC):
    """Computes metrics for all harmonized scans of one (scenario, harmonizer) cell.

    ``evaluate`` returns records ``{"subject", "site", "metric", "value"}``;
    scenario-level metrics use ``subject = "*"`` and ``site = "*"``.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    metrics: ClassVar[tuple[MetricSpec, ...]]

    def prepare(self, train: Cohort, target_site: str, cache_dir: Path | None) -> None:
        """Train whatever the evaluator needs, once per dataset and target (default: nothing).

        The runner passes the unpaired training cohort plus every target-site scan of every training subject
        (no test subject, no rescan).
        """

    @abstractmethod
    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        """Metric records for the cell's cases."""

    def metric(self, name: str) -> MetricSpec:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        raise KeyError(name)


class PerScanEvaluator(Evaluator):
    """An evaluator whose metrics are computed one scan at a time."""

    @abstractmethod
    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        """Metric name → value for one case (NaN where undefined)."""

    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        records = []
        for case in cases:
            values = self.evaluate_scan(case)
            for spec in self.metrics:
                value = values.get(spec.name, math.nan)
                records.append(
                    {"subject": case.input.subject, "site": case.input.site, "metric": spec.name, "value": float(value)}
                )
        return records


class DatasetSource(_Parametrised, ABC):
    """A named cohort provider (``--dataset NAME``), e.g. the simulator.

    ``fingerprint`` must be cheap (no image loading): the runner keys its
    caches on it so that an unchanged re-run never loads the data.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def fingerprint(self) -> str:
        """Stable string identifying exactly the data ``load`` would return."""

    @abstractmethod
    def load(self) -> Cohort:
        """Build or read the cohort."""

    def default_target_site(self, cohort: Cohort) -> str:
        return cohort.sites[0]

    def default_unseen_sites(self, cohort: Cohort) -> list[str]:
        """Default held-out sites: the last third of the sites, when there are four or more."""
        sites = cohort.sites
        if len(sites) < 4:
            return []
        return sites[len(sites) - len(sites) // 3 :]
