"""Tests for harmbench.leaderboard and harmbench.stats: subject statistics, ranks per axis, byte-stable rendering."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmbench.leaderboard import (
    SUMMARY_COLUMNS,
    build_board,
    metric_table,
    render_csv,
    render_json,
    render_markdown,
    summarize,
    write_leaderboards,
)
from harmbench.results import to_frame
from harmbench.stats import bootstrap_mean_ci, compare, holm, seed_for, sign_flip_p, significance_ranks

# evaluator -> [(metric, direction, ideal, unit, main, axis)]
EVALUATORS = {
    "wasserstein": [("nwd_tp", "lower", 0.0, "", True, "intensity"), ("nwd_ip", "ideal", math.nan, "", True, "")],
    "paired": [("psnr", "higher", math.nan, "dB", True, ""), ("ssim", "higher", 1.0, "", True, "fidelity")],
    "volume": [("ravd_gm", "ideal", 0.0, "%", True, "anatomy"), ("ravd_wm", "ideal", 0.0, "%", True, "anatomy")],
}
SUBJECTS = ["s01", "s02", "s03", "s04", "s05", "s06"]
SITES = {"seen": ["siteB", "siteC"], "unseen": ["siteD"]}


def _c(v: float) -> list[float]:
    return [v] * len(SUBJECTS)


def _spread(centre: float, step: float) -> list[float]:
    return [centre + step * k for k in (-2.5, -1.5, -0.5, 0.5, 1.5, 2.5)]


# Per scenario and harmonizer: per-subject values of every metric, or a status for a whole evaluator.
# seen: nwd_tp lower → histogram (0.1, spread) < combat (0.2) < identity (0.5), all clearly apart;
#       ssim higher → combat (0.95) > histogram (0.9) > identity (0.5);
#       ravd (signed, ideal 0): identity 0 (best), histogram ±5, combat 10.
# unseen: histogram's paired evaluator failed; combat is not applicable.
VALUES = {
    ("seen", "identity"): {
        "nwd_tp": _c(0.5), "nwd_ip": _c(0.0), "psnr": _c(20), "ssim": _c(0.5), "ravd_gm": _c(0), "ravd_wm": _c(0)
    },
    ("seen", "histogram"): {
        "nwd_tp": _spread(0.1, 0.01),
        "nwd_ip": _c(0.9),
        "psnr": [21.3, 22.9, 23.1, 22.4, 24.7, 23.6],
        "ssim": _c(0.9),
        "ravd_gm": [5, -5, 5, -5, 5, -5],
        "ravd_wm": _c(-5),
    },
    ("seen", "combat"): {
        "nwd_tp": _c(0.2), "nwd_ip": _c(1.0), "psnr": _c(25), "ssim": _c(0.95), "ravd_gm": _c(10), "ravd_wm": _c(10)
    },
    ("unseen", "identity"): {
        "nwd_tp": _spread(0.7, 0.05), "nwd_ip": _c(0.0), "psnr": _c(19), "ssim": _c(0.7), "ravd_gm": _c(0),
        "ravd_wm": _c(0),
    },
    ("unseen", "histogram"): {"nwd_tp": _c(0.3), "nwd_ip": _c(0.95), "ravd_gm": _c(3), "ravd_wm": _c(3),
                              "paired": "failed"},
    ("unseen", "combat"): {"wasserstein": "not_applicable", "paired": "not_applicable", "volume": "not_applicable"},
}  # fmt: skip
ERRORS = {
    "failed": "RuntimeError: CUDA out of memory while computing PSNR\nTraceback (most recent call last): ...",
    "not_applicable": "combat cannot handle unseen sites",
}


def _row(scenario, harmonizer, evaluator, metric, direction, ideal, unit, main, axis, subject, site, value, status,
         error, seed=0, role="method", transductive=False):  # fmt: skip
    return {
        "suite": "quick",
        "dataset": "sim",
        "scenario": scenario,
        "harmonizer": harmonizer,
        "role": role,
        "params_hash": f"{harmonizer[:4]}00000000",
        "evaluator": evaluator,
        "metric": metric,
        "subject": subject,
        "site": site,
        "value": float(value),
        "status": status,
        "error": error,
        "higher_is_better": direction,
        "ideal": ideal,
        "unit": unit,
        "main": main,
        "axis": axis,
        "transductive": transductive,
        "seed": seed,
        "device": "cpu",
        "harmbench_version": "0.1.0",
        "started": "2024-01-01T00:00:00",
        "finished": "2024-01-01T00:00:01",
    }


def make_results(values=VALUES, *, site_offset: float = 0.0, **kw) -> pd.DataFrame:
    """One row per metric, subject and site; a subject's second site gets ``value + site_offset``."""
    rows = []
    for (scenario, harmonizer), spec in values.items():
        for evaluator, metrics in EVALUATORS.items():
            for metric, direction, ideal, unit, main, axis in metrics:
                common = (scenario, harmonizer, evaluator, metric, direction, ideal, unit, main, axis)
                status = spec.get(evaluator)
                if status is not None:
                    rows.append(_row(*common, "*", "*", math.nan, status, ERRORS[status], **kw))
                    continue
                for subject, value in zip(SUBJECTS, spec[metric], strict=True):
                    for k, site in enumerate(SITES[scenario]):
                        rows.append(_row(*common, subject, site, value + k * site_offset, "ok", "", **kw))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return make_results()


