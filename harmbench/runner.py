"""Executes a suite: fits each harmonizer once, harmonizes every scenario's test
scans, evaluates each (scenario, harmonizer, evaluator) cell, writes results.

Guarantees (DESIGN §4):
- a cell's rows are written atomically as soon as it finishes; a killed run
  resumes from the cells on disk, and an unchanged re-run computes nothing and
  does not even load the data;
- a plugin that raises, hangs past ``cell_timeout_s``, or breaks the output
  contract fails only its own cells, with the reason in the results (and the
  traceback under ``<out>/errors/``);
- fitted models are cached as arrays under ``<out>/cache/models/``;
- capabilities come from ``meta`` only: a harmonizer that cannot handle a
  scenario gets ``not_applicable`` cells;
- fit and transform are timed and their peak memory recorded (CUDA events and
  CUDA memory statistics on a GPU, see `harmbench.timing`) for the throughput
  evaluator;
- an oracle row scores each test subject's real target-site scan as if it were
  the output: the ceiling every metric can reach on this data (for an
  evaluator built on a model of the target site, that model's own score).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import shutil
import signal
import threading
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
from harmbench.errors import ConfigError, HarmbenchError, PluginError
from harmbench.leaderboard import write_leaderboards
from harmbench.plugins import Registry
from harmbench.progress import progress as progress_bar
from harmbench.progress import progress_enabled
from harmbench.protocol import SCENARIOS, Split, SplitData, make_split
from harmbench.results import ResultStore, atomic_write_text, to_frame
from harmbench.suite import Component, Suite
from harmbench.timing import measure, resolve_run_device, thread_budget, time_each

log = logging.getLogger(__name__)


class CellTimeout(HarmbenchError):
    """A plugin ran past the suite's ``cell_timeout_s``."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise `CellTimeout` in the main thread after ``seconds`` (no limit when None or off the main thread)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CellTimeout(f"{what} ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:500]


