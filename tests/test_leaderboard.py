"""Tests for harmbench.leaderboard: summaries, ranks and byte-stable rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmbench.leaderboard import (
    SUMMARY_COLUMNS,
    mean_rank,
    metric_table,
    rank,
    render_csv,
    render_json,
    render_markdown,
    summarize,
    write_leaderboards,
)

# evaluator -> [(metric, direction, ideal, unit, main)]
EVALUATORS = {
    "wasserstein": [("nwd_tp", "lower", 0.0, "", True), ("nwd_ip", "ideal", 1.0, "", True)],
    "paired": [("psnr", "higher", math.nan, "dB", True), ("ssim", "higher", 1.0, "", False)],
}
SUBJECTS = ["s01", "s02", "s03", "s04", "s05", "s06"]


def _c(v: float) -> list[float]:
    return [v] * len(SUBJECTS)


# Per scenario and harmonizer: the per-subject values of every metric, or a status for the whole evaluator.
# seen: nwd_tp lower → histogram(0.1) < ssimh(0.2) < none(0.5);
#       nwd_ip ideal 1 → histogram(0.9) and ssimh(1.1) tie at distance 0.1 (1.5 each), none(0.5) → 3;
#       psnr higher → ssimh(25) > histogram(23) > none(20).
# unseen: histogram's paired evaluator failed; ssimh is not applicable.
VALUES = {
    ("seen", "none"): {"nwd_tp": _c(0.5), "nwd_ip": _c(0.5), "psnr": _c(20), "ssim": _c(0.8)},
    ("seen", "histogram"): {
        "nwd_tp": [0.06, 0.08, 0.1, 0.1, 0.12, 0.14],
        "nwd_ip": _c(0.9),
        "psnr": [21.5, 22, 23, 23, 24, 24.5],
        "ssim": _c(0.9),
    },
    ("seen", "ssimh"): {"nwd_tp": _c(0.2), "nwd_ip": _c(1.1), "psnr": _c(25), "ssim": _c(0.95)},
    ("unseen", "none"): {"nwd_tp": [0.6, 0.7, 0.8, 0.6, 0.7, 0.8], "nwd_ip": _c(0.4), "psnr": _c(19), "ssim": _c(0.7)},
    ("unseen", "histogram"): {"nwd_tp": _c(0.3), "nwd_ip": _c(0.95), "paired": "failed"},
    ("unseen", "ssimh"): {"wasserstein": "not_applicable", "paired": "not_applicable"},
}
ERRORS = {
    "failed": "RuntimeError: CUDA out of memory while computing PSNR\nTraceback (most recent call last): ...",
    "not_applicable": "ssimh cannot handle unseen sites",
}


def _row(scenario, harmonizer, evaluator, metric, direction, ideal, unit, main, subject, site, value, status, error):
    return {
        "suite": "quick",
        "dataset": "sim",
        "scenario": scenario,
        "harmonizer": harmonizer,
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
        "transductive": harmonizer == "ssimh",
        "seed": 0,
        "device": "cpu",
        "harmbench_version": "0.1.0",
        "harmonizer_version": "1.0",
        "evaluator_version": "1.0",
        "started": "2024-01-01T00:00:00",
        "finished": "2024-01-01T00:00:01",
    }


def make_results(values=VALUES) -> pd.DataFrame:
    rows = []
    for (scenario, harmonizer), spec in values.items():
        site = "siteB" if scenario == "seen" else "siteC"
        for evaluator, metrics in EVALUATORS.items():
            for metric, direction, ideal, unit, main in metrics:
                common = (scenario, harmonizer, evaluator, metric, direction, ideal, unit, main)
                status = spec.get(evaluator)
                if status is not None:
                    rows.append(_row(*common, "*", "*", math.nan, status, ERRORS[status]))
                    continue
                for subject, value in zip(SUBJECTS, spec[metric], strict=True):
                    rows.append(_row(*common, subject, site, value, "ok", ""))
    columns = list(_row(*("x",) * 4, *(None,) * 4, "*", "*", 0.0, "ok", "").keys())
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return make_results()


@pytest.fixture(scope="module")
def summary(results) -> pd.DataFrame:
    return summarize(results, seed=0)


def _cell(frame: pd.DataFrame, scenario: str, harmonizer: str, metric: str) -> pd.Series:
    sel = frame[(frame.scenario == scenario) & (frame.harmonizer == harmonizer) & (frame.metric == metric)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_summary_columns_and_order(summary):
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert render_csv(summary).splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    keys = list(zip(summary.scenario, summary.harmonizer, summary.metric, strict=True))
    assert keys == sorted(keys, key=lambda k: ({"seen": 0, "unseen": 1}[k[0]], k[1], k[2]))
    assert len(summary) == 2 * 3 * 4


def test_scenario_order_seen_unseen_then_alphabetical(results):
    extra = results[results.scenario == "seen"].assign(scenario="aaa")
    s = summarize(pd.concat([extra, results]), n_boot=10)
    assert list(dict.fromkeys(s.scenario)) == ["seen", "unseen", "aaa"]


def test_mean_n_status(summary):
    c = _cell(summary, "seen", "histogram", "nwd_tp")
    assert c["mean"] == pytest.approx(0.1) and c["n"] == 6 and c["status"] == "ok"
    c = _cell(summary, "seen", "histogram", "psnr")
    assert c["mean"] == pytest.approx(23.0) and c["n"] == 6
    c = _cell(summary, "unseen", "histogram", "psnr")
    assert c["status"] == "failed" and c["n"] == 0 and math.isnan(c["mean"])
    c = _cell(summary, "unseen", "ssimh", "nwd_ip")
    assert c["status"] == "not_applicable" and c["n"] == 0 and math.isnan(c["mean"])


def test_mean_ignores_nonfinite_and_failed_rows_any_failure_fails_cell(results):
    df = results.copy()
    sel = (df.scenario == "seen") & (df.harmonizer == "none") & (df.metric == "psnr")
    idx = df.index[sel]
    df.loc[idx[0], "value"] = math.nan
    s = summarize(df, n_boot=10)
    c = _cell(s, "seen", "none", "psnr")
    assert c["n"] == 5 and c["status"] == "ok"
    df.loc[idx[1], "status"] = "failed"
    c = _cell(summarize(df, n_boot=10), "seen", "none", "psnr")
    assert c["status"] == "failed"


def test_ci_contains_mean_and_is_deterministic(results, summary):
    ok = summary[summary.n > 0]
    assert (ok.ci_low <= ok["mean"]).all() and (ok["mean"] <= ok.ci_high).all()
    c = _cell(summary, "seen", "histogram", "psnr")
    assert c.ci_low < c["mean"] < c.ci_high
    assert render_csv(summarize(results, seed=0)) == render_csv(summary)
    other = _cell(summarize(results, seed=1), "seen", "histogram", "psnr")
    assert (other.ci_low, other.ci_high) != (c.ci_low, c.ci_high)


def test_ci_of_cell_independent_of_other_cells(results, summary):
    only = results[(results.harmonizer == "histogram") & (results.scenario == "seen")]
    a = _cell(summarize(only), "seen", "histogram", "nwd_tp")
    b = _cell(summary, "seen", "histogram", "nwd_tp")
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


def test_identical_values_get_identical_intervals_across_harmonizers(results):
    """The bootstrap is paired: every harmonizer of a scenario resamples the same test scans."""
    copy = results[results.harmonizer == "histogram"].copy()
    copy["harmonizer"] = "histogram-twin"
    summary = summarize(pd.concat([results, copy], ignore_index=True))
    a = _cell(summary, "seen", "histogram", "nwd_tp")
    b = _cell(summary, "seen", "histogram-twin", "nwd_tp")
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


def test_values_rounded_to_six_significant_digits(results):
    df = results.copy()
    sel = (df.scenario == "seen") & (df.harmonizer == "none") & (df.metric == "psnr")
    df.loc[sel, "value"] = 1.0 / 3.0
    c = _cell(summarize(df, n_boot=10), "seen", "none", "psnr")
    assert c["mean"] == 0.333333


def _ranks(results, summary) -> dict[tuple[str, str, str], float]:
    r = rank(summary, results)
    return {(a, b, c): d for a, b, c, d in r.itertuples(index=False)}


def test_ranks_respect_direction_and_average_ties(results, summary):
    r = _ranks(results, summary)
    # lower is better
    assert [r["seen", h, "nwd_tp"] for h in ("histogram", "ssimh", "none")] == [1, 2, 3]
    # higher is better
    assert [r["seen", h, "psnr"] for h in ("ssimh", "histogram", "none")] == [1, 2, 3]
    # closer to ideal 1: 0.9 and 1.1 tie (float noise must not break it), 0.5 last
    assert [r["seen", h, "nwd_ip"] for h in ("histogram", "ssimh", "none")] == [1.5, 1.5, 3]
    # non-main metrics are not ranked
    assert not any(m == "ssim" for (_, _, m) in r)


def test_ideal_metric_ranks_by_distance_not_value():
    values = {
        ("seen", "a"): {"nwd_tp": _c(0.1), "nwd_ip": _c(1.02), "psnr": _c(20), "ssim": _c(0.9)},
        ("seen", "b"): {"nwd_tp": _c(0.1), "nwd_ip": _c(0.7), "psnr": _c(20), "ssim": _c(0.9)},
        ("seen", "c"): {"nwd_tp": _c(0.1), "nwd_ip": _c(1.2), "psnr": _c(20), "ssim": _c(0.9)},
    }
    res = make_results(values)
    r = _ranks(res, summarize(res, n_boot=10))
    assert [r["seen", h, "nwd_ip"] for h in "acb"] == [1, 2, 3]
    # three-way tie on the other metrics
    assert {r["seen", h, "nwd_tp"] for h in "abc"} == {2.0}


def test_failed_and_na_cells_unranked_and_mean_rank(results, summary):
    ranks = rank(summary, results)
    r = {(a, b, c): d for a, b, c, d in ranks.itertuples(index=False)}
    assert math.isnan(r["unseen", "histogram", "psnr"])
    assert math.isnan(r["unseen", "ssimh", "nwd_tp"])
    # unseen: nwd_tp histogram 1, none 2; nwd_ip histogram 1 (|0.05|), none 2; psnr only none → 1
    assert r["unseen", "none", "psnr"] == 1
    mr = mean_rank(ranks)
    unseen = mr[mr.scenario == "unseen"]
    assert list(unseen.harmonizer) == ["histogram", "none", "ssimh"]
    assert list(unseen.n_ranked) == [2, 3, 0]
    assert unseen.mean_rank.iloc[0] == 1.0
    assert unseen.mean_rank.iloc[1] == pytest.approx(5 / 3, abs=1e-5)
    assert math.isnan(unseen.mean_rank.iloc[2])
    seen = mr[mr.scenario == "seen"]
    # histogram (1 + 1.5 + 2) / 3 = 1.5; ssimh (2 + 1.5 + 1) / 3 = 1.5; none 3 → name breaks the tie
    assert list(seen.harmonizer) == ["histogram", "ssimh", "none"]


def test_markdown_content(results, summary):
    md = render_markdown(results, summary, title="Test board")
    assert md.startswith("# Test board\n")
    assert "## Scenario: seen" in md and "## Scenario: unseen" in md
    assert md.index("## Scenario: seen") < md.index("## Scenario: unseen")
    assert "nwd_tp ↓" in md and "psnr ↑" in md and "nwd_ip →1" in md
    header = next(line for line in md.splitlines() if line.startswith("| harmonizer"))
    assert "ssim " not in header  # not a main metric
    assert "0.100 [" in md
    assert "| mean rank |" in md
    seen = md.split("## Scenario: seen")[1].split("## Scenario: unseen")[0]
    rows = [line for line in seen.splitlines() if line.startswith("| ") and "harmonizer" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["histogram", "ssimh †", "none"]
    assert "(1.5)" in seen


def test_markdown_failed_footnote_na_and_transductive(results, summary):
    md = render_markdown(results, summary, title="t")
    unseen = md.split("## Scenario: unseen")[1].split("## Legend")[0]
    hist = next(line for line in unseen.splitlines() if line.startswith("| histogram"))
    assert "failed[^1]" in hist
    assert "[^1]: `histogram` failed on psnr: RuntimeError: CUDA out of memory while computing PSNR" in unseen
    assert "Traceback" not in md  # first line only
    ssimh = next(line for line in unseen.splitlines() if line.startswith("| ssimh"))
    assert ssimh.count("n/a") == 3
    assert "† transductive: sees the unseen site's test scans" in md
    legend = md.split("## Legend")[1]
    assert "`psnr ↑`" in legend and "dB" in legend and "`n`" in legend
    assert "2024-01-01" not in md


def test_long_error_truncated(results):
    df = results.copy()
    df.loc[df.status == "failed", "error"] = "E" * 1000
    md = render_markdown(df, summarize(df, n_boot=10), title="t")
    note = next(line for line in md.splitlines() if line.startswith("[^1]:"))
    assert len(note) < 300 and note.endswith("…")


def test_rendering_is_byte_stable(results, summary):
    shuffled = results.sample(frac=1.0, random_state=3).reset_index(drop=True)
    s2 = summarize(shuffled, seed=0)
    assert render_markdown(results, summary, title="t") == render_markdown(shuffled, s2, title="t")
    assert render_csv(summary) == render_csv(s2)
    r1, r2 = rank(summary, results), rank(s2, shuffled)
    m = metric_table(results)
    assert render_json(summary, r1, metrics=m) == render_json(s2, r2, metrics=m)


def test_csv_format(summary):
    text = render_csv(summary)
    assert "\r" not in text and text.endswith("\n")
    line = next(x for x in text.splitlines() if x.startswith("unseen,histogram,psnr,"))
    assert line == "unseen,histogram,psnr,,,,0,failed"


def test_json(results, summary):
    text = render_json(summary, rank(summary, results), metrics=metric_table(results))
    assert "NaN" not in text
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert len(doc["summary"]) == len(summary)
    cell = next(c for c in doc["summary"] if (c["scenario"], c["harmonizer"], c["metric"]) == ("seen", "ssimh", "psnr"))
    assert cell["rank"] == 1 and cell["status"] == "ok"
    failed = next(
        c for c in doc["summary"] if (c["scenario"], c["harmonizer"], c["metric"]) == ("unseen", "histogram", "psnr")
    )
    assert failed["mean"] is None and failed["rank"] is None
    assert {m["metric"]: m["direction"] for m in doc["metrics"]}["nwd_ip"] == "ideal"


def test_multiple_params_get_distinct_labels(results):
    extra = results[results.harmonizer == "histogram"].assign(params_hash="ffff00000000")
    s = summarize(pd.concat([results, extra]), n_boot=10)
    assert {"histogram@hist00000000", "histogram@ffff00000000"} <= set(s.harmonizer)


def test_mixed_suites_rejected(results):
    with pytest.raises(ValueError, match="suite"):
        summarize(pd.concat([results, results.assign(suite="full")]))


def test_empty_results():
    empty = make_results({})
    s = summarize(empty)
    assert list(s.columns) == SUMMARY_COLUMNS and s.empty
    assert render_csv(s) == ",".join(SUMMARY_COLUMNS) + "\n"


def test_write_leaderboards(tmp_path: Path, results):
    paths = write_leaderboards(results, tmp_path / "lb", seed=0, title="t")
    assert set(paths) == {"md", "csv", "json"}
    assert {p.name for p in paths.values()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.json"}
    first = {k: p.read_bytes() for k, p in paths.items()}
    assert sorted(x.name for x in (tmp_path / "lb").iterdir()) == [
        "leaderboard.csv",
        "leaderboard.json",
        "leaderboard.md",
    ]
    write_leaderboards(results, tmp_path / "lb", seed=0, title="t")
    assert {k: p.read_bytes() for k, p in paths.items()} == first
    write_leaderboards(results, tmp_path / "lb", seed=5, title="t")
    assert paths["csv"].read_bytes() != first["csv"]
    assert np.isfinite(pd.read_csv(paths["csv"])["mean"]).sum() > 0


# -- oracle rows, informational metrics, device-dependent metrics -------------------------------------


def test_oracle_row_is_shown_last_and_never_ranked_even_when_best(results):
    res = results.copy()
    res["role"] = "method"
    oracle = res[res["harmonizer"] == "histogram"].copy()
    oracle["harmonizer"], oracle["role"], oracle["status"] = "oracle", "oracle", "ok"
    oracle["value"] = oracle["value"].fillna(0.0) * 0.0  # better than everyone on nwd_tp
    res = pd.concat([res, oracle], ignore_index=True)
    summary = summarize(res, n_boot=10)
    ranks = rank(summary, res)
    assert ranks.loc[ranks["harmonizer"] == "oracle", "rank"].isna().all()
    r = _ranks(res, summary)
    assert r["seen", "histogram", "nwd_tp"] == 1  # the oracle does not push methods down
    md = render_markdown(res, summary, title="t")
    seen = md.split("## Scenario: seen")[1].split("## Scenario")[0]
    rows = [line for line in seen.splitlines() if line.startswith("| ") and "harmonizer" not in line]
    assert rows[-1].startswith("| oracle ‡ |") and rows[-1].rstrip().endswith("| — |")
    assert "‡ oracle, not ranked" in md


def test_informational_metric_is_shown_but_not_ranked(results):
    res = results.copy()
    chance = res[res["metric"] == "psnr"].copy()
    chance["metric"], chance["higher_is_better"], chance["ideal"], chance["value"] = "site_chance", None, math.nan, 0.5
    res = pd.concat([res, chance], ignore_index=True)
    table = metric_table(res).set_index("metric")
    assert table.at["site_chance", "direction"] == "none"
    summary = summarize(res, n_boot=10)
    ranks = rank(summary, res)
    assert ranks.loc[ranks["metric"] == "site_chance", "rank"].isna().all()
    md = render_markdown(res, summary, title="t")
    assert "site_chance (info)" in md and "informational, not ranked" in md


def test_device_dependent_metrics_get_one_column_per_device(results):
    res = results[results["metric"] == "nwd_tp"].copy()
    speed = res.copy()
    speed["metric"], speed["higher_is_better"], speed["device_dependent"] = "volumes_per_s", "higher", True
    speed.loc[speed["harmonizer"] == "histogram", "device"] = "cuda"
    res["device_dependent"] = False
    res = pd.concat([res, speed], ignore_index=True)
    summary = summarize(res, n_boot=10)
    metrics = set(summary["metric"])
    assert {"volumes_per_s@cpu", "volumes_per_s@cuda", "nwd_tp"} <= metrics and "volumes_per_s" not in metrics
    assert set(summary.loc[summary["metric"] == "volumes_per_s@cuda", "harmonizer"]) == {"histogram"}
    md = render_markdown(res, summary, title="t")
    assert "volumes_per_s@cuda ↑" in md and "volumes_per_s@cpu ↑" in md and "@cpu@" not in md