@pytest.fixture(scope="module")
def board(results):
    return build_board(results, seed=0, baselines=("identity",))


def _cell(frame: pd.DataFrame, scenario: str, harmonizer: str, metric: str) -> pd.Series:
    sel = frame[(frame.scenario == scenario) & (frame.harmonizer == harmonizer) & (frame.metric == metric)]
    assert len(sel) == 1
    return sel.iloc[0]


def _axis(board, scenario, harmonizer, axis) -> pd.Series:
    a = board.axes
    sel = a[(a.scenario == scenario) & (a.harmonizer == harmonizer) & (a.axis == axis)]
    assert len(sel) == 1
    return sel.iloc[0]


# -- harmbench.stats ---------------------------------------------------------------------------------


def test_seed_derivation_is_sha256_of_the_json_key():
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b'[3, "seen", "nwd_tp"]').digest()[:8], "big")
    assert seed_for(3, "seen", "nwd_tp") == expected


def test_sign_flip_p_is_exact_for_small_samples():
    # all four differences positive: only the all-plus and all-minus patterns are as extreme → 2/16
    assert sign_flip_p(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(2 / 16)
    assert sign_flip_p(np.array([1.0, -1.0, 2.0, -2.0])) == 1.0
    assert sign_flip_p(np.zeros(5)) == 1.0
    # above the exact limit: Monte Carlo, seeded
    d = np.linspace(0.5, 1.5, 20)
    p = sign_flip_p(d, np.random.default_rng(0))
    assert 0 < p < 1e-3 and p == sign_flip_p(d, np.random.default_rng(0))


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_bootstrap_interval_collapses_for_one_value_and_contains_the_mean():
    assert bootstrap_mean_ci(np.array([2.0]), np.random.default_rng(0)) == (2.0, 2.0)
    low, high = bootstrap_mean_ci(np.arange(10.0), np.random.default_rng(0))
    assert low < 4.5 < high


def test_paired_difference_drops_a_subject_missing_on_either_side():
    a = pd.Series([1.0, 2.0, math.nan, 4.0], index=["s1", "s2", "s3", "s4"])
    b = pd.Series([0.0, 1.0, 1.0, math.nan], index=["s1", "s2", "s3", "s4"])
    c = compare(a, b, seed=0, scenario="seen", metric="m")
    assert c.n == 2 and c.difference == pytest.approx(1.0) and (c.ci_low, c.ci_high) == (1.0, 1.0)
    assert c.p_value == pytest.approx(0.5)  # two subjects: 2 of 4 sign patterns are as extreme


def test_significance_ranks_share_a_rank_when_the_difference_interval_covers_zero():
    idx = [f"s{i}" for i in range(6)]
    noisy = pd.Series([0.1, 0.3, 0.2, 0.4, 0.0, 0.5], index=idx)
    losses = {
        "a": pd.Series(np.arange(6) * 0.01, index=idx),
        "b": pd.Series(np.arange(6) * 0.01, index=idx) + noisy - noisy.mean() + 0.005,  # indistinguishable from a
        "c": pd.Series(np.full(6, 5.0), index=idx),  # clearly worse than both
    }
    r = significance_ranks(losses, seed=0, scenario="seen", metric="m")
    assert r == {"a": 1.0, "b": 1.0, "c": 3.0}


# -- summary -----------------------------------------------------------------------------------------


def test_summary_columns_and_order(board):
    s = board.summary
    assert list(s.columns) == SUMMARY_COLUMNS
    assert render_csv(board).splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    keys = list(zip(s.scenario, s.harmonizer, s.metric, strict=True))
    assert keys == sorted(keys, key=lambda k: ({"seen": 0, "unseen": 1}[k[0]], k[1], k[2]))
    assert len(s) == 2 * 3 * 6


def test_scenario_order_seen_unseen_then_alphabetical(results):
    extra = results[results.scenario == "seen"].assign(scenario="aaa")
    s = summarize(pd.concat([extra, results]), n_boot=10)
    assert list(dict.fromkeys(s.scenario)) == ["seen", "unseen", "aaa"]


def test_mean_n_subjects_status(board):
    c = _cell(board.summary, "seen", "histogram", "nwd_tp")
    assert c["mean"] == pytest.approx(0.1) and c["n"] == 12 and c["n_subjects"] == 6 and c["status"] == "ok"
    c = _cell(board.summary, "unseen", "histogram", "psnr")
    assert c["status"] == "failed" and c["n"] == 0 and math.isnan(c["mean"]) and math.isnan(c["rank"])
    c = _cell(board.summary, "unseen", "combat", "nwd_tp")
    assert c["status"] == "not_applicable" and c["n"] == 0


def test_a_subjects_scans_move_together_in_the_bootstrap():
    """Two sites per subject with a constant offset: the interval is the one of the subject means."""
    res = make_results(site_offset=0.2)
    c = _cell(summarize(res), "seen", "histogram", "nwd_tp")
    subject_means = np.array(_spread(0.1, 0.01)) + 0.1
    key = seed_for(0, "seen", "nwd_tp", "mean", *SUBJECTS)
    low, high = bootstrap_mean_ci(subject_means, np.random.default_rng(key))
    assert c["mean"] == pytest.approx(0.2) and (c["ci_low"], c["ci_high"]) == pytest.approx((low, high), abs=1e-6)


def test_nonfinite_value_drops_the_scan_and_any_failure_fails_the_cell(results):
    df = results.copy()
    sel = (df.scenario == "seen") & (df.harmonizer == "identity") & (df.metric == "psnr")
    idx = df.index[sel]
    df.loc[idx[0], "value"] = math.nan
    c = _cell(summarize(df, n_boot=10), "seen", "identity", "psnr")
    assert c["n"] == 11 and c["n_subjects"] == 6 and c["status"] == "ok"
    df.loc[idx[1], "status"] = "failed"
    assert _cell(summarize(df, n_boot=10), "seen", "identity", "psnr")["status"] == "failed"


def test_ci_is_deterministic_depends_on_the_seed_and_not_on_other_cells(results, board):
    ok = board.summary[board.summary.n > 0]
    assert (ok.ci_low <= ok["mean"]).all() and (ok["mean"] <= ok.ci_high).all()
    c = _cell(board.summary, "seen", "histogram", "psnr")
    assert c.ci_low < c["mean"] < c.ci_high
    other = _cell(summarize(results, seed=1), "seen", "histogram", "psnr")
    assert (other.ci_low, other.ci_high) != (c.ci_low, c.ci_high)
    only = results[(results.harmonizer == "histogram") & (results.scenario == "seen")]
    alone = _cell(summarize(only), "seen", "histogram", "psnr")
    assert (alone.ci_low, alone.ci_high) == (c.ci_low, c.ci_high)


def test_identical_values_get_identical_intervals_across_harmonizers(results):
    twin = results[results.harmonizer == "histogram"].assign(harmonizer="histogram-twin")
    s = summarize(pd.concat([results, twin], ignore_index=True))
    a, b = _cell(s, "seen", "histogram", "nwd_tp"), _cell(s, "seen", "histogram-twin", "nwd_tp")
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high) and a["rank"] == b["rank"]