#: Label of the reference row whose output is the subject's real target-site scan.
ORACLE = "oracle"


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
        for c in suite.harmonizers:
            self._instantiate(self.harmonizer_classes[c.label], c)
        self.dataset = self._dataset()
        self._cohort: Cohort | None = None
        self._evaluators: dict[str, Evaluator] = {}
        #: harmonizer label → what its fit recorded (training-set sizes, ``fit_info``), for the result rows
        self._fit_provenance: dict[str, dict[str, Any]] = {}
        self.device = resolve_run_device(suite.device)
        if suite.oracle and ORACLE in self.harmonizer_classes:
            raise ConfigError(f"the harmonizer label {ORACLE!r} is reserved for the oracle row; rename it in the suite")

    # -- set-up -----------------------------------------------------------------------------------
    def _instantiate(self, cls: type, component: Component) -> Any:
        try:
            return cls(**component.params)
        except TypeError as exc:
            raise ConfigError(f"{component.label}: invalid parameters {component.params} ({exc})") from exc

    def _dataset(self) -> Any:
        name = self.suite.dataset
        params = dict(self.suite.dataset_params)
        if name in self.registry.names("datasets"):
            cls = self.registry.dataset(name)
            if "seed" in cls._param_names() and "seed" not in params:
                params["seed"] = self.suite.seed
            return self._instantiate(cls, Component(label=name, plugin=name, params=params))
        if Path(name).exists() or "/" in name or name.endswith((".csv", ".tsv")):
            return LocalDataset(name)
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
            self._cohort = validate_cohort(self.dataset.load())
        return self._cohort

    def resolve_split(self) -> Split:
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
        atomic_write_text(path, json.dumps(split.to_dict(), indent=2, sort_keys=True))
        return split

    def plan(self, split: Split) -> list[Cell]:
        context = self.context_id
        cells = []
        for h in self.suite.harmonizers:
            h_cls = self.harmonizer_classes[h.label]
            for scenario in split.scenarios():
                for e in self.suite.evaluators:
                    e_cls = self.evaluator_classes[e.label]
                    key = _hash(
                        context, scenario, h.plugin, h_cls.meta.version, h.params, e.plugin, e_cls.version, e.params
                    )
                    cells.append(Cell(scenario, h, e, f"{scenario}--{h.label}--{e.label}--{key}"))
        if self.suite.oracle:
            oracle = Component(label=ORACLE, plugin=ORACLE)
            for scenario in split.scenarios():
                for e in self.suite.evaluators:
                    e_cls = self.evaluator_classes[e.label]
                    if all(m.device_dependent for m in e_cls.metrics):
                        continue  # nothing runs in the oracle row, so there is nothing to time
                    key = _hash(context, scenario, ORACLE, e.plugin, e_cls.version, e.params)
                    cells.append(Cell(scenario, oracle, e, f"{scenario}--{ORACLE}--{e.label}--{key}"))
        return cells

    # -- records ----------------------------------------------------------------------------------
    def _base_record(self, cell: Cell, device: str) -> dict[str, Any]:
        e_cls = self.evaluator_classes[cell.evaluator.label]
        is_oracle = cell.harmonizer.label == ORACLE and cell.harmonizer.label not in self.harmonizer_classes
        h_meta = None if is_oracle else self.harmonizer_classes[cell.harmonizer.label].meta
        return {
            "suite": self.suite.name,
            "dataset": self.dataset_label,
            "scenario": cell.scenario,
            "harmonizer": cell.harmonizer.label,
            "role": "oracle" if is_oracle else "method",
            "params_hash": params_hash(cell.harmonizer.params),
            "evaluator": cell.evaluator.label,
            "transductive": bool(h_meta.transductive) if h_meta else False,
            "seed": self.suite.seed,
            "device": device,
            **self._fit_provenance.get(
                cell.harmonizer.label, {"n_train": np.nan, "n_train_target": np.nan, "fit_info": ""}
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

    def _fit(self, component: Component, data: SplitData, device: str) -> tuple[Harmonizer, dict[str, float]]:
        h_cls = self.harmonizer_classes[component.label]
        model_key = _hash(self.context_id, component.plugin, h_cls.meta.version, component.params, device)
        model_dir = self.out_dir / "cache" / "models" / f"{component.label}-{model_key}"
        harmonizer: Harmonizer = self._instantiate(h_cls, component)
        if "device" in harmonizer._param_names():
            harmonizer.set_params(device=device)
        fit_record = model_dir / "fit.json"
        if fit_record.exists() and (model_dir / "state.npz").exists():
            try:
                harmonizer.load(model_dir)
                recorded = json.loads(fit_record.read_text())
                self._record_fit(component.label, recorded)
                return harmonizer, {"fit_s": float(recorded["fit_s"]), "peak_mem_mb": float(recorded["peak_mem_mb"])}
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cached model %s is unreadable (%s); refitting", model_dir, exc)
        # a target-only method sees no source scan, so it may have every target-site training scan
        train = data.train if h_cls.meta.needs_source_sites else data.target_only_train()
        harmonizer.checkpoint_dir = model_dir / "checkpoint"
        rng = np.random.default_rng(self.suite.seed)
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
        self._record_fit(component.label, stats)
        return harmonizer, {"fit_s": fit.seconds, "peak_mem_mb": fit.peak_mem_mb}

    def _record_fit(self, label: str, recorded: dict[str, Any]) -> None:
        self._fit_provenance[label] = {
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
        outputs = [check_output(component.label, scan, out) for scan, out in zip(scans, timed.outputs, strict=True)]
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
            path = self._image_path(scenario, label, scan)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.nii.gz")
            nib.save(nib.Nifti1Image(scan.data.astype(np.float32), scan.affine), tmp)
            tmp.replace(path)

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
            evaluator = self._evaluator(cell.evaluator, data)
            with time_limit(self.suite.cell_timeout_s, f"evaluator {cell.evaluator.label}"):
                records = evaluator.evaluate(cases)
            for r in records:
                if r.get("metric") not in declared:
                    raise PluginError(
                        f"evaluator {cell.evaluator.label!r} returned undeclared metric {r.get('metric')!r}"
                    )
        except Exception as exc:  # isolation: the reason goes into the results, the traceback under errors/
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
        self, cells: Sequence[Cell], name: str, stage: str, exc: Exception, device: str, started: str, report: RunReport
    ) -> None:
        """Mark ``cells`` failed at ``stage`` with the reason; keep the traceback as ``errors/<name>.txt``."""
        self._keep_traceback(name, exc)
        report.failures.append(f"{name}: {_reason(exc)}")
        for cell in cells:
            self._status_cell(cell, "failed", f"{stage}: {_reason(exc)}", device, started)
            report.cells_computed += 1

    def _run_harmonizer(self, component: Component, cells: list[Cell], data_fn: Any, report: RunReport) -> None:
        h_cls = self.harmonizer_classes[component.label]
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
        if self.save_images:
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
            harmonizer, fit_stats = self._fit(component, data, device)
        except Exception as exc:  # isolation: the reason goes into the results, the traceback under errors/
            self._fail_cells(missing, f"fit--{component.label}", "fit", exc, device, started, report)
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
            except Exception as exc:  # isolation: the reason goes into the results, the traceback under errors/
                name = f"transform--{scenario}--{component.label}"
                self._fail_cells(todo, name, "transform", exc, device, started, report)
                continue
            if self.save_images:
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

    def _run_oracle(self, cells: list[Cell], data_fn: Any, report: RunReport) -> None:
        """Score each test subject's real target-site scan as the output (scans without one are skipped)."""
        missing = [c for c in cells if not self.store.has(c.cell_id)]
        if not missing:
            return
        data = data_fn()
        started = _now()
        for scenario in SCENARIOS:
            todo = [c for c in missing if c.scenario == scenario]
            if not todo:
                continue
            pairs = [(scan, data.paired_target(scan)) for scan in data.scenario_scans(scenario)]
            cases = [
                EvalCase(input=scan, output=target, target=target, target_pool=data.target_pool())
                for scan, target in pairs
                if target is not None
            ]
            for cell in todo:
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

        by_harmonizer = {
            c.label: [cell for cell in cells if cell.harmonizer.label == c.label] for c in self.suite.harmonizers
        }
        for component in progress_bar(self.suite.harmonizers, desc="harmonizers", unit="method"):
            self._run_harmonizer(component, by_harmonizer[component.label], data, report)
        if self.suite.oracle:
            self._run_oracle([c for c in cells if c.harmonizer.label == ORACLE], data, report)
        results = self.store.read_cells([c.cell_id for c in cells])
        results = to_frame(results.to_dict("records"))
        report.cells_failed = int(results.loc[results["status"] == "failed", "cell_id"].nunique())
        report.results_path = self.store.write_results(results)
        atomic_write_text(self.out_dir / "suite.toml", self.suite.to_toml())
        atomic_write_text(self.out_dir / "split.json", json.dumps(split.to_dict(), indent=2, sort_keys=True) + "\n")
        report.leaderboards = write_leaderboards(
            results, self.out_dir, seed=self.suite.seed, title=f"harmbench leaderboard: {self.suite.name}"
        )
        return report


def run_suite(suite: Suite, out_dir: str | Path, **kwargs: Any) -> RunReport:
    """Convenience wrapper: ``Runner(suite, out_dir, **kwargs).run()``."""
    return Runner(suite, out_dir, **kwargs).run()
