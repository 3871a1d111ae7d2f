"""The ``harmbench`` command line.

Errors a user can act on print as one line ``harmbench: error: …`` and exit 2;
``--debug`` shows the traceback instead. A run in which any cell failed exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import harmbench
from harmbench.errors import DataError, HarmbenchError

log = logging.getLogger("harmbench")

EXIT_ERROR = 2
EXIT_FAILED_CELLS = 1


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmbench",
        description="Benchmark MRI harmonization methods under one protocol, on seen and unseen sites.",
    )
    parser.add_argument("--version", action="version", version=f"harmbench {harmbench.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a suite and write results and leaderboards",
        description="Run a suite (default: the built-in suite on the simulated cohort). Cells already on disk "
        "in --out are reused, so an interrupted run resumes where it stopped.",
    )
    run.add_argument(
        "suite", nargs="?", help="suite TOML file, or a built-in suite's name: default, throughput (default: default)"
    )
    run.add_argument("--dataset", help="registered dataset name, or a BIDS-like folder / CSV manifest path")
    run.add_argument(
        "--profile", choices=["quick", "default", "standard", "full"], help="simulator profile (simulated data)"
    )
    run.add_argument("--target-site", help="site every scan is harmonized to (default: the dataset's)")
    run.add_argument("--unseen-sites", type=_csv, help="comma-separated sites held out of training")
    run.add_argument("--harmonizers", help="comma-separated harmonizer names (replaces the suite's list)")
    run.add_argument("--evaluators", help="comma-separated evaluator names (replaces the suite's list)")
    run.add_argument("--device", help="torch device for methods that support it, e.g. cpu or cuda (default: cpu)")
    run.add_argument("-o", "--out", type=Path, help="output folder (default: leaderboards/<suite name>)")
    run.add_argument("--seed", type=int, help="seed for the split, simulator and training (default: the suite's)")
    run.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="fit stochastic methods N times, with seeds SEED..SEED+N-1 (replaces the suite's seeds)",
    )
    run.add_argument("--save-images", action="store_true", help="write harmonized volumes under OUT/images/")
    run.add_argument("--retry-failed", action="store_true", help="recompute cells that failed in an earlier run")
    run.add_argument("--cell-timeout", type=float, help="seconds after which a plugin's fit/transform/evaluate fails")
    run.add_argument(
        "--no-oracle", action="store_true", help="leave out the oracle row (the real target-site scan as output)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (cells cached or to compute, models to fit or reuse) and exit without computing",
    )

    lst = sub.add_parser("list", help="list registered harmonizers, evaluators or datasets")
    lst.add_argument("kind", nargs="?", choices=["harmonizers", "evaluators", "datasets"], help="what to list")

    sub.add_parser("plugins", help="list loaded plugins with their distribution and version, and broken ones")

    check = sub.add_parser(
        "check",
        help="run the conformance checks on an installed harmonizer or evaluator",
        description="Check an installed harmonizer or evaluator against the plugin contract on a small simulated "
        "cohort; prints one line per check with the reason, and exits 1 when any check fails.",
    )
    check.add_argument("name", help="registered harmonizer or evaluator name (see `harmbench list`)")
    check.add_argument("--kind", choices=["harmonizers", "evaluators"], help="when the name is both")
    check.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="constructor parameter (TOML value)"
    )
    check.add_argument("--seed", type=int, default=0, help="seed for the cohort, split and fits (default: 0)")

    new = sub.add_parser(
        "new-plugin",
        help="write a ready-to-edit plugin package (pyproject, module, tests)",
        description="Write a new harmonizer or evaluator package, registered through the harmbench entry point, "
        "whose tests run the conformance kit. See docs/submitting.md.",
    )
    new.add_argument("name", help="plugin name, lower case with dashes, e.g. my-method")
    new.add_argument("--kind", choices=["harmonizer", "evaluator"], default="harmonizer", help="default: harmonizer")
    new.add_argument("--out", type=Path, default=Path("."), help="folder to create the package in (default: .)")

    board = sub.add_parser("leaderboard", help="re-render leaderboards from stored results (no rerun)")
    board.add_argument("dir", type=Path, help="a run's output folder (holds results.parquet)")
    board.add_argument("--seed", type=int, help="bootstrap seed (default: the one stored with the results)")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write the simulated cohort as a BIDS-like folder")
    synth.add_argument("out", type=Path, help="folder to create")
    synth.add_argument(
        "--profile", default="quick", choices=["quick", "default", "standard", "full"], help="default: quick"
    )
    synth.add_argument("--seed", type=int, default=0, help="default: 0")
    synth.add_argument("--subjects", type=int, help="number of subjects (default: the profile's)")
    synth.add_argument("--sites-file", type=Path, help="TOML with extra or replacement sites")
    effects = data_sub.add_parser(
        "effects", help="how much of the site gap each simulated scanner effect accounts for (one seed)"
    )
    effects.add_argument("--profile", default="default", help="simulator profile (default: default)")
    effects.add_argument("--seed", type=int, default=0, help="default: 0")
    effects.add_argument("--subjects", type=int, default=4, help="subjects averaged over (default: 4)")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from harmbench.runner import Runner
    from harmbench.suite import components_from_names, load_suite

    suite = load_suite(args.suite)
    changes: dict = {}
    if args.dataset:
        changes["dataset"] = args.dataset
        if args.dataset != suite.dataset:
            changes["dataset_params"] = {}
    params = dict(changes.get("dataset_params", suite.dataset_params))
    if args.profile:
        params["profile"] = args.profile
    if params != suite.dataset_params or changes.get("dataset", suite.dataset) != suite.dataset:
        # the suite's test-subject count was chosen for its own cohort; other data gets the protocol default
        changes["n_test_subjects"] = None
    changes["dataset_params"] = params
    for option, key in (("target_site", "target_site"), ("seed", "seed"), ("device", "device")):
        if getattr(args, option) is not None:
            changes[key] = getattr(args, option)
    if args.unseen_sites is not None:
        changes["unseen_sites"] = tuple(args.unseen_sites)
    # A name the suite configures (a labelled variant with parameters) keeps its configuration.
    for kind in ("harmonizers", "evaluators"):
        names = getattr(args, kind)
        if names:
            configured = {c.label: c for c in getattr(suite, kind)}
            changes[kind] = tuple(configured.get(c.label, c) for c in components_from_names(names, kind))
    if args.repeats is not None:
        if args.repeats < 1:
            raise HarmbenchError("--repeats must be at least 1")
        seed = changes.get("seed", suite.seed)
        changes["seeds"] = tuple(range(seed, seed + args.repeats))
    if args.cell_timeout is not None:
        changes["cell_timeout_s"] = args.cell_timeout
    if args.no_oracle:
        changes["oracle"] = False
    suite = suite.replace(**changes)
    out = args.out or Path("leaderboards") / suite.name
    runner = Runner(suite, out, progress=not args.quiet, save_images=args.save_images, retry_failed=args.retry_failed)
    if args.dry_run:
        sys.stdout.write(runner.dry_run().render())
        return 0
    report = runner.run()
    log.info("%d cells, %d computed now, %d failed", report.cells_total, report.cells_computed, report.cells_failed)
    for failure in report.failures:
        log.warning("failed: %s", failure)
    sys.stdout.write(f"leaderboard: {report.leaderboards['md']}\n")
    sys.stdout.write(f"results:     {report.results_path}\n")
    if report.cells_failed:
        sys.stderr.write(
            f"harmbench: {report.cells_failed} of {report.cells_total} cells failed; the reasons are in the "
            f"leaderboard, the tracebacks under {out / 'errors'} (--retry-failed recomputes them)\n"
        )
        return EXIT_FAILED_CELLS
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from harmbench.plugins import KINDS, Registry

    registry = Registry()
    for kind in [args.kind] if args.kind else list(KINDS):
        sys.stdout.write(f"{kind}:\n")
        for entry in registry.entries(kind):
            cls = entry.cls
            if kind == "harmonizers":
                meta = cls.meta
                caps = [
                    c
                    for c, on in (
                        ("one-shot", meta.uses_reference),
                        ("target-only", not meta.needs_source_sites),
                        ("seen-sites-only", not meta.handles_unseen_sites),
                        ("transductive", meta.transductive),
                    )
                    if on
                ]
                detail = f"v{meta.version}" + (f" [{', '.join(caps)}]" if caps else "")
            elif kind == "evaluators":
                detail = "metrics: " + ", ".join(m.name for m in cls.metrics)
            else:
                detail = (getattr(cls, "description", "") or "").strip().splitlines()[0:1]
                detail = detail[0] if detail else ""
            sys.stdout.write(f"  {entry.name:<16} {detail}  ({entry.distribution})\n")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from harmbench.plugins import Registry

    registry = Registry()
    for name, dist in registry.plugins():
        sys.stdout.write(f"{name:<20} {dist}\n")
    for broken in registry.broken:
        sys.stdout.write(f"{broken.name:<20} {broken.distribution}  BROKEN: {broken.error}\n")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from harmbench.check import EXIT_CHECKS_FAILED, check_plugin, format_table, parse_param

    params = dict(parse_param(p) for p in args.param)
    kind, results = check_plugin(args.name, params, kind=args.kind, seed=args.seed)
    sys.stdout.write(format_table(args.name, kind, results))
    return 0 if all(r.passed for r in results) else EXIT_CHECKS_FAILED


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from harmbench.scaffold import write_plugin_package

    folder = write_plugin_package(args.name, args.kind, args.out)
    sys.stdout.write(f"wrote {folder}\nnext: pip install -e {folder} && pytest {folder}/tests\n")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harmbench.leaderboard import write_leaderboards
    from harmbench.results import SCORES_FILE, read_results, read_scores
    from harmbench.suite import load_suite

    scores = args.dir / SCORES_FILE
    results = read_scores(scores) if scores.exists() else read_results(args.dir)
    # the bootstrap seed and the baselines are the run's (its suite file), unless --seed says otherwise
    run_suite = load_suite(args.dir / "suite.toml") if (args.dir / "suite.toml").exists() else None
    stored_seed = run_suite.seed if run_suite else (int(results["seed"].min()) if len(results) else 0)
    seed = args.seed if args.seed is not None else stored_seed
    suite = str(results["suite"].iloc[0]) if len(results) else args.dir.name
    try:
        paths = write_leaderboards(
            results,
            args.dir,
            seed=seed,
            title=f"harmbench leaderboard: {suite}",
            baselines=run_suite.baselines if run_suite else (),
        )
    except ValueError as exc:  # the table is readable but not one leaderboard's worth (mixed suites, bad values)
        raise DataError(f"{args.dir / 'results.parquet'}: cannot build a leaderboard ({exc})") from exc
    sys.stdout.write(f"leaderboard: {paths['md']}\n")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "effects":
        from harmbench.data.effects import effect_ablation, format_table

        table = effect_ablation(args.profile, args.seed, n_subjects=args.subjects)
        sys.stdout.write(format_table(table) + "\n")
        return 0
    if args.data_command != "synth":
        raise HarmbenchError("usage: harmbench data synth OUT | harmbench data effects")
    from harmbench.data.io import write_bids
    from harmbench.data.sim import load_sites, simulate_cohort

    sites = load_sites(args.sites_file)[0] if args.sites_file else None
    cohort = simulate_cohort(args.profile, args.seed, n_subjects=args.subjects, sites=sites, progress=True)
    out = write_bids(cohort, args.out)
    rescans = len(cohort) - len(cohort.without_rescans())
    sys.stdout.write(
        f"wrote {len(cohort)} scans ({len(cohort.subjects)} subjects × {len(cohort.sites)} sites"
        f" + {rescans} rescans) to {out}\n"
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "plugins": cmd_plugins,
    "check": cmd_check,
    "new-plugin": cmd_new_plugin,
    "leaderboard": cmd_leaderboard,
    "data": cmd_data,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        return COMMANDS[args.command](args)
    except HarmbenchError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"harmbench: error: {exc}\n")
        return EXIT_ERROR
    except OSError as exc:  # the file system refused (permissions, disk full, a path that is a file): say which
        if args.debug:
            raise
        sys.stderr.write(f"harmbench: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("harmbench: interrupted; finished cells are kept, rerun to resume\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