def test_values_rounded_to_six_significant_digits(results):
    df = results.copy()
    df.loc[(df.scenario == "seen") & (df.harmonizer == "identity") & (df.metric == "psnr"), "value"] = 1.0 / 3.0
    assert _cell(summarize(df, n_boot=10), "seen", "identity", "psnr")["mean"] == 0.333333


def test_seeds_are_averaged_per_subject_and_their_spread_shown(results):
    stochastic = results[results.harmonizer == "histogram"]
    shifted = [stochastic.assign(seed=k, value=stochastic["value"] + 0.01 * k) for k in range(3)]
    res = pd.concat([results[results.harmonizer != "histogram"], *shifted], ignore_index=True)
    c = _cell(summarize(res), "seen", "histogram", "nwd_tp")
    assert c["n_seeds"] == 3 and c["n_subjects"] == 6 and c["n"] == 12
    assert c["mean"] == pytest.approx(0.11)  # seed means 0.10, 0.11, 0.12
    assert c["seed_sd"] == pytest.approx(0.01)
    assert math.isnan(_cell(summarize(res), "seen", "identity", "nwd_tp")["seed_sd"])


# -- ranks -------------------------------------------------------------------------------------------


def test_metric_ranks_respect_direction_and_ideal(board):
    r = {(a, b, c): d for a, b, c, d in board.summary[["scenario", "harmonizer", "metric", "rank"]].to_numpy()}
    assert [r["seen", h, "nwd_tp"] for h in ("histogram", "combat", "identity")] == [1, 2, 3]
    assert [r["seen", h, "ssim"] for h in ("combat", "histogram", "identity")] == [1, 2, 3]
    # ideal 0, signed: |±5| = 5 beats 10; identity's 0 is best
    assert [r["seen", h, "ravd_gm"] for h in ("identity", "histogram", "combat")] == [1, 2, 3]
    # nwd_ip has no direction and no ideal here: informational, not ranked
    assert metric_table(board.results).set_index("metric").at["nwd_ip", "direction"] == "none"
    assert all(math.isnan(r["seen", h, "nwd_ip"]) for h in ("identity", "histogram", "combat"))


