"""The committed default leaderboard: what regenerates byte for byte, and what within a measured tolerance.

Two layers (docs/reproducibility.md):

- exact, on any machine: the suite file, the split, and the leaderboards rendered from the committed
  per-scan scores (``leaderboards/default/scores.csv``) — statistics and rendering are pure functions
  of those scores and the bootstrap seed;
- within a tolerance: every figure of a fresh run of the committed suite (each cell's mean and interval
  bounds) against the committed ``leaderboard.csv``. Deep training, EM fits and some BLAS paths depend
  on the CPU and its thread count, so those figures are compared within `TOLERANCES`, derived from
  measured spreads. The statuses, the scan counts and the set of cells must match exactly.

The full default suite runs once per test session (`fresh_default_run`).
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_suite
from harmbench_plugins.harmonizers.histogram import HistogramHarmonizer

from harmbench import Meta, hookimpl
from harmbench.leaderboard import write_leaderboards
from harmbench.plugins import Registry, get_plugin_manager
from harmbench.results import SCORES_FILE, read_scores
from harmbench.runner import Runner
from harmbench.suite import Component, Suite, load_suite

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "leaderboards" / "default"
BOARD_FILES = ("leaderboard.md", "leaderboard.csv", "leaderboard.json")
FIGURES = ("mean", "ci_low", "ci_high")


@dataclass(frozen=True)
class Tolerance:
    """``|fresh − committed| <= atol + rtol * |committed|`` for harmonizers of ``family`` and matching metrics."""

    family: str  # "trained" (meta.stochastic) or "classical" or "*"
    metrics: str  # fnmatch pattern(s), "|"-separated
    atol: float
    rtol: float
    measured: str

    def matches(self, family: str, metric: str) -> bool:
        return self.family in ("*", family) and any(fnmatch.fnmatchcase(metric, p) for p in self.metrics.split("|"))

    def allows(self, committed: float, fresh: float) -> bool:
        return abs(fresh - committed) <= self.atol + self.rtol * abs(committed)


#: First match wins. Each row: the spread it was derived from. "threads 1 vs 2" = the CI rows of the
#: committed board (made with 2 torch threads) regenerated with HARMBENCH_TORCH_THREADS=1 on the same
#: machine, the stand-in for another CPU (docs/reproducibility.md); "EPYC" = issue 9's measurement of the
#: committed board regenerated on a 2-core AMD EPYC. A tolerance is at least 3× the largest spread
#: measured for its row, so that one more CPU model does not fail CI while a real change of a method
#: does; the trained rows are the exception, and say why.
TOLERANCES: tuple[Tolerance, ...] = (
    # Deep harmonizers first: their output is one draw from the training distribution, and another CPU or
    # thread count is another draw, which moves every figure computed from it (the segmenter's too).
    # The measured moves reach 45 %, so "3x the spread" would allow anything; these rows allow a factor of
    # two, which catches a broken or changed method, not a drift. The board's seed_sd is the error bar.
    Tolerance(
        "trained",
        "ravd_*",
        0.5,
        1.0,
        "threads 1 vs 2: hail unseen ravd_csf 41.9 → 23.7 (−43 %), seen ravd_gm ci_low 1.43 → 2.26 (+0.83)",
    ),
    Tolerance(
        "trained",
        "*",
        0.05,
        1.0,
        "threads 1 vs 2: hail nwd_tp 0.118 → 0.160 seen (+36 %), 0.103 → 0.148 unseen (+44 %), w1_target +45 %, "
        "iou_wm −0.045, dice_gap_closed −0.077; EPYC: hail nwd_tp +28 % / +37 %",
    ),
    # Trained downstream segmenter and the site classifier: trained inside the evaluator, for every row.
    Tolerance(
        "*",
        "dice_gap_closed",
        0.2,
        0.0,
        "threads 1 vs 2: at most 0.0007 on a classical row; a ratio (method − identity) / (ceiling − identity) of "
        "Dice means, so a Dice shift δ on the three moves it by about 3δ / gap: 0.01 over a gap ≥ 0.15 gives 0.2",
    ),
    Tolerance(
        "*",
        "iou_*|dice_*",
        0.03,
        0.0,
        "threads 1 vs 2: at most 0.0004 on a classical row; EPYC: every iou/dice cell moved (size not given); "
        "between segmenter seeds: docs/reproducibility.md",
    ),
    Tolerance(
        "*",
        "site_*",
        0.2,
        0.0,
        "EPYC: a site_bacc bound 0.25 → 0.333 (one subject's fold flipping moves a share by 1/n_subjects); "
        "threads 1 vs 2: unchanged",
    ),
    # EM (GMM tissue model) inside the volume evaluator: deterministic up to floating-point summation order.
    Tolerance(
        "classical",
        "ravd_*",
        0.01,
        1e-4,
        "EPYC: histogram ravd_wm_gt 23.0000 → 22.9992 (3.5e-5 relative); threads 1 vs 2: bit-identical",
    ),
    # Closed-form metrics of deterministic methods: only BLAS summation order moves them.
    Tolerance(
        "classical",
        "*",
        1e-6,
        1e-5,
        "EPYC: a bootstrap bound in the 7th significant digit (0.0980949 → 0.098095); threads 1 vs 2: bit-identical",
    ),
)


def tolerance_for(family: str, metric: str) -> Tolerance:
    return next(t for t in TOLERANCES if t.matches(family, metric))


def trained_harmonizers(suite: Suite, registry: Registry | None = None) -> set[str]:
    registry = registry or Registry()
    return {c.label for c in suite.harmonizers if registry.harmonizer(c.plugin).meta.stochastic}


def out_of_tolerance(committed: pd.DataFrame, fresh: pd.DataFrame, trained: set[str]) -> list[str]:
    """Every difference between two leaderboard.csv tables that the tolerance rules do not allow."""
    key = ["scenario", "harmonizer", "metric"]
    merged = committed.merge(fresh, on=key, how="outer", suffixes=("_committed", "_fresh"), indicator="source")
    problems = []
    for row in merged.itertuples(index=False):
        where = f"{row.scenario}/{row.harmonizer}/{row.metric}"
        if row.source != "both":
            problems.append(f"{where}: only in the {'committed' if row.source == 'left_only' else 'fresh'} board")
            continue
        for exact in ("status", "n"):
            a, b = getattr(row, f"{exact}_committed"), getattr(row, f"{exact}_fresh")
            if a != b:
                problems.append(f"{where}: {exact} {a!r} committed, {b!r} now")
        tol = tolerance_for("trained" if row.harmonizer in trained else "classical", row.metric)
        for figure in FIGURES:
            a, b = float(getattr(row, f"{figure}_committed")), float(getattr(row, f"{figure}_fresh"))
            if math.isnan(a) and math.isnan(b):
                continue
            if math.isnan(a) != math.isnan(b) or not tol.allows(a, b):
                problems.append(
                    f"{where}: {figure} {a:.6g} committed, {b:.6g} now (tolerance {tol.atol:g} + {tol.rtol:g}·|x|)"
                )
    return problems


# -- exact, on any machine ---------------------------------------------------------------------------


def test_default_suite_file_is_the_builtin_one():
    assert load_suite(COMMITTED / "suite.toml") == load_suite()


def test_committed_leaderboard_renders_byte_for_byte_from_the_committed_scores(tmp_path):
    suite = load_suite(COMMITTED / "suite.toml")
    write_leaderboards(
        read_scores(COMMITTED / SCORES_FILE),
        tmp_path,
        seed=suite.seed,
        title=f"harmbench leaderboard: {suite.name}",
        baselines=suite.baselines,
    )
    for name in BOARD_FILES:
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), f"{name} differs"


# -- a fresh run of the committed suite -----------------------------------------------------------------


#: The rows a CI run regenerates: every classical method and one trained one (HAIL stands for the "trained"
#: tolerance rows), plus the reference row. The other trained methods' rows take about 15 more minutes on
#: 2 cores; their figures are covered by the byte-for-byte render above and their own unit tests, and
#: ``HARMBENCH_REPRODUCE=all`` regenerates every row.
CI_HARMONIZERS = ("identity", "scale", "histogram", "ssimh", "combat", "combat-refit", "hail")


def reproduced_suite() -> Suite:
    suite = load_suite(COMMITTED / "suite.toml")
    if os.environ.get("HARMBENCH_REPRODUCE", "") == "all":
        return suite
    return suite.replace(harmonizers=tuple(c for c in suite.harmonizers if c.label in CI_HARMONIZERS))


def reproduced_labels(suite: Suite) -> set[str]:
    """Harmonizer labels of ``suite`` plus the reference rows (never a method, always reproduced)."""
    committed = pd.read_csv(COMMITTED / "leaderboard.csv")
    methods = {c.label for c in load_suite(COMMITTED / "suite.toml").harmonizers}
    return {c.label for c in suite.harmonizers} | (set(committed["harmonizer"]) - methods)


@pytest.fixture(scope="session")
def fresh_default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed suite (its CI rows, `reproduced_suite`) run once per session."""
    out = tmp_path_factory.mktemp("default")
    Runner(reproduced_suite(), out, progress=False).run()
    return out


