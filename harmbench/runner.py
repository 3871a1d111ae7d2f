"""Executes a suite: fits each harmonizer once, harmonizes every scenario's test
scans, evaluates each (scenario, harmonizer, evaluator) cell, writes results.

Guarantees (docs/design.md §4):
- a cell's rows are written atomically as soon as it finishes; a killed run
  resumes from the cells on disk, and an unchanged re-run computes nothing and
  does not even load the data;
- a plugin that raises, hangs past ``cell_timeout_s`` (even one that swallows
  the time-out), writes into its read-only input, returns a malformed record or
  breaks the output contract fails only its own cells, with the reason in the
  results (and the traceback under ``<out>/errors/``);
- every suite component is instantiated and its parameters validated before
  any compute; a bad name or value is one `ConfigError` naming the suite file,
  table and key;
- fitted models are cached as arrays under ``<out>/cache/models/``; cell and
  model keys include the suite name and the harmbench, plugin and distribution
  versions, so an upgrade or another suite never reuses a stale result; a
  cached model that cannot be loaded is refitted;
- capabilities come from ``meta`` only: a harmonizer that cannot handle a
  scenario gets ``not_applicable`` cells;
- fit and transform are timed and their peak memory recorded (CUDA events and
  CUDA memory statistics on a GPU, see `harmbench.timing`) for the throughput
  evaluator;
- a stochastic harmonizer (``meta.stochastic``) is fitted once per fit seed of the suite
  (``Suite.fit_seeds``), each seed with its own cells, model cache entry and ``seed`` column;
  deterministic ones are fitted once, with the suite's seed;
- a reference row, never ranked: the scan-rescan ceiling (each test subject's target-site rescan
  scored as the output against the target-site scan) where the data has rescans, else the oracle
  (the target-site scan scored against itself), marked as such;
- ``scores.csv`` is the per-scan table in a deterministic text form, and the leaderboards are
  rendered from it, so the committed scores regenerate the committed leaderboards byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import numbers
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import harmbench
from harmbench.api import EvalCase, Evaluator, Harmonizer, Meta, params_hash, transform_contract_violation
from harmbench.data.io import LocalDataset, validate_cohort
from harmbench.data.scan import Cohort, Scan
from harmbench.errors import ConfigError, DataError, HarmbenchError, PluginError
from harmbench.leaderboard import write_leaderboards
from harmbench.plugins import Registry
from harmbench.progress import progress as progress_bar
from harmbench.progress import progress_enabled
from harmbench.protocol import SCENARIOS, Split, SplitData, make_split
from harmbench.results import (
    SCORES_FILE,
    ResultStore,
    atomic_path,
    atomic_write_text,
    read_scores,
    scores_csv,
    to_frame,
)
from harmbench.suite import Component, Suite
from harmbench.timing import measure, resolve_run_device, thread_budget, time_each

log = logging.getLogger(__name__)


class CellTimeout(BaseException):
    """A plugin ran past the suite's ``cell_timeout_s``.

    A `BaseException`, like `KeyboardInterrupt`, so a plugin's ``except Exception`` cannot swallow it; the
    runner catches it at the same places it isolates plugin errors.
    """


#: What the runner's failure isolation catches: any plugin error, and a time-out.
PLUGIN_FAILURES: tuple[type[BaseException], ...] = (Exception, CellTimeout)
#: After the first alarm, the alarm repeats this often until the plugin returns (a plugin that swallowed
#: one alarm meets the next).
_ALARM_REPEAT_S = 0.5


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise `CellTimeout` in the main thread after ``seconds`` (no limit when None or off the main thread).

    A plugin that catches even the `BaseException` and returns anyway is caught afterwards: the block's
    elapsed time is checked when it ends.
    """
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    message = f"{what} ran longer than {seconds:g} s"

    def on_alarm(signum: int, frame: Any) -> None:
        raise CellTimeout(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds, _ALARM_REPEAT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if time.monotonic() - started > seconds:
        raise CellTimeout(f"{message} (the plugin caught the time-out and carried on)")


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, ValueError) and "read-only" in first:
        # numpy's own wording ("assignment destination is read-only") does not say whose array it was
        first = f"wrote into a read-only input scan; copy it first ({first})"
    return f"{type(exc).__name__}: {first}"[:500]


def _config_reason(exc: BaseException) -> str:
    """A plugin's own parameter error as it wrote it; anything else with its exception type."""
    if isinstance(exc, HarmbenchError):
        return (str(exc).strip().splitlines() or [""])[0][:500]
    return _reason(exc)


#: Keys every evaluator record must have.
RECORD_KEYS = ("subject", "site", "metric", "value")


