"""Third-party submissions to the public leaderboard: the logic behind ``.ci/submissions``.

A submission is one TOML file in ``submissions/`` (see ``submissions/README.md`` and docs/submitting.md)::

    [submission]
    requirement = "harmbench-my-method==0.1.0"   # a pip requirement pinned with ==
    contact = "Ada Lovelace <ada@example.org>"
    citation = "Lovelace A. et al., A harmonization method, J. Example 1:1 (2026)"

    [harmonizers.my-method]    # one leaderboard row; the table name is the row's label
    plugin = "my-method"       # the registered harmonizer name (default: the label)
    strength = 0.5             # other keys are constructor parameters

For each submission, `process_submissions` makes a virtual environment of its own that sees the
environment harmbench runs in (``--system-site-packages`` plus that environment's site folders, so
harmbench, torch and the other heavy dependencies are not downloaded again), installs the pinned
requirement there, runs ``harmbench check`` on every submitted row with its parameters, and runs the
public suite with the submitted rows added. The public suite alone then runs in harmbench's own
environment (every cell comes from the shared cache), and the leaderboards are written from its results
plus each accepted submission's rows. A submission that fails any step is left out of the leaderboard and
reported, with the step and the reason, in ``submissions.md`` next to the leaderboard, on stdout, and in
the exit status (1).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w

from harmbench.errors import ConfigError, HarmbenchError
from harmbench.leaderboard import write_leaderboards
from harmbench.results import SCORES_FILE, atomic_write_text, read_results, read_scores, scores_csv
from harmbench.runner import Runner
from harmbench.suite import Component, Suite, load_suite

log = logging.getLogger(__name__)

#: A submission's file stem: also the name of its virtual environment.
SUBMISSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: ``name==version`` (extras allowed), the only requirement form accepted: a row must be reproducible.
PINNED = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._ -]+\])?\s*==\s*[A-Za-z0-9][A-Za-z0-9.+!_-]*\s*$")

SUBMISSION_KEYS = {"requirement", "contact", "citation", "url"}
REQUIRED_KEYS = ("requirement", "contact", "citation")

EXIT_ALL_ACCEPTED = 0
EXIT_SOME_REJECTED = 1


@dataclasses.dataclass(frozen=True)
class Submission:
    """One parsed submission file."""

    name: str
    path: Path
    requirement: str
    contact: str
    citation: str
    harmonizers: tuple[Component, ...]
    url: str = ""


@dataclasses.dataclass
class Outcome:
    """What happened to one submission: ``accepted`` or the step it failed at and why."""

    name: str
    path: Path
    submission: Submission | None = None
    accepted: bool = False
    step: str = ""
    reason: str = ""
    log: str = ""

    def fail(self, step: str, reason: str, output: str = "") -> Outcome:
        self.accepted, self.step, self.reason = False, step, " ".join(reason.split())
        self.log += output
        return self


def parse_submission(path: Path) -> Submission:
    """Read and validate one submission file; a `ConfigError` naming the file and key otherwise."""
    where = str(path)
    name = path.stem
    if not SUBMISSION_NAME.match(name):
        raise ConfigError(f"{where}: the file name must be letters, digits, '.', '_' or '-' before .toml")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML ({exc})") from exc
    unknown = sorted(set(doc) - {"submission", "harmonizers"})
    if unknown:
        hint = (
            " (evaluators join the suite through a pull request, not a submission)" if "evaluators" in unknown else ""
        )
        raise ConfigError(f"{where}: unknown table [{unknown[0]}]{hint}; expected [submission] and [harmonizers.*]")
    head = doc.get("submission")
    if not isinstance(head, dict):
        raise ConfigError(f"{where}: missing the [submission] table")
    extra = sorted(set(head) - SUBMISSION_KEYS)
    if extra:
        raise ConfigError(
            f"{where}: unknown [submission] key {extra[0]!r} (known: {', '.join(sorted(SUBMISSION_KEYS))})"
        )
    for key in (*REQUIRED_KEYS, "url"):
        value = head.get(key, "")
        if not isinstance(value, str) or (key in REQUIRED_KEYS and not value.strip()):
            raise ConfigError(f"{where}: [submission] {key} must be a non-empty string")
    if not PINNED.match(head["requirement"]):
        raise ConfigError(
            f"{where}: [submission] requirement {head['requirement']!r} must pin one version, e.g. 'my-package==1.2.0'"
        )
    tables = doc.get("harmonizers")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{where}: needs at least one [harmonizers.<row label>] table")
    rows = []
    for label, params in tables.items():
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: [harmonizers] {label!r} must be a table ([harmonizers.{label}])")
        params = dict(params)
        plugin = params.pop("plugin", label)
        if not isinstance(plugin, str) or not plugin:
            raise ConfigError(f"{where}: [harmonizers.{label}] plugin must be a non-empty string")
        for key, value in params.items():
            _toml_value(value, f"{where}: [harmonizers.{label}] {key}")
        rows.append(Component(label=label, plugin=plugin, params=params))
    return Submission(
        name=name,
        path=path,
        requirement=head["requirement"].strip(),
        contact=head["contact"].strip(),
        citation=head["citation"].strip(),
        harmonizers=tuple(rows),
        url=head.get("url", "").strip(),
    )


def _toml_value(value: Any, where: str) -> str:
    """``value`` as an inline TOML value, as ``harmbench check --param KEY=VALUE`` reads it."""
    text = tomli_w.dumps({"v": value})
    if not text.startswith("v = ") or text.count("\n") != 1:
        raise ConfigError(f"{where}: parameters must be numbers, strings, booleans or arrays of them")
    return text[len("v = ") :].strip()


# -- environments ---------------------------------------------------------------------


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _venv_site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def make_venv(venv: Path) -> Path:
    """A fresh virtual environment layered on the one running harmbench; returns its python.

    ``--system-site-packages`` alone only reaches the *base* interpreter's packages: when harmbench itself
    runs from a virtual environment (a developer checkout, this repository's tests) its packages would be
    missing. A ``.pth`` file therefore adds the running environment's site folders after the new
    environment's own, so the submission's install shadows nothing it did not itself bring in, and pip
    (found through those folders) installs into the new environment.
    """
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
        text=True,
    )
    python = _venv_python(venv)
    if sys.prefix != sys.base_prefix:
        parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
        lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
        (_venv_site_packages(python) / "_harmbench_parent_env.pth").write_text(lines)
    return python


def _tail(text: str, lines: int = 1) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _run(cmd: Sequence[str], timeout: float | None, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    log.info("$ %s", " ".join(cmd))
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, f"{out}\n(timed out after {timeout:g} s)\n"
    return proc.returncode, proc.stdout + proc.stderr


# -- the pipeline -------------------------------------------------------------------------


def _submission_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HARMBENCH_DISABLE_PLUGINS", None)  # a submission is judged with every plugin it installs
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _rows(results: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    return results[results["harmonizer"].isin(list(labels))]


def process_submission(
    sub: Submission,
    outcome: Outcome,
    suite: Suite,
    work: Path,
    pip_args: Sequence[str],
    timeout: float | None,
) -> pd.DataFrame | None:
    """Install, check and run one submission; its result rows, or None with ``outcome`` saying why."""
    env = _submission_env()
    try:
        python = make_venv(work / "venvs" / sub.name)
    except subprocess.CalledProcessError as exc:
        outcome.fail("venv", f"could not create a virtual environment: {_tail(exc.stderr or '')}")
        return None
    rc, out = _run([str(python), "-m", "pip", "install", "--quiet", *pip_args, sub.requirement], timeout, env)
    if rc != 0:
        outcome.fail("install", f"pip install {sub.requirement} failed: {_tail(out)}", out)
        return None
    for row in sub.harmonizers:
        params = [f"--param={k}={_toml_value(v, k)}" for k, v in row.params.items()]
        cmd = [str(python), "-m", "harmbench.cli", "check", row.plugin, "--kind", "harmonizers", *params]
        rc, out = _run(cmd, timeout, env)
        outcome.log += out
        if rc != 0:
            failed = [line.strip() for line in out.splitlines() if " FAIL " in line]
            why = "; ".join(failed[:3]) if failed else _tail(out)
            outcome.fail("check", f"harmbench check {row.plugin} (row {row.label!r}) failed: {why}")
            return None
    run_dir = work / "run"
    suite_file = work / "suites" / f"{sub.name}.toml"
    suite_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(suite_file, suite.replace(harmonizers=suite.harmonizers + sub.harmonizers).to_toml())
    rc, out = _run(
        [str(python), "-m", "harmbench.cli", "-q", "run", str(suite_file), "--out", str(run_dir)], timeout, env
    )
    outcome.log += out
    results_path = run_dir / "results.parquet"
    if rc not in (0, 1) or not results_path.exists():  # 1: some cell failed; looked at row by row below
        outcome.fail("run", f"harmbench run exited {rc}: {_tail(out)}")
        return None
    rows = _rows(read_results(run_dir), [c.label for c in sub.harmonizers])
    failed = rows[rows["status"] == "failed"]
    if len(failed):
        first = failed.iloc[0]
        outcome.fail(
            "run",
            f"{failed['cell_id'].nunique()} cell(s) failed in the suite, first: {first['harmonizer']} × "
            f"{first['evaluator']} ({first['scenario']}): {first['error']}",
        )
        return None
    if rows.empty:
        outcome.fail("run", "the suite produced no result rows for the submitted harmonizers")
        return None
    outcome.accepted = True
    return rows


@dataclasses.dataclass
class Report:
    outcomes: list[Outcome]
    leaderboards: dict[str, Path]
    report_path: Path

    @property
    def exit_code(self) -> int:
        return EXIT_ALL_ACCEPTED if all(o.accepted for o in self.outcomes) else EXIT_SOME_REJECTED


def render_report(outcomes: Sequence[Outcome], suite: Suite) -> str:
    """``submissions.md``: every submission, accepted or not, with its rows or the step and reason it failed."""
    lines = [f"# Submissions to the {suite.name} leaderboard", ""]
    if not outcomes:
        lines += ["No submission files.", ""]
    accepted = [o for o in outcomes if o.accepted and o.submission]
    rejected = [o for o in outcomes if not o.accepted]
    lines += ["## On the leaderboard", ""]
    if accepted:
        lines += ["| rows | package | citation | contact |", "|---|---|---|---|"]
        for o in accepted:
            s = o.submission
            assert s is not None
            rows = ", ".join(c.label for c in s.harmonizers)
            package = f"[{s.requirement}]({s.url})" if s.url else s.requirement
            lines.append(f"| {rows} | {package} | {_md(s.citation)} | {_md(s.contact)} |")
    else:
        lines.append("None.")
    lines += ["", "## Left out", ""]
    if rejected:
        lines += ["| submission | failed at | reason |", "|---|---|---|"]
        for o in rejected:
            lines.append(f"| {o.path.name} | {o.step} | {_md(o.reason)} |")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def process_submissions(
    submissions_dir: Path,
    suite: Suite,
    leaderboard_dir: Path,
    work: Path,
    *,
    pip_args: Sequence[str] = (),
    timeout: float | None = None,
) -> Report:
    """Every ``submissions_dir/*.toml``, then the leaderboards with the accepted rows (see the module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    extra: list[pd.DataFrame] = []
    reference = {label: "the reference row" for label in ("oracle", "rescan-ceiling", "reference")}
    taken = {c.label: f"the {suite.name} suite" for c in suite.harmonizers} | reference
    accepted_rows: list[Component] = []
    for path in sorted(Path(submissions_dir).glob("*.toml")):
        outcome = Outcome(path.stem, path)
        outcomes.append(outcome)
        try:
            sub = parse_submission(path)
        except ConfigError as exc:
            outcome.fail("parse", str(exc))
            log.warning("%s: left out: %s", path.name, outcome.reason)
            continue
        outcome.submission = sub
        clash = next((c.label for c in sub.harmonizers if c.label in taken), None)
        if clash is not None:
            outcome.fail("parse", f"row label {clash!r} is already used by {taken[clash]}; rename the table")
            log.warning("%s: left out: %s", path.name, outcome.reason)
            continue
        log.info("%s: installing %s", path.name, sub.requirement)
        rows = process_submission(sub, outcome, suite, work, pip_args, timeout)
        if rows is None:
            log.warning("%s: left out at %s: %s", path.name, outcome.step, outcome.reason)
            continue
        taken |= {c.label: f"submission {path.name}" for c in sub.harmonizers}
        accepted_rows.extend(sub.harmonizers)
        extra.append(rows)
    # The public suite in harmbench's own environment: its cells are on disk from the submissions' runs.
    # Its results hold only the suite's own rows (and the oracle), so the submitted rows are simply added.
    base = Runner(suite, work / "run", progress=False).run()
    results = pd.concat([read_results(work / "run"), *extra], ignore_index=True)
    leaderboard_dir.mkdir(parents=True, exist_ok=True)
    # rendered from the scores file as written, like a run's (docs/reproducibility.md)
    atomic_write_text(leaderboard_dir / SCORES_FILE, scores_csv(results))
    boards = write_leaderboards(
        read_scores(leaderboard_dir / SCORES_FILE),
        leaderboard_dir,
        seed=suite.seed,
        title=f"harmbench leaderboard: {suite.name}",
        baselines=suite.baselines,
    )
    combined = suite.replace(harmonizers=suite.harmonizers + tuple(accepted_rows))
    atomic_write_text(leaderboard_dir / "suite.toml", combined.to_toml())
    if base.split is not None:
        shutil.copyfile(work / "run" / "split.json", leaderboard_dir / "split.json")
    report_path = leaderboard_dir / "submissions.md"
    atomic_write_text(report_path, render_report(outcomes, suite))
    return Report(outcomes, boards, report_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=".ci/submissions",
        description="Install, check and run every submission, then regenerate the leaderboards with the accepted "
        "rows. Exits 1 when any submission was left out (each is named in SUITE's submissions.md).",
    )
    parser.add_argument("--submissions", type=Path, default=Path("submissions"), help="default: submissions/")
    parser.add_argument("--suite", default="default", help="suite file or built-in name (default: default)")
    parser.add_argument(
        "--leaderboards", type=Path, help="folder to write the leaderboards into (default: leaderboards/<suite name>)"
    )
    parser.add_argument("--work", type=Path, default=Path(".ci-work"), help="venvs and cells (default: .ci-work)")
    parser.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for pip install, e.g. --pip-arg=--find-links=wheels (repeatable)",
    )
    parser.add_argument("--timeout", type=float, help="seconds each install, check or run may take")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        suite = load_suite(args.suite)
        leaderboards = args.leaderboards or Path("leaderboards") / suite.name
        report = process_submissions(
            args.submissions, suite, leaderboards, args.work, pip_args=args.pip_arg, timeout=args.timeout
        )
    except HarmbenchError as exc:
        sys.stderr.write(f"submissions: error: {exc}\n")
        return 2
    for o in report.outcomes:
        status = "accepted" if o.accepted else f"LEFT OUT at {o.step}: {o.reason}"
        sys.stdout.write(f"{o.path.name}: {status}\n")
    sys.stdout.write(f"leaderboard: {report.leaderboards['md']}\nreport:      {report.report_path}\n")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