def test_fresh_run_reproduces_the_split_byte_for_byte(fresh_default_run):
    assert (fresh_default_run / "split.json").read_bytes() == (COMMITTED / "split.json").read_bytes()


def test_fresh_run_scores_have_the_committed_rows(fresh_default_run):
    key = ["scenario", "harmonizer", "seed", "evaluator", "metric", "subject", "site", "status"]
    labels = reproduced_labels(reproduced_suite())
    fresh = read_scores(fresh_default_run / SCORES_FILE)[key]
    committed = read_scores(COMMITTED / SCORES_FILE)[key]
    committed = committed[committed["harmonizer"].isin(labels)]
    assert fresh.reset_index(drop=True).equals(committed.reset_index(drop=True))


def test_fresh_run_figures_are_within_the_measured_tolerances(fresh_default_run):
    suite = reproduced_suite()
    committed = pd.read_csv(COMMITTED / "leaderboard.csv")
    committed = committed[committed["harmonizer"].isin(reproduced_labels(suite))]
    fresh = pd.read_csv(fresh_default_run / "leaderboard.csv")
    problems = out_of_tolerance(committed, fresh, trained_harmonizers(suite))
    assert not problems, "\n".join(problems)


# -- the check can fail ----------------------------------------------------------------------------------


class GainedHistogram(HistogramHarmonizer):
    """Histogram matching whose output is moved by a global gain: a method whose output changed."""

    meta = Meta(name="histogram-gained", version="1", citation="test double")
    gain: ClassVar[float] = 1.05

    def transform(self, scan, reference=None):
        out = super().transform(scan, reference)
        return out.with_data((out.data * np.float32(self.gain)).astype(np.float32))