def check_records(name: str, records: Any, declared: set[str]) -> list[dict[str, Any]]:
    """Enforce the evaluator contract on ``evaluate``'s records; a violation fails that evaluator's cell."""
    if not isinstance(records, list | tuple):
        raise PluginError(f"evaluator {name!r} returned {type(records).__name__}, not a list of records")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise PluginError(f"evaluator {name!r}: record {i} is a {type(record).__name__}, not a dict")
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise PluginError(f"evaluator {name!r}: record {i} has no {', '.join(missing)} ({record!r})"[:300])
        if record["metric"] not in declared:
            raise PluginError(f"evaluator {name!r} returned undeclared metric {record['metric']!r}")
        value = record["value"]
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise PluginError(
                f"evaluator {name!r}: record {i} ({record['metric']}) has a non-numeric value {value!r}"[:300]
            )
    return list(records)


#: Label of the reference row where the data has no rescans: the output is the subject's target-site scan itself.
ORACLE = "oracle"
#: Label of the reference row where it has: the output is the subject's target-site rescan.
CEILING = "rescan-ceiling"
#: Label of the planned reference cells (the row's label, one of the two above, is settled when it runs).
REFERENCE = "reference"


def _direction(higher_is_better: bool | None) -> str:
    return {True: "higher", False: "lower", None: "ideal"}[higher_is_better]


def not_applicable_reason(meta: Meta, scenario: str) -> str | None:
    """Why a harmonizer with this ``meta`` cannot run ``scenario`` (None when it can)."""
    if scenario == "unseen" and not meta.handles_unseen_sites:
        return "cannot harmonize sites absent from training (meta: handles_unseen_sites=False)"
    return None


def check_output(name: str, given: Scan, output: Any) -> Scan:
    """Enforce the transform contract on a plugin's output; a violation fails the plugin's cells."""
    problem = transform_contract_violation(given, output)
    if problem is not None:
        raise PluginError(f"harmonizer {name!r} {problem} for {given.key}")
    return output


@dataclass
class Cell:
    scenario: str
    harmonizer: Component
    evaluator: Component
    cell_id: str
    #: Fit seed (the suite's seed for deterministic harmonizers and the reference row).
    seed: int = 0


@dataclass
class Plan:
    """What a run would do (``harmbench run --dry-run``): computed without fitting or evaluating anything."""

    split: Split
    #: (cell, "cached" | "compute")
    cells: list[tuple[Cell, str]]
    #: harmonizer label → "reuse" (a cached model) | "fit" | "none" (every one of its cells is cached)
    models: dict[str, str]

    def render(self) -> str:
        """The plan as text, one line per cell and per model, with a count at the end."""
        lines = [
            f"target site: {self.split.target_site}; unseen sites: {', '.join(self.split.unseen_sites) or 'none'}",
            "models:",
            *(f"  {label:<24} {what}" for label, what in self.models.items()),
            "cells:",
            *(f"  {what:<8} {cell.cell_id}" for cell, what in self.cells),
        ]
        todo = sum(what == "compute" for _, what in self.cells)
        fits = sum(what == "fit" for what in self.models.values())
        cached = len(self.cells) - todo
        lines.append(f"{len(self.cells)} cells: {cached} cached, {todo} to compute; {fits} model(s) to fit")
        return "\n".join(lines) + "\n"


@dataclass
class RunReport:
    out_dir: Path
    results_path: Path
    leaderboards: dict[str, Path]
    cells_total: int = 0
    cells_computed: int = 0
    cells_failed: int = 0
    split: Split | None = None
    failures: list[str] = field(default_factory=list)