def test_failed_and_na_cells_are_unranked_and_do_not_push_others_down(board):
    s = board.summary
    r = {(a, b, c): d for a, b, c, d in s[["scenario", "harmonizer", "metric", "rank"]].to_numpy()}
    assert math.isnan(r["unseen", "histogram", "psnr"]) and math.isnan(r["unseen", "combat", "nwd_tp"])
    assert r["unseen", "identity", "psnr"] == 1


def test_axis_ranks_combine_the_axis_metrics_and_overall_is_their_mean(board):
    # anatomy: mean of |ravd_gm|, |ravd_wm| per subject → identity 0, histogram 5, combat 10
    assert [_axis(board, "seen", h, "anatomy")["value"] for h in ("identity", "histogram", "combat")] == [0, 5, 10]
    assert [_axis(board, "seen", h, "anatomy")["rank"] for h in ("identity", "histogram", "combat")] == [1, 2, 3]
    assert [d.axis for d in board.axis_definitions] == ["intensity", "fidelity", "anatomy"]
    ov = board.overall[board.overall.scenario == "seen"].set_index("harmonizer")["overall_rank"]
    # histogram: intensity 1, fidelity 2, anatomy 2; combat 2, 1, 3; identity 3, 3, 1
    assert ov.to_dict() == pytest.approx({"histogram": 5 / 3, "combat": 2.0, "identity": 7 / 3}, abs=1e-5)
    assert list(ov.index) == ["histogram", "combat", "identity"]


def test_a_missing_evaluator_drops_its_axis(results):
    b = build_board(results[results.evaluator != "volume"])
    assert [d.axis for d in b.axis_definitions] == ["intensity", "fidelity"]
    assert set(b.axes["axis"]) == {"intensity", "fidelity"}