class GainedPlugin:
    @hookimpl
    def harmbench_register_harmonizers(self):
        return [GainedHistogram]


def test_the_check_fails_when_one_methods_output_moves_beyond_its_tolerance(tmp_path):
    registry = Registry(get_plugin_manager(extra_plugins=[GainedPlugin()]))
    base = tiny_suite(harmonizers=("identity", "histogram"), evaluators=("wasserstein", "paired"))
    Runner(base, tmp_path / "a", progress=False, registry=registry).run()
    Runner(base, tmp_path / "b", progress=False, registry=registry).run()
    # the same suite with histogram's output scaled by 5 %, under histogram's label
    moved = base.replace(harmonizers=(Component("identity", "identity"), Component("histogram", "histogram-gained")))
    Runner(moved, tmp_path / "c", progress=False, registry=registry).run()
    committed = pd.read_csv(tmp_path / "a" / "leaderboard.csv")
    trained = trained_harmonizers(base, registry)
    assert out_of_tolerance(committed, pd.read_csv(tmp_path / "b" / "leaderboard.csv"), trained) == []
    problems = out_of_tolerance(committed, pd.read_csv(tmp_path / "c" / "leaderboard.csv"), trained)
    assert problems and all("/histogram/" in p for p in problems)
    assert any("/histogram/nwd_tp: mean" in p for p in problems)


def test_tolerances_are_tight_for_classical_methods_and_wider_for_trained_ones():
    assert tolerance_for("classical", "nwd_tp").rtol <= 1e-5 < tolerance_for("trained", "nwd_tp").rtol
    assert tolerance_for("classical", "ravd_gm_gt").atol < tolerance_for("trained", "ravd_gm_gt").atol
    assert all(t.measured for t in TOLERANCES)