class Runner:
    """Runs one suite into one output folder."""

    def __init__(
        self,
        suite: Suite,
        out_dir: str | Path,
        *,
        registry: Registry | None = None,
        progress: bool = True,
        save_images: bool = False,
        retry_failed: bool = False,
    ) -> None:
        self.suite = suite
        self.retry_failed = retry_failed
        self.out_dir = Path(out_dir)
        self.registry = registry if registry is not None else Registry()
        self.progress = progress
        self.save_images = save_images
        self.store = ResultStore(self.out_dir)
        if not suite.harmonizers:
            raise ConfigError("the suite names no harmonizer")
        if not suite.evaluators:
            raise ConfigError("the suite names no evaluator")
        # resolve every name before any work so a typo fails in a second, not after a fit
        self.harmonizer_classes = {c.label: self.registry.harmonizer(c.plugin) for c in suite.harmonizers}
        self.evaluator_classes = {c.label: self.registry.evaluator(c.plugin) for c in suite.evaluators}
        reserved = sorted({ORACLE, CEILING, REFERENCE} & set(self.harmonizer_classes))
        if suite.oracle and reserved:
            raise ConfigError(f"the harmonizer label {reserved[0]!r} is reserved for the reference row; rename it")
        self.device = resolve_run_device(suite.device)
        self._validate_components()
        self.dataset = self._dataset()
        self._cohort: Cohort | None = None
        self._evaluators: dict[str, Evaluator] = {}
        #: (harmonizer label, fit seed) → what its fit recorded (training-set sizes, ``fit_info``), for the rows
        self._fit_provenance: dict[tuple[str, int], dict[str, Any]] = {}

    # -- set-up -----------------------------------------------------------------------------------
    def _where(self, table: str) -> str:
        """``<suite file>: [table]``, the prefix of a configuration error."""
        return f"{self.suite.source or f'suite {self.suite.name!r}'}: [{table}]"

    def _instantiate(self, cls: type, component: Component, table: str | None = None) -> Any:
        """``cls(**params)``; an unknown parameter name or a value the plugin refuses is a `ConfigError`
        naming the suite file, the table and the key."""
        where = self._where(table or component.label)
        valid = cls._param_names()
        unknown = sorted(set(component.params) - set(valid))
        if unknown:
            raise ConfigError(
                f"{where} unknown parameter {unknown[0]!r} of plugin {component.plugin!r} "
                f"(valid: {', '.join(valid) or 'none'})"
            )
        try:
            return cls(**component.params)
        except (TypeError, ValueError, HarmbenchError) as exc:
            raise ConfigError(f"{where} {_config_reason(exc)}") from exc

    def _validate_components(self) -> None:
        """Instantiate every harmonizer and evaluator and run its ``validate_params`` hook, before any data
        is loaded: unknown parameter names and the plugins' own checks fail the run here, not mid-way."""
        for kind, classes, components in (
            ("harmonizers", self.harmonizer_classes, self.suite.harmonizers),
            ("evaluators", self.evaluator_classes, self.suite.evaluators),
        ):
            for component in components:
                table = f"{kind}.{component.label}"
                instance = self._instantiate(classes[component.label], component, table)
                if "device" in instance._param_names() and "device" not in component.params:
                    device = self._device_for(classes[component.label]) if kind == "harmonizers" else self.device
                    instance.set_params(device=device)
                try:
                    instance.validate_params()
                except (TypeError, ValueError, HarmbenchError) as exc:
                    raise ConfigError(f"{self._where(table)} {_config_reason(exc)}") from exc

    def _versions(self, kind: str, component: Component) -> list[str]:
        """Versions a cached result depends on: harmbench's and the plugin's distribution (where known)."""
        dist = next((e.distribution for e in self.registry.entries(kind) if e.name == component.plugin), "")
        return [harmbench.__version__, dist]

    def _dataset(self) -> Any:
        name = self.suite.dataset
        params = dict(self.suite.dataset_params)
        if name in self.registry.names("datasets"):
            cls = self.registry.dataset(name)
            if "seed" in cls._param_names() and "seed" not in params:
                params["seed"] = self.suite.seed
            dataset = self._instantiate(cls, Component(label=name, plugin=name, params=params), "dataset")
            try:
                dataset.validate_params()
            except (TypeError, ValueError, HarmbenchError) as exc:
                raise ConfigError(f"{self._where('dataset')} {_config_reason(exc)}") from exc
            return dataset
        if Path(name).exists():
            return LocalDataset(name)
        if "/" in name or name.endswith((".csv", ".tsv")):
            known = ", ".join(self.registry.names("datasets")) or "none"
            raise DataError(
                f"dataset {name!r}: no such file or folder ({Path(name).absolute()}); "
                f"give a BIDS-like folder, a CSV/TSV manifest, or a registered dataset ({known})"
            )
        self.registry.dataset(name)  # raises with the close matches
        raise AssertionError("unreachable")

    @property
    def dataset_label(self) -> str:
        return self.suite.dataset

    @functools.cached_property
    def context_id(self) -> str:
        """Everything that decides the split and the data; part of every cache key (the fingerprint may
        walk every file of a dataset on disk, so it is computed once)."""
        s = self.suite
        return _hash(
            "context",
            self.dataset.fingerprint(),
            s.target_site,
            list(s.unseen_sites) if s.unseen_sites is not None else None,
            s.n_test_subjects,
            s.seed,
        )

    def cohort(self) -> Cohort:
        if self._cohort is None:
            log.info("loading dataset %s", self.dataset_label)
            # read-only, so no plugin can change what the next one sees
            self._cohort = validate_cohort(self.dataset.load()).read_only()
        return self._cohort

    def resolve_split(self, *, write: bool = True) -> Split:
        path = self.out_dir / "cache" / "splits" / f"{self.context_id}.json"
        if path.exists():
            return Split.from_dict(json.loads(path.read_text()))
        cohort = self.cohort()
        target = self.suite.target_site or self.dataset.default_target_site(cohort)
        unseen = (
            list(self.suite.unseen_sites)
            if self.suite.unseen_sites is not None
            else [s for s in self.dataset.default_unseen_sites(cohort) if s != target]
        )
        split = make_split(cohort, target, unseen, n_test_subjects=self.suite.n_test_subjects, seed=self.suite.seed)
        if write:
            atomic_write_text(path, json.dumps(split.to_dict(), indent=2, sort_keys=True))
        return split

    def fit_seeds(self, component: Component) -> tuple[int, ...]:
        """The seeds ``component`` is fitted with: every fit seed if it is stochastic, else the suite's seed."""
        if self.harmonizer_classes[component.label].meta.stochastic:
            return self.suite.fit_seeds
        return (self.suite.seed,)

    def plan(self, split: Split) -> list[Cell]:
        context = (self.context_id, self.suite.name)
        cells = []
        for h in self.suite.harmonizers:
            h_cls = self.harmonizer_classes[h.label]
            h_versions = self._versions("harmonizers", h)
            for seed in self.fit_seeds(h):
                # a deterministic method's key and id are those of a single-seed run (its seed is in the context)
                extra = ("fit-seed", seed) if h_cls.meta.stochastic else ()
                tag = f"--seed{seed}" if h_cls.meta.stochastic else ""
                for scenario in split.scenarios():
                    for e in self.suite.evaluators:
                        e_cls = self.evaluator_classes[e.label]
                        key = _hash(
                            context,
                            scenario,
                            h.plugin,
                            h_cls.meta.version,
                            h_versions,
                            h.params,
                            e.plugin,
                            e_cls.version,
                            self._versions("evaluators", e),
                            e.params,
                            *extra,
                        )
                        cells.append(Cell(scenario, h, e, f"{scenario}--{h.label}{tag}--{e.label}--{key}", seed))
        if self.suite.oracle:
            reference = Component(label=REFERENCE, plugin=REFERENCE)
            for scenario in split.scenarios():
                for e in self.suite.evaluators:
                    e_cls = self.evaluator_classes[e.label]
                    if all(m.device_dependent for m in e_cls.metrics):
                        continue  # nothing runs in the reference row, so there is nothing to time
                    e_versions = self._versions("evaluators", e)
                    key = _hash(
                        context, scenario, "rescan-ceiling-or-oracle", e.plugin, e_cls.version, e_versions, e.params
                    )
                    cells.append(
                        Cell(scenario, reference, e, f"{scenario}--{REFERENCE}--{e.label}--{key}", self.suite.seed)
                    )
        return cells

    # -- records ----------------------------------------------------------------------------------
    def _base_record(self, cell: Cell, device: str) -> dict[str, Any]:
        e_cls = self.evaluator_classes[cell.evaluator.label]
        label = cell.harmonizer.label
        is_reference = label in (ORACLE, CEILING) and label not in self.harmonizer_classes
        h_meta = None if is_reference else self.harmonizer_classes[label].meta
        return {
            "suite": self.suite.name,
            "dataset": self.dataset_label,
            "scenario": cell.scenario,
            "harmonizer": cell.harmonizer.label,
            "role": ("ceiling" if label == CEILING else "oracle") if is_reference else "method",
            "params_hash": params_hash(cell.harmonizer.params),
            "evaluator": cell.evaluator.label,
            "transductive": bool(h_meta.transductive) if h_meta else False,
            "seed": cell.seed,
            "device": device,
            **self._fit_provenance.get(
                (cell.harmonizer.label, cell.seed), {"n_train": np.nan, "n_train_target": np.nan, "fit_info": ""}
            ),
            "harmbench_version": harmbench.__version__,
            "harmonizer_version": h_meta.version if h_meta else harmbench.__version__,
            "evaluator_version": e_cls.version,
        }

    def _metric_fields(self, e_cls: type, metric: str) -> dict[str, Any]:
        spec = next(m for m in e_cls.metrics if m.name == metric)
        return {
            "metric": metric,
            "higher_is_better": _direction(spec.higher_is_better),
            "ideal": np.nan if spec.ideal is None else float(spec.ideal),
            "unit": spec.unit,
            "main": bool(spec.main),
            "device_dependent": bool(spec.device_dependent),
            "axis": spec.axis or "",
        }

    def _status_cell(self, cell: Cell, status: str, reason: str, device: str, started: str) -> None:
        e_cls = self.evaluator_classes[cell.evaluator.label]
        base = self._base_record(cell, device)
        finished = _now()
        records = [
            {
                **base,
                **self._metric_fields(e_cls, spec.name),
                "subject": "*",
                "site": "*",
                "value": np.nan,
                "status": status,
                "error": reason,
                "started": started,
                "finished": finished,
            }
            for spec in e_cls.metrics
        ]
        self.store.write_cell(cell.cell_id, records)

    def _keep_traceback(self, name: str, exc: BaseException) -> None:
        path = self.out_dir / "errors" / f"{name}.txt"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        atomic_write_text(path, text)
        log.debug("traceback of %s:\n%s", name, text)

    # -- execution --------------------------------------------------------------------------------
    def _device_for(self, h_cls: type) -> str:
        kind = self.device.split(":")[0]
        return self.device if kind in h_cls.meta.devices else "cpu"

    def _model_dir(self, component: Component, split: Split, device: str, seed: int | None = None) -> Path:
        """Where ``component``'s fitted model is cached: keyed on everything the fit depends on.

        A ``meta.target_agnostic`` method's model does not depend on the target site, so its key names the
        training data (dataset, training assignment, seed) instead of the protocol context, which includes
        the target: one fit serves every target. A ``meta.stochastic`` method's key adds its fit seed.
        """
        h_cls = self.harmonizer_classes[component.label]
        if h_cls.meta.target_agnostic:
            data_key: Any = ("target-agnostic", self.dataset.fingerprint(), sorted(split.assignment), self.suite.seed)
        else:
            data_key = self.context_id
        extra = ("fit-seed", self.suite.seed if seed is None else seed) if h_cls.meta.stochastic else ()
        model_key = _hash(
            data_key,
            self.suite.name,
            component.plugin,
            h_cls.meta.version,
            self._versions("harmonizers", component),
            component.params,
            device,
            *extra,
        )
        return self.out_dir / "cache" / "models" / f"{component.label}-{model_key}"

    def _model_cached(self, model_dir: Path) -> bool:
        return (model_dir / "fit.json").exists() and (model_dir / "state.npz").exists()

    def _fit(
        self, component: Component, data: SplitData, device: str, seed: int
    ) -> tuple[Harmonizer, dict[str, float]]:
        h_cls = self.harmonizer_classes[component.label]
        model_dir = self._model_dir(component, data.split, device, seed)
        harmonizer: Harmonizer = self._instantiate(h_cls, component)
        if "device" in harmonizer._param_names():
            harmonizer.set_params(device=device)
        fit_record = model_dir / "fit.json"
        if self._model_cached(model_dir):
            try:
                recorded = json.loads(fit_record.read_text())
                stats = {"fit_s": float(recorded["fit_s"]), "peak_mem_mb": float(recorded["peak_mem_mb"])}
                harmonizer.load(model_dir)
                self._record_fit(component.label, seed, recorded)
                return harmonizer, stats
            except Exception as exc:  # any failure to load means "not cached": refit, and say why
                log.warning("cached model %s cannot be loaded (%s); refitting", model_dir, _reason(exc))
                log.debug("why the cached model %s failed to load", model_dir, exc_info=True)
                harmonizer = self._instantiate(h_cls, component)
                if "device" in harmonizer._param_names():
                    harmonizer.set_params(device=device)
        # a target-only method sees no source scan, so it may have every target-site training scan
        train = data.train if h_cls.meta.needs_source_sites else data.target_only_train()
        harmonizer.checkpoint_dir = model_dir / "checkpoint"
        shared_key = _hash(self.context_id, component.plugin, h_cls.meta.version, device)
        harmonizer.shared_dir = self.out_dir / "cache" / "shared" / f"{component.plugin}-{shared_key}"
        rng = np.random.default_rng(seed)
        with (
            time_limit(self.suite.cell_timeout_s, f"fit of {component.label}"),
            thread_budget(),
            measure(device) as fit,
        ):
            returned = harmonizer.fit(train, data.target_site, data.reference, rng=rng)
        if returned is not harmonizer:
            raise PluginError(f"harmonizer {component.label!r}: fit() must return self")
        harmonizer.save(model_dir)
        stats = {
            "fit_s": fit.seconds,
            "peak_mem_mb": fit.peak_mem_mb,
            "n_train": len(train),
            "n_train_target": len(train.by_site(data.target_site)),
            "fit_info": dict(harmonizer.fit_info()),
        }
        atomic_write_text(fit_record, json.dumps(stats, sort_keys=True))
        shutil.rmtree(harmonizer.checkpoint_dir, ignore_errors=True)  # the fit finished: nothing to resume
        self._record_fit(component.label, seed, stats)
        return harmonizer, {"fit_s": fit.seconds, "peak_mem_mb": fit.peak_mem_mb}

    def _record_fit(self, label: str, seed: int, recorded: dict[str, Any]) -> None:
        self._fit_provenance[(label, seed)] = {
            "n_train": float(recorded.get("n_train", np.nan)),
            "n_train_target": float(recorded.get("n_train_target", np.nan)),
            "fit_info": json.dumps(recorded.get("fit_info", {}), sort_keys=True),
        }

    def _transform_all(
        self,
        component: Component,
        harmonizer: Harmonizer,
        scans: Sequence[Scan],
        reference: Scan,
        scenario: str,
        device: str,
    ) -> tuple[list[Scan], list[float], dict[str, float]]:
        """Outputs, per-scan transform seconds, and the pass's timing summary on ``device`` (`harmbench.timing`:
        one thread budget, a warm-up call, at least ``MIN_TIMED`` timed calls, the ``adapt`` step's seconds)."""
        meta = self.harmonizer_classes[component.label].meta
        ref = reference if meta.uses_reference else None
        adapt_s = math.nan
        with thread_budget() as threads:
            if meta.transductive:
                with (
                    time_limit(self.suite.cell_timeout_s, f"adapt of {component.label} to {scenario} sites"),
                    measure(device) as adapt,
                ):
                    for site in dict.fromkeys(s.site for s in scans):
                        harmonizer.adapt([s for s in scans if s.site == site])
                adapt_s = adapt.seconds
            bar = progress_bar(scans, desc=f"{component.label} [{scenario}]", unit="scan")
            with time_limit(self.suite.cell_timeout_s, f"transform of {scenario} scans by {component.label}"):
                timed = time_each(lambda scan: harmonizer.transform(scan, ref), bar, device)
        # read-only, like the inputs: evaluators must not change what the next evaluator sees
        outputs = [
            check_output(component.label, scan, out).read_only() for scan, out in zip(scans, timed.outputs, strict=True)
        ]
        steady = np.asarray(timed.all_seconds, dtype=float)
        summary = {
            "transform_s_median": float(np.median(steady)) if steady.size else math.nan,
            "transform_s_iqr": float(np.subtract(*np.percentile(steady, [75, 25]))) if steady.size else math.nan,
            "n_timed": float(steady.size),
            "adapt_s": adapt_s,
            "threads": float(threads),
            "peak_mem_mb": timed.peak_mem_mb,
        }
        return outputs, timed.seconds, summary

    def _image_path(self, scenario: str, label: str, scan: Scan) -> Path:
        return self.out_dir / "images" / scenario / label / f"{scan.subject}_{scan.site}.nii.gz"

    def _save_images(self, scenario: str, label: str, outputs: Sequence[Scan]) -> None:
        for scan in outputs:
            with atomic_path(self._image_path(scenario, label, scan)) as tmp:
                nib.save(nib.Nifti1Image(scan.data.astype(np.float32), scan.affine), tmp)

    def _evaluator(self, component: Component, data: SplitData) -> Evaluator:
        if component.label not in self._evaluators:
            e_cls = self.evaluator_classes[component.label]
            evaluator = self._instantiate(e_cls, component)
            if "device" in evaluator._param_names() and "device" not in component.params:
                evaluator.set_params(device=self.device)
            cache = (
                self.out_dir
                / "cache"
                / "evaluators"
                / f"{component.label}-{_hash(self.context_id, e_cls.version, component.params)}"
            )
            # Evaluators get every target-site scan of every training subject (a target-site model such as a
            # downstream segmenter would otherwise see 1/(number of seen sites) of them) beside the unpaired
            # training cohort; never a test subject.
            target_only = data.target_only_train()
            known = {s.key for s in data.train}
            train = Cohort([*data.train, *(s for s in target_only if s.key not in known)], name=data.train.name)
            evaluator.prepare(train, data.target_site, cache)
            self._evaluators[component.label] = evaluator
        return self._evaluators[component.label]

    def _evaluate_cell(self, cell: Cell, cases: list[EvalCase], data: SplitData, device: str, started: str) -> None:
        e_cls = self.evaluator_classes[cell.evaluator.label]
        declared = {m.name for m in e_cls.metrics}
        try:
            with time_limit(self.suite.cell_timeout_s, f"prepare of evaluator {cell.evaluator.label}"):
                evaluator = self._evaluator(cell.evaluator, data)
            with time_limit(self.suite.cell_timeout_s, f"evaluator {cell.evaluator.label}"):
                records = check_records(cell.evaluator.label, evaluator.evaluate(cases), declared)
        except PLUGIN_FAILURES as exc:  # isolation: the reason goes into the results, the traceback under errors/
            self._keep_traceback(cell.cell_id, exc)
            self._status_cell(cell, "failed", _reason(exc), device, started)
            return
        base = self._base_record(cell, device)
        finished = _now()
        rows = [
            {
                **base,
                **self._metric_fields(e_cls, r["metric"]),
                "subject": str(r["subject"]),
                "site": str(r["site"]),
                "value": float(r["value"]),
                "status": "ok",
                "error": "",
                "started": started,
                "finished": finished,
            }
            for r in records
        ]
        self.store.write_cell(cell.cell_id, rows)

    def _fail_cells(
        self,
        cells: Sequence[Cell],
        name: str,
        stage: str,
        exc: BaseException,
        device: str,
        started: str,
        report: RunReport,
    ) -> None:
        """Mark ``cells`` failed at ``stage`` with the reason; keep the traceback as ``errors/<name>.txt``."""
        self._keep_traceback(name, exc)
        report.failures.append(f"{name}: {_reason(exc)}")
        for cell in cells:
            self._status_cell(cell, "failed", f"{stage}: {_reason(exc)}", device, started)
            report.cells_computed += 1

    def _run_harmonizer(
        self, component: Component, seed: int, cells: list[Cell], data_fn: Any, report: RunReport
    ) -> None:
        """Fit ``component`` with fit seed ``seed`` (if a cell is missing) and run its cells of that seed."""
        h_cls = self.harmonizer_classes[component.label]
        # images are kept for the first fit seed only (one image folder per harmonizer)
        save_images = self.save_images and seed == self.fit_seeds(component)[0]
        device = self._device_for(h_cls)
        started = _now()
        runnable = []
        for cell in cells:
            reason = not_applicable_reason(h_cls.meta, cell.scenario)
            if reason is None:
                runnable.append(cell)
            elif not self.store.has(cell.cell_id):
                self._status_cell(cell, "not_applicable", reason, device, started)
                report.cells_computed += 1
        scenarios_needing_images = set()
        if save_images:
            data = data_fn()
            for scenario in {c.scenario for c in runnable}:
                if any(
                    not self._image_path(scenario, component.label, s).exists() for s in data.scenario_scans(scenario)
                ):
                    scenarios_needing_images.add(scenario)
        missing = [c for c in runnable if not self.store.has(c.cell_id)]
        if not missing and not scenarios_needing_images:
            return
        data = data_fn()
        try:
            harmonizer, fit_stats = self._fit(component, data, device, seed)
        except PLUGIN_FAILURES as exc:  # isolation: the reason goes into the results, the traceback under errors/
            self._fail_cells(missing, f"fit--{component.label}--seed{seed}", "fit", exc, device, started, report)
            return
        for scenario in SCENARIOS:
            todo = [c for c in missing if c.scenario == scenario]
            if not todo and scenario not in scenarios_needing_images:
                continue
            scans = data.scenario_scans(scenario)
            try:
                outputs, times, summary = self._transform_all(
                    component, harmonizer, scans, data.reference, scenario, device
                )
            except PLUGIN_FAILURES as exc:  # isolation: the reason goes into the results, the traceback under errors/
                name = f"transform--{scenario}--{component.label}"
                self._fail_cells(todo, name, "transform", exc, device, started, report)
                continue
            if save_images:
                self._save_images(scenario, component.label, outputs)
            cases = [
                EvalCase(
                    input=scan,
                    output=out,
                    target=data.paired_target(scan),
                    target_pool=data.target_pool(),
                    rescan=data.rescan_of(scan),
                    timing={
                        **summary,
                        "fit_s": fit_stats["fit_s"],
                        "transform_s": t,
                        "peak_mem_mb": max(fit_stats["peak_mem_mb"], summary["peak_mem_mb"]),
                    },
                )
                for scan, out, t in zip(scans, outputs, times, strict=True)
            ]
            for cell in todo:
                self._evaluate_cell(cell, cases, data, device, started)
                report.cells_computed += 1

    def _run_reference(self, cells: list[Cell], data_fn: Any, report: RunReport) -> None:
        """The reference row: the scan-rescan ceiling where the scenario's test subjects have target-site
        rescans (the rescan is the output, scored against the target-site scan; subjects without one are
        left out), else the oracle (the target-site scan scored against itself), labelled as such."""
        missing = [c for c in cells if not self.store.has(c.cell_id)]
        if not missing:
            return
        data = data_fn()
        started = _now()
        for scenario in SCENARIOS:
            todo = [c for c in missing if c.scenario == scenario]
            if not todo:
                continue
            triples = [(scan, data.paired_target(scan), data.rescan_of(scan)) for scan in data.scenario_scans(scenario)]
            triples = [(scan, target, rescan) for scan, target, rescan in triples if target is not None]
            with_rescan = [t for t in triples if t[2] is not None]
            if with_rescan:
                label = CEILING
                cases = [
                    EvalCase(input=scan, output=rescan, target=target, target_pool=data.target_pool(), rescan=rescan)
                    for scan, target, rescan in with_rescan
                ]
            else:
                label = ORACLE
                cases = [
                    EvalCase(input=scan, output=target, target=target, target_pool=data.target_pool())
                    for scan, target, _ in triples
                ]
            for planned in todo:
                cell = dataclasses.replace(planned, harmonizer=Component(label=label, plugin=label))
                if cases:
                    self._evaluate_cell(cell, cases, data, "cpu", started)
                else:
                    reason = "no test subject of this scenario was scanned at the target site"
                    self._status_cell(cell, "not_applicable", reason, "cpu", started)
                report.cells_computed += 1

    def _forget_failed(self, cells: Sequence[Cell]) -> None:
        for cell in cells:
            if self.store.has(cell.cell_id):
                frame = self.store.read_cells([cell.cell_id])
                if (frame["status"] == "failed").any():
                    self.store.cell_path(cell.cell_id).unlink()

    def dry_run(self) -> Plan:
        """What `run` would do, without fitting, evaluating or writing anything.

        The split comes from the cache when a run wrote it; otherwise the dataset is loaded to make it.
        """
        split = self.resolve_split(write=False)
        cells = self.plan(split)
        failed: set[str] = set()
        if self.retry_failed:
            done = [c.cell_id for c in cells if self.store.has(c.cell_id)]
            frame = self.store.read_cells(done)
            failed = set(frame.loc[frame["status"] == "failed", "cell_id"])
        states = [(c, "cached" if self.store.has(c.cell_id) and c.cell_id not in failed else "compute") for c in cells]
        models = {}
        for component in self.suite.harmonizers:
            h_cls = self.harmonizer_classes[component.label]
            for seed in self.fit_seeds(component):
                name = f"{component.label} (seed {seed})" if h_cls.meta.stochastic else component.label
                todo = [
                    c
                    for c, what in states
                    if c.harmonizer.label == component.label
                    and c.seed == seed
                    and what == "compute"
                    and not_applicable_reason(h_cls.meta, c.scenario) is None
                ]
                if not todo and not self.save_images:
                    models[name] = "none"
                    continue
                cached = self._model_cached(self._model_dir(component, split, self._device_for(h_cls), seed))
                models[name] = "reuse" if cached else "fit"
        return Plan(split, states, models)

    def run(self) -> RunReport:
        """Run every missing cell, then write results and leaderboards."""
        with progress_enabled(None if self.progress else False):
            return self._run()

    def _run(self) -> RunReport:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        split = self.resolve_split()
        cells = self.plan(split)
        if self.retry_failed:
            self._forget_failed(cells)
        report = RunReport(self.out_dir, self.out_dir / "results.parquet", {}, cells_total=len(cells), split=split)
        split_data: list[SplitData] = []

        def data() -> SplitData:
            if not split_data:
                split_data.append(SplitData(split, self.cohort()))
            return split_data[0]

        fits = [(c, seed) for c in self.suite.harmonizers for seed in self.fit_seeds(c)]
        for component, seed in progress_bar(fits, desc="fits", unit="fit"):
            todo = [cell for cell in cells if cell.harmonizer.label == component.label and cell.seed == seed]
            self._run_harmonizer(component, seed, todo, data, report)
        if self.suite.oracle:
            self._run_reference([c for c in cells if c.harmonizer.label == REFERENCE], data, report)
        results = self.store.read_cells([c.cell_id for c in cells])
        results = to_frame(results.to_dict("records"))
        report.cells_failed = int(results.loc[results["status"] == "failed", "cell_id"].nunique())
        report.results_path = self.store.write_results(results)
        atomic_write_text(self.out_dir / "suite.toml", self.suite.to_toml())
        atomic_write_text(self.out_dir / "split.json", json.dumps(split.to_dict(), indent=2, sort_keys=True) + "\n")
        # the leaderboards are rendered from the scores file as written, so the committed scores.csv
        # regenerates the committed leaderboards byte for byte (docs/reproducibility.md)
        scores_path = self.out_dir / SCORES_FILE
        atomic_write_text(scores_path, scores_csv(results))
        report.leaderboards = write_leaderboards(
            read_scores(scores_path),
            self.out_dir,
            seed=self.suite.seed,
            title=f"harmbench leaderboard: {self.suite.name}",
            baselines=self.suite.baselines,
        )
        return report


def run_suite(suite: Suite, out_dir: str | Path, **kwargs: Any) -> RunReport:
    """Convenience wrapper: ``Runner(suite, out_dir, **kwargs).run()``."""
    return Runner(suite, out_dir, **kwargs).run()