def test_transductive_methods_are_ranked_in_their_own_track(results):
    refit = results[results.harmonizer == "combat"].assign(harmonizer="combat-refit", transductive=True)
    refit = refit.assign(value=refit["value"] * 0.5)  # better than everyone on nwd_tp
    b = build_board(pd.concat([results, refit], ignore_index=True))
    assert _cell(b.summary, "seen", "combat-refit", "nwd_tp")["track"] == "transductive"
    assert _cell(b.summary, "seen", "combat-refit", "nwd_tp")["rank"] == 1
    assert _cell(b.summary, "seen", "histogram", "nwd_tp")["rank"] == 1  # not pushed down by it
    md = render_markdown(b, title="t")
    assert "#### Transductive track" in md and "combat-refit †" in md


def test_reference_row_is_shown_last_and_never_ranked_even_when_best(results):
    ceiling = results[results.harmonizer == "histogram"].assign(harmonizer="rescan-ceiling", role="ceiling")
    ceiling = ceiling.assign(status="ok", value=ceiling["value"].fillna(0.0) * 0.0)
    b = build_board(pd.concat([results, ceiling], ignore_index=True))
    assert b.summary.loc[b.summary.harmonizer == "rescan-ceiling", "rank"].isna().all()
    assert b.axes.loc[b.axes.harmonizer == "rescan-ceiling", "rank"].isna().all()
    assert _cell(b.summary, "seen", "histogram", "nwd_tp")["rank"] == 1
    md = render_markdown(b, title="t")
    seen = md.split("## Scenario: seen")[1].split("## Scenario")[0]
    table = seen.split("### All metrics")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "harmonizer" not in line]
    assert rows[-1].startswith("| rescan-ceiling ‡ |")
    assert "‡ rescan ceiling, not ranked" in md and "rescan-ceiling" not in set(b.differences.harmonizer)


# -- differences against the baselines -----------------------------------------------------------------


def test_differences_against_a_baseline_are_paired_with_holm_across_methods(board):
    d = board.differences
    row = d[(d.scenario == "seen") & (d.harmonizer == "histogram") & (d.metric == "nwd_tp")].iloc[0]
    assert row["baseline"] == "identity" and row["difference"] == pytest.approx(-0.4) and row["n_subjects"] == 6
    assert row["ci_high"] < 0
    assert row["p_value"] == pytest.approx(2 / 64)  # 6 subjects all better: the two extreme patterns of 64
    family = d[(d.scenario == "seen") & (d.metric == "nwd_tp")]
    assert set(family.harmonizer) == {"histogram", "combat"}
    assert family["p_holm"].tolist() == pytest.approx(holm(family["p_value"].tolist()))
    assert not (d.harmonizer == "identity").any()
    assert "nwd_ip" not in set(d.metric)  # informational metrics are not compared


def test_a_baseline_not_in_the_results_is_skipped(results):
    assert build_board(results, baselines=("scale",)).differences.empty


# -- rendering -----------------------------------------------------------------------------------------


def test_markdown_content(board):
    md = render_markdown(board, title="Test board")
    assert md.startswith("# Test board\n")
    assert md.index("## Scenario: seen") < md.index("## Scenario: unseen")
    assert "### Ranks per axis" in md and "### Differences against the baselines" in md and "### All metrics" in md
    assert "anatomy: mean of |ravd_gm|, |ravd_wm| ↓" in md and "intensity: nwd_tp ↓" in md
    assert "nwd_tp ↓" in md and "psnr ↑" in md and "nwd_ip (info)" in md
    seen = md.split("## Scenario: seen")[1].split("## Scenario: unseen")[0]
    axes = seen.split("### Ranks per axis")[1].split("###")[0]
    rows = [line for line in axes.splitlines() if line.startswith("| ") and "harmonizer" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["histogram", "combat", "identity"]
    assert rows[0].rstrip().endswith("| 1.67 |")
    assert "2024-01-01" not in md


def test_markdown_failed_footnote_and_na(board):
    md = render_markdown(board, title="t")
    unseen = md.split("## Scenario: unseen")[1].split("## Legend")[0]
    table = unseen.split("### All metrics")[1]
    hist = next(line for line in table.splitlines() if line.startswith("| histogram"))
    assert "failed[^1]" in hist
    assert "[^1]: `histogram` failed on psnr, ssim: RuntimeError: CUDA out of memory while computing PSNR" in unseen
    assert "Traceback" not in md
    combat = next(line for line in table.splitlines() if line.startswith("| combat"))
    assert combat.count("n/a") == 6


def test_seed_spread_is_rendered(results):
    stochastic = results[results.harmonizer == "histogram"]
    res = pd.concat(
        [results[results.harmonizer != "histogram"]]
        + [stochastic.assign(seed=k, value=stochastic["value"] + 0.01 * k) for k in range(3)],
        ignore_index=True,
    )
    md = render_markdown(build_board(res), title="t")
    hist = next(line for line in md.split("### All metrics")[1].splitlines() if line.startswith("| histogram"))
    assert "| 3 |" in hist and "±0.010" in hist and "between-seed spread" in md


def test_rendering_is_byte_stable_and_independent_of_row_order(results, board):
    shuffled = results.sample(frac=1.0, random_state=3).reset_index(drop=True)
    other = build_board(shuffled, seed=0, baselines=("identity",))
    assert render_markdown(board, title="t") == render_markdown(other, title="t")
    assert render_csv(board) == render_csv(other)
    assert render_json(board) == render_json(other)


def test_csv_format(board):
    text = render_csv(board)
    assert "\r" not in text and text.endswith("\n")
    line = next(x for x in text.splitlines() if x.startswith("unseen,histogram,inductive,psnr,"))
    assert line == "unseen,histogram,inductive,psnr,,,,0,0,0,,,failed"


def test_json(board):
    text = render_json(board)
    assert "NaN" not in text
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert len(doc["summary"]) == len(board.summary) and doc["baselines"] == ["identity"]
    cell = next(
        c for c in doc["summary"] if (c["scenario"], c["harmonizer"], c["metric"]) == ("seen", "combat", "ssim")
    )
    assert cell["rank"] == 1 and cell["status"] == "ok"
    assert {a["axis"] for a in doc["axes"]} == {"intensity", "fidelity", "anatomy"}
    assert doc["differences"] and doc["overall"][0]["harmonizer"] == "histogram"


def test_multiple_params_get_distinct_labels(results):
    extra = results[results.harmonizer == "histogram"].assign(params_hash="ffff00000000")
    s = summarize(pd.concat([results, extra]), n_boot=10)
    assert {"histogram@hist00000000", "histogram@ffff00000000"} <= set(s.harmonizer)


def test_mixed_suites_rejected(results):
    with pytest.raises(ValueError, match="suite"):
        summarize(pd.concat([results, results.assign(suite="full")]))


def test_empty_results():
    s = summarize(to_frame([]))
    assert list(s.columns) == SUMMARY_COLUMNS and s.empty


def test_write_leaderboards(tmp_path: Path, results):
    paths = write_leaderboards(results, tmp_path / "lb", seed=0, title="t", baselines=("identity",))
    assert {p.name for p in paths.values()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.json"}
    first = {k: p.read_bytes() for k, p in paths.items()}
    write_leaderboards(results, tmp_path / "lb", seed=0, title="t", baselines=("identity",))
    assert {k: p.read_bytes() for k, p in paths.items()} == first
    write_leaderboards(results, tmp_path / "lb", seed=5, title="t", baselines=("identity",))
    assert paths["csv"].read_bytes() != first["csv"]


def test_device_dependent_metrics_get_one_column_per_device(results):
    res = results[results["metric"] == "nwd_tp"].copy()
    speed = res.assign(metric="volumes_per_s", higher_is_better="higher", device_dependent=True, axis="")
    speed.loc[speed["harmonizer"] == "histogram", "device"] = "cuda"
    res = pd.concat([res.assign(device_dependent=False), speed], ignore_index=True)
    b = build_board(res, n_boot=10)
    assert {"volumes_per_s@cpu", "volumes_per_s@cuda", "nwd_tp"} <= set(b.summary["metric"])
    md = render_markdown(b, title="t")
    assert "volumes_per_s@cuda ↑" in md and "@cpu@" not in md


def test_every_pair_of_seeds_and_scenarios_gives_distinct_generators():
    seeds = {seed_for(s, sc, m) for s, sc, m in itertools.product(range(3), ("seen", "unseen"), ("a", "b"))}
    assert len(seeds) == 12
