"""Tidy results → leaderboards (Markdown, CSV, JSON), byte-stable for a seed.

The input is the runner's tidy long table (one row per metric per test scan and fit seed, see
docs/design.md §4). Everything here is a pure function of that table, the bootstrap seed and the
baseline names: timestamps and other provenance never reach a leaderboard, floats are rounded to 6
significant digits before they are written, generators are seeded with ``hashlib`` (see
`harmbench.stats`), and all orderings are explicit, so CI can regenerate a leaderboard from the
committed per-scan scores and compare bytes.

Pipeline::

    board = build_board(results, seed=0, baselines=("identity", "scale"))
    board.summary      # scenario × harmonizer × metric: mean [interval], seeds, spread, rank
    board.axes         # scenario × harmonizer × axis: axis value and significance rank
    board.overall      # scenario × harmonizer: mean of the axis ranks
    board.differences  # method − baseline per ranked metric: interval, sign-flip p, Holm-adjusted p
    render_markdown(board, title=...); render_csv(board); render_json(board)
    write_leaderboards(results, out_dir)   # all three, atomically

Statistics (docs/statistics.md): every interval is a bootstrap over *subjects*; ranks are
significance ranks (1 + the number of methods clearly better); the summary ranks one metric (or one
combination) per axis (`harmbench.api.AXES`, read from each metric's ``axis``) and orders methods by
the mean of their axis ranks. Transductive methods form their own track. Reference rows (role other
than ``method``: the scan-rescan ceiling, or the oracle where the data has no rescans) are shown,
never ranked. One call covers one suite on one dataset: a table mixing several is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harmbench.api import AXES
from harmbench.stats import (
    BOOTSTRAP_RESAMPLES,
    compare,
    holm,
    mean_ci,
    round_sig,
    significance_ranks,
    subject_values,
)

log = logging.getLogger(__name__)

__all__ = [
    "AXIS_COLUMNS",
    "DIFFERENCE_COLUMNS",
    "OVERALL_COLUMNS",
    "SUMMARY_COLUMNS",
    "Board",
    "build_board",
    "metric_table",
    "render_csv",
    "render_json",
    "render_markdown",
    "summarize",
    "write_leaderboards",
]

SUMMARY_COLUMNS: list[str] = [
    "scenario",
    "harmonizer",
    "track",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "n_subjects",
    "n_seeds",
    "seed_sd",
    "rank",
    "status",
]
AXIS_COLUMNS: list[str] = ["scenario", "harmonizer", "track", "axis", "value", "n_subjects", "rank"]
OVERALL_COLUMNS: list[str] = ["scenario", "harmonizer", "track", "overall_rank", "n_axes"]
DIFFERENCE_COLUMNS: list[str] = [
    "scenario",
    "harmonizer",
    "metric",
    "baseline",
    "difference",
    "ci_low",
    "ci_high",
    "n_subjects",
    "p_value",
    "p_holm",
]
METRIC_COLUMNS: list[str] = ["metric", "direction", "ideal", "unit", "main", "axis"]

#: Tracks in display order: inductive methods, transductive ones (ranked among themselves), reference rows.
TRACKS: tuple[str, ...] = ("inductive", "transductive", "reference")
_ERROR_MAX_CHARS = 200
_SCENARIO_ORDER = {"seen": 0, "unseen": 1}
_ARROWS = {"higher": "↑", "lower": "↓"}
_TRANSDUCTIVE_NOTE = (
    "† transductive: sees the unseen site's test scans; ranked in its own track, among transductive methods only"
)
_REFERENCE_NOTES = {
    "ceiling": (
        "‡ rescan ceiling, not ranked: each test subject's target-site rescan scored as the output against the "
        "target-site scan — what a perfect harmonization can reach when two scans at the same site differ by "
        "noise, repositioning and segmentation variability"
    ),
    "oracle": (
        "‡ oracle, not ranked (this data has no rescans, so there is no scan-rescan ceiling): each test "
        "subject's target-site scan scored as the output against itself — an upper bound no real output reaches"
    ),
}
_NO_DATA = "—"


# ---------------------------------------------------------------- helpers


def _scenario_key(scenario: str) -> tuple[int, str]:
    return (_SCENARIO_ORDER.get(scenario, len(_SCENARIO_ORDER)), scenario)


def _axis_key(axis: str) -> tuple[int, str]:
    return (AXES.index(axis) if axis in AXES else len(AXES), axis)


def _direction(value: Any) -> str:
    """Normalise the ``higher_is_better`` column to ``higher``/``lower``/``ideal``.

    The runner writes strings, but a frame built straight from ``MetricSpec``
    carries ``True``/``False``/``None``; both are accepted.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "ideal"
    if isinstance(value, (bool, np.bool_)):
        return "higher" if value else "lower"
    text = str(value).strip().lower()
    if text in ("higher", "true"):
        return "higher"
    if text in ("lower", "false"):
        return "lower"
    if text in ("ideal", "none", ""):
        return "ideal"
    raise ValueError(f"unknown metric direction {value!r}; expected 'higher', 'lower' or 'ideal'")


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """Validate the table, give each harmonizer configuration one label and each row a track.

    A harmonizer run with several parameter sets would otherwise be pooled into one row; those get
    ``name@params_hash`` labels instead. Idempotent: a prepared table prepares to itself.
    """
    required = {"scenario", "harmonizer", "metric", "value", "status"}
    missing = required - set(results.columns)
    if missing:
        raise ValueError(f"results lack column(s) {sorted(missing)}")
    for col in ("suite", "dataset"):
        if col in results.columns and results[col].nunique(dropna=False) > 1:
            values = sorted(map(str, results[col].unique()))
            raise ValueError(f"results mix several {col}s {values}; build one leaderboard per {col}")
    df = results.copy()
    for col in ("scenario", "harmonizer", "metric", "status"):
        df[col] = df[col].astype(str)
    for col in ("subject", "site"):
        df[col] = df[col].astype(str) if col in df.columns else "*"
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    # a table without fit seeds (older results) is one seed
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype("int64") if "seed" in df else 0
    df["role"] = df["role"].fillna("method").astype(str) if "role" in df.columns else "method"
    df["axis"] = df["axis"].fillna("").astype(str) if "axis" in df.columns else ""
    transductive = df["transductive"].fillna(False).astype(bool) if "transductive" in df.columns else False
    df["track"] = np.where(df["role"] != "method", "reference", np.where(transductive, "transductive", "inductive"))
    if "device_dependent" in df.columns and "device" in df.columns:
        # Timings and memory are only comparable on one device: each device gets its own column.
        dep = df["device_dependent"].fillna(False).astype(bool) & ~df["metric"].str.contains("@", regex=False)
        df.loc[dep, "metric"] = df.loc[dep, "metric"] + "@" + df.loc[dep, "device"].astype(str)
    if "params_hash" in df.columns:
        df["params_hash"] = df["params_hash"].astype(str)
        n_params = df.groupby("harmonizer")["params_hash"].nunique()
        multi = set(n_params[n_params > 1].index)
        if multi:
            mask = df["harmonizer"].isin(multi) & ~df["harmonizer"].str.contains("@", regex=False)
            df.loc[mask, "harmonizer"] = df.loc[mask, "harmonizer"] + "@" + df.loc[mask, "params_hash"]
    return df


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _truncate(text: str, limit: int = _ERROR_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ---------------------------------------------------------------- tables


def metric_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per metric: ``metric, direction, ideal, unit, main, axis``, sorted by metric.

    ``direction`` is ``higher``, ``lower``, ``ideal``, or ``none`` for an informational metric (no
    direction and no ideal; never ranked). ``axis`` is the ranking axis the metric stands for ("" for
    none). Metadata is repeated on every results row; the first row in (metric, evaluator) order wins,
    so a disagreement between rows cannot make the output depend on row order.
    """
    if results.empty:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    df = results.copy()
    df["metric"] = df["metric"].astype(str)
    order = ["metric", "evaluator"] if "evaluator" in df.columns else ["metric"]
    df = df.sort_values(order, kind="mergesort")
    rows = []
    for metric, grp in df.groupby("metric", sort=True):
        first = grp.iloc[0]
        ideal = first["ideal"] if "ideal" in grp.columns else math.nan
        ideal = float(ideal) if ideal is not None and pd.notna(ideal) else math.nan
        direction = _direction(first["higher_is_better"]) if "higher_is_better" in grp.columns else "higher"
        if direction == "ideal" and not math.isfinite(ideal):
            direction = "none"  # informational (a chance level, say): shown, never ranked
        axis = first["axis"] if "axis" in grp.columns and pd.notna(first["axis"]) else ""
        rows.append(
            {
                "metric": metric,
                "direction": direction,
                "ideal": ideal,
                "unit": str(first["unit"]) if "unit" in grp.columns and pd.notna(first["unit"]) else "",
                "main": bool(first["main"]) if "main" in grp.columns else True,
                "axis": str(axis) if direction != "none" else "",
            }
        )
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _loss(values: Mapping[str, float], direction: str, ideal: float) -> dict[str, float]:
    """Per-subject values turned into a loss (lower is better) for ranking."""
    if direction == "higher":
        return {k: -v for k, v in values.items()}
    if direction == "lower":
        return dict(values)
    return {k: abs(v - ideal) for k, v in values.items()}


def _cell_status(statuses: set[str]) -> str:
    if "failed" in statuses:
        return "failed"
    if statuses == {"not_applicable"}:
        return "not_applicable"
    return "ok"


@dataclass(frozen=True)
class AxisDefinition:
    """How an axis is scored: the metrics it averages (per subject) and the direction of the result."""

    axis: str
    metrics: tuple[str, ...]
    direction: str  # "higher" or "lower"
    label: str


def axis_definitions(metrics: pd.DataFrame) -> list[AxisDefinition]:
    """One definition per axis that has a ranked main metric, in `AXES` order.

    An axis with several metrics (anatomy: rAVD of GM and WM) is scored per subject by the mean of its
    metrics, each taken as ``|value − ideal|`` for an ideal-valued metric and as is otherwise; when the
    metrics disagree in direction, higher-is-better ones enter negated (a loss) and a warning is logged.
    A metric whose evaluator is not in the suite simply leaves its axis out.
    """
    meta = metrics[(metrics["axis"] != "") & metrics["main"].astype(bool) & (metrics["direction"] != "none")]
    out = []
    for axis in sorted(set(meta["axis"]), key=_axis_key):
        rows = meta[meta["axis"] == axis].sort_values("metric")
        directions = {"higher" if d == "higher" else "lower" for d in rows["direction"]}
        if len(directions) > 1:
            log.warning("axis %s mixes directions (%s); its score is a loss", axis, ", ".join(rows["metric"]))
        direction = directions.pop() if len(directions) == 1 else "lower"
        parts = [
            f"|{m}{'' if not math.isfinite(i) or i == 0 else f' − {i:g}'}|" if d == "ideal" else m
            for m, d, i in zip(rows["metric"], rows["direction"], rows["ideal"], strict=True)
        ]
        label = parts[0] if len(parts) == 1 else "mean of " + ", ".join(parts)
        out.append(AxisDefinition(axis, tuple(rows["metric"]), direction, label))
    return out


@dataclass(frozen=True)
class Board:
    """Everything a leaderboard shows, as tables (see the module docstring)."""

    results: pd.DataFrame
    summary: pd.DataFrame
    axes: pd.DataFrame
    overall: pd.DataFrame
    differences: pd.DataFrame
    metrics: pd.DataFrame
    axis_definitions: tuple[AxisDefinition, ...]
    baselines: tuple[str, ...]
    seed: int


def build_board(
    results: pd.DataFrame,
    *,
    seed: int = 0,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    baselines: Sequence[str] = (),
) -> Board:
    """Summaries, significance ranks, axis ranks and paired differences against ``baselines``.

    A cell's ``mean`` is the mean over subjects of the per-subject value (the mean of the subject's
    scans, averaged over fit seeds); ``ci_low``/``ci_high`` its subject bootstrap interval; ``n`` the
    scans and ``n_subjects`` the subjects behind it; ``seed_sd`` the standard deviation over seeds of
    each seed's mean (NaN for one seed). ``status`` is ``failed`` if any row failed, else
    ``not_applicable`` if every row is, else ``ok``. Ranks are computed within a scenario and track.
    """
    df = _prepare(results)
    metrics = metric_table(df)
    meta = metrics.set_index("metric")
    ok = df[(df["status"] == "ok") & np.isfinite(df["value"])]
    per_subject, per_seed = subject_values(ok)
    track_of = df.groupby("harmonizer")["track"].first().to_dict()
    role_of = df.groupby("harmonizer")["role"].first().to_dict()

    by_cell: dict[tuple[str, str, str], dict[str, float]] = {}
    for (scenario, metric, harmonizer, subject), v in per_subject.items():
        by_cell.setdefault((scenario, metric, harmonizer), {})[str(subject)] = float(v)

    seed_means_of: dict[tuple[str, str, str], list[float]] = {}
    for (scenario, metric, harmonizer, _), v in per_seed.items():
        seed_means_of.setdefault((scenario, metric, harmonizer), []).append(float(v))

    def values(scenario: str, metric: str, harmonizer: str) -> dict[str, float]:
        return by_cell.get((scenario, metric, harmonizer), {})

    # -- per-metric summary and ranks
    rows = []
    statuses = df.groupby(["scenario", "harmonizer", "metric"], sort=False)["status"].agg(set).to_dict()
    scan_counts = ok.groupby(["scenario", "harmonizer", "metric"])[["subject", "site"]].apply(
        lambda g: len(g.drop_duplicates())
    )
    ranked_metrics = set(meta.index[meta["main"].astype(bool) & (meta["direction"] != "none")])
    ranks: dict[tuple[str, str, str], float] = {}
    for (scenario, metric), _ in df.groupby(["scenario", "metric"], sort=False):
        if metric not in ranked_metrics:
            continue
        for track in TRACKS[:2]:
            members = sorted(
                h
                for (s, h, m), st in statuses.items()
                if s == scenario and m == metric and track_of[h] == track and _cell_status(st) == "ok"
            )
            losses = {
                h: _loss(values(scenario, metric, h), meta.at[metric, "direction"], meta.at[metric, "ideal"])
                for h in members
            }
            for h, r in significance_ranks(losses, seed=seed, scenario=scenario, metric=metric, n_boot=n_boot).items():
                ranks[(scenario, h, metric)] = r
    for scenario, harmonizer, metric in sorted(statuses, key=lambda k: (_scenario_key(k[0]), k[1], k[2])):
        status = _cell_status(statuses[(scenario, harmonizer, metric)])
        mean, low, high = mean_ci(
            values(scenario, metric, harmonizer), seed=seed, scenario=scenario, metric=metric, n_boot=n_boot
        )
        seed_means = np.array(seed_means_of.get((scenario, metric, harmonizer), []), dtype=float)
        rows.append(
            {
                "scenario": scenario,
                "harmonizer": harmonizer,
                "track": track_of[harmonizer],
                "metric": metric,
                "mean": round_sig(mean),
                "ci_low": round_sig(low),
                "ci_high": round_sig(high),
                "n": int(scan_counts.get((scenario, harmonizer, metric), 0)),
                "n_subjects": sum(math.isfinite(v) for v in values(scenario, metric, harmonizer).values()),
                "n_seeds": len(seed_means),
                "seed_sd": round_sig(float(seed_means.std(ddof=1))) if seed_means.size > 1 else math.nan,
                "rank": ranks.get((scenario, harmonizer, metric), math.nan),
                "status": status,
            }
        )
    summary = _typed(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), ints=("n", "n_subjects", "n_seeds"))

    # -- axes
    definitions = axis_definitions(metrics)
    axis_rows = []
    for scenario in sorted(df["scenario"].unique(), key=_scenario_key):
        harmonizers = sorted(df.loc[df["scenario"] == scenario, "harmonizer"].unique())
        for definition in definitions:
            scores: dict[str, dict[str, float]] = {}
            for h in harmonizers:
                cells = [statuses.get((scenario, h, m)) for m in definition.metrics]
                if any(c is None or _cell_status(c) != "ok" for c in cells):
                    continue
                parts = []
                for m in definition.metrics:
                    d = meta.at[m, "direction"]
                    part = (
                        _loss(values(scenario, m, h), d, meta.at[m, "ideal"])
                        if d != "higher"
                        else values(scenario, m, h)
                    )
                    if d == "higher" and definition.direction == "lower":
                        part = {k: -v for k, v in part.items()}
                    parts.append(part)
                # a subject missing one metric of the axis has no axis score, so the pairing stays honest
                common = sorted(set.intersection(*(set(p) for p in parts)))
                scores[h] = {k: sum(p[k] for p in parts) / len(parts) for k in common}
            axis_ranks: dict[str, float] = {}
            for track in TRACKS[:2]:
                losses = {
                    h: ({k: -v for k, v in sc.items()} if definition.direction == "higher" else sc)
                    for h, sc in scores.items()
                    if track_of[h] == track
                }
                axis_ranks.update(
                    significance_ranks(
                        losses, seed=seed, scenario=scenario, metric=f"axis:{definition.axis}", n_boot=n_boot
                    )
                )
            for h, sc in scores.items():
                finite = [v for v in sc.values() if math.isfinite(v)]
                axis_rows.append(
                    {
                        "scenario": scenario,
                        "harmonizer": h,
                        "track": track_of[h],
                        "axis": definition.axis,
                        "value": round_sig(float(np.mean(finite))) if finite else math.nan,
                        "n_subjects": len(finite),
                        "rank": axis_ranks.get(h, math.nan),
                    }
                )
    axes = _typed(pd.DataFrame(axis_rows, columns=AXIS_COLUMNS), ints=("n_subjects",))

    # -- overall: mean of the axis ranks
    overall_rows = []
    for (scenario, h), grp in axes.groupby(["scenario", "harmonizer"], sort=False):
        r = grp["rank"].astype(float)
        r = r[np.isfinite(r)]
        overall_rows.append(
            {
                "scenario": scenario,
                "harmonizer": h,
                "track": track_of[h],
                "overall_rank": round_sig(float(r.mean())) if len(r) else math.nan,
                "n_axes": len(r),
            }
        )
    overall_rows.sort(
        key=lambda r: (
            _scenario_key(r["scenario"]),
            TRACKS.index(r["track"]),
            math.isnan(r["overall_rank"]),
            0.0 if math.isnan(r["overall_rank"]) else r["overall_rank"],
            r["harmonizer"],
        )
    )
    overall = _typed(pd.DataFrame(overall_rows, columns=OVERALL_COLUMNS), ints=("n_axes",))

    # -- paired differences against the baselines, Holm-corrected across methods
    diff_rows = []
    present = [b for b in dict.fromkeys(baselines) if role_of.get(b) == "method"]
    for scenario in sorted(df["scenario"].unique(), key=_scenario_key):
        for metric in sorted(ranked_metrics):
            for baseline in present:
                if _cell_status(statuses.get((scenario, baseline, metric), {"not_applicable"})) != "ok":
                    continue
                base = values(scenario, metric, baseline)
                family = []
                for h in sorted(h for h in role_of if role_of[h] == "method" and h != baseline):
                    st = statuses.get((scenario, h, metric))
                    if st is None or _cell_status(st) != "ok":
                        continue
                    c = compare(
                        values(scenario, metric, h), base, seed=seed, scenario=scenario, metric=metric, n_boot=n_boot
                    )
                    family.append((h, c))
                adjusted = holm([c.p_value for _, c in family])
                for (h, c), p_adj in zip(family, adjusted, strict=True):
                    diff_rows.append(
                        {
                            "scenario": scenario,
                            "harmonizer": h,
                            "metric": metric,
                            "baseline": baseline,
                            "difference": round_sig(c.difference),
                            "ci_low": round_sig(c.ci_low),
                            "ci_high": round_sig(c.ci_high),
                            "n_subjects": c.n,
                            "p_value": round_sig(c.p_value),
                            "p_holm": round_sig(p_adj),
                        }
                    )
    differences = _typed(pd.DataFrame(diff_rows, columns=DIFFERENCE_COLUMNS), ints=("n_subjects",))
    return Board(df, summary, axes, overall, differences, metrics, tuple(definitions), tuple(present), int(seed))


def _typed(frame: pd.DataFrame, *, ints: Sequence[str]) -> pd.DataFrame:
    for col in frame.columns:
        if col in ints:
            frame[col] = frame[col].astype("int64")
        elif col in (
            "mean",
            "ci_low",
            "ci_high",
            "seed_sd",
            "rank",
            "value",
            "overall_rank",
            "difference",
            "p_value",
            "p_holm",
        ):
            frame[col] = frame[col].astype(float)
    return frame.reset_index(drop=True)


def summarize(results: pd.DataFrame, *, seed: int = 0, n_boot: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """The per-metric summary of :func:`build_board` (columns :data:`SUMMARY_COLUMNS`)."""
    return build_board(results, seed=seed, n_boot=n_boot).summary


# ---------------------------------------------------------------- rendering


def _fmt_num(x: float) -> str:
    """Fixed 3 decimals; scientific only where fixed would read as 0.000 or be huge."""
    if not math.isfinite(x):
        return _NO_DATA
    if x != 0 and (abs(x) < 0.0005 or abs(x) >= 1e7):
        return f"{x:.2e}"
    return f"{x:.3f}"


def _fmt_rank(r: float) -> str:
    # Average ranks of integer positions are whole or .5 (or thirds for 3-way
    # ties); two decimals at most, trailing zeros dropped.
    return f"{r:.2f}".rstrip("0").rstrip(".")


def _fmt_ideal(x: float) -> str:
    return f"{x:g}"


def _header(metric: str, direction: str, ideal: float) -> str:
    if direction == "none":
        return f"{metric} (info)"
    if direction == "ideal":
        return f"{metric} →{_fmt_ideal(ideal)}"
    return f"{metric} {_ARROWS[direction]}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _failure_messages(results: pd.DataFrame, scenario: str, harmonizer: str, metric: str) -> str:
    rows = results[
        (results["scenario"] == scenario)
        & (results["harmonizer"] == harmonizer)
        & (results["metric"] == metric)
        & (results["status"] == "failed")
    ]
    errors = rows["error"] if "error" in rows.columns else pd.Series([], dtype=str)
    lines = sorted({_first_line(e) for e in errors.fillna("").astype(str)} - {""})
    return _truncate("; ".join(lines)) if lines else "(no error message recorded)"


def _unique_label(results: pd.DataFrame, col: str) -> str | None:
    if col not in results.columns:
        return None
    values = results[col].dropna().astype(str).unique()
    return values[0] if len(values) == 1 else None


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return _NO_DATA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cell_text(c: Any, with_rank: bool) -> str:
    text = f"{_fmt_num(c.mean)} [{_fmt_num(c.ci_low)}, {_fmt_num(c.ci_high)}]"
    if c.n_seeds > 1 and math.isfinite(c.seed_sd):
        text += f" ±{_fmt_num(c.seed_sd)}"
    if with_rank and math.isfinite(c.rank):
        text += f" ({_fmt_rank(c.rank)})"
    return text


def _name(h: str, track: str, role: str) -> str:
    name = _md_escape(h)
    if track == "transductive":
        name += " †"
    if track == "reference":
        name += " ‡"
    return name


def _row_order(board: Board, scenario: str) -> list[str]:
    """Harmonizers of a scenario: by track, then overall rank (unranked last), then name."""
    sub = board.summary[board.summary["scenario"] == scenario]
    tracks = sub.groupby("harmonizer")["track"].first().to_dict()
    ov = board.overall[board.overall["scenario"] == scenario].set_index("harmonizer")["overall_rank"].to_dict()

    def key(h: str) -> tuple:
        r = ov.get(h, math.nan)
        return (TRACKS.index(tracks[h]), math.isnan(r), 0.0 if math.isnan(r) else r, h)

    return sorted(tracks, key=key)


def _axes_section(board: Board, scenario: str, order: list[str], roles: Mapping[str, str]) -> list[str]:
    axes = board.axes[board.axes["scenario"] == scenario]
    definitions = [d for d in board.axis_definitions if d.axis in set(axes["axis"])]
    if not definitions:
        return []
    cell = {(r.harmonizer, r.axis): r for r in axes.itertuples(index=False)}
    ov = {r.harmonizer: r for r in board.overall[board.overall["scenario"] == scenario].itertuples(index=False)}
    tracks = board.summary[board.summary["scenario"] == scenario].groupby("harmonizer")["track"].first().to_dict()
    header = ["harmonizer"] + [f"{d.axis}: {d.label} {_ARROWS[d.direction]}" for d in definitions] + ["overall"]
    lines = ["### Ranks per axis", ""]
    for track, title in (("inductive", None), ("transductive", "Transductive track (ranked among themselves)")):
        members = [h for h in order if tracks[h] == track]
        if track == "inductive":
            members += [h for h in order if tracks[h] == "reference"]
        if not [h for h in members if tracks[h] == track]:
            continue
        if title:
            lines += [f"#### {title}", ""]
        lines += ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(definitions) + 1)]
        for h in members:
            cells = [_name(h, tracks[h], roles.get(h, "method"))]
            for d in definitions:
                c = cell.get((h, d.axis))
                if c is None or not math.isfinite(c.value):
                    cells.append(_NO_DATA)
                else:
                    cells.append(_fmt_num(c.value) + (f" ({_fmt_rank(c.rank)})" if math.isfinite(c.rank) else ""))
            o = ov.get(h)
            cells.append(f"{o.overall_rank:.2f}" if o is not None and math.isfinite(o.overall_rank) else _NO_DATA)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _differences_section(board: Board, scenario: str, order: list[str]) -> list[str]:
    diffs = board.differences[board.differences["scenario"] == scenario]
    if diffs.empty:
        return []
    axis_metrics = [m for d in board.axis_definitions for m in d.metrics]
    shown = [m for m in axis_metrics if m in set(diffs["metric"])] or sorted(set(diffs["metric"]))
    baselines = [b for b in board.baselines if b in set(diffs["baseline"])]
    cell = {(r.harmonizer, r.metric, r.baseline): r for r in diffs.itertuples(index=False)}
    header = ["harmonizer", "metric"]
    for b in baselines:
        header += [f"Δ vs {b} [95 % CI]", f"p vs {b} (Holm)"]
    lines = [
        "### Differences against the baselines",
        "",
        "| " + " | ".join(header) + " |",
        "|:---|:---|" + "---:|" * (2 * len(baselines)),
    ]
    for h in order:
        for m in shown:
            if not any((h, m, b) in cell for b in baselines):
                continue
            cells = [_md_escape(h), m]
            for b in baselines:
                c = cell.get((h, m, b))
                if c is None:
                    cells += [_NO_DATA, _NO_DATA]
                else:
                    cells += [
                        f"{_fmt_num(c.difference)} [{_fmt_num(c.ci_low)}, {_fmt_num(c.ci_high)}]",
                        _fmt_p(c.p_holm),
                    ]
            lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_markdown(board: Board, *, title: str) -> str:
    """Render the Markdown leaderboard.

    One ``## Scenario: <name>`` section per scenario with: the per-axis ranks and the overall rank
    (inductive methods with the reference row, then the transductive track); the paired differences
    of the axis metrics against each baseline; and the full per-metric table, each cell
    ``mean [ci_low, ci_high] ±seed_sd (rank)``. ``n/a`` marks cells not applicable, ``failed[^k]``
    failed cells with a footnote (harmonizer, metrics, first line of the error). A legend closes it.
    """
    df = board.results
    meta = board.metrics.set_index("metric")
    main_all = [m for m in board.metrics["metric"] if bool(meta.at[m, "main"])]
    roles = df.groupby("harmonizer")["role"].first().to_dict()
    reference_roles: set[str] = set()

    lines: list[str] = [f"# {title}", ""]
    suite, dataset = _unique_label(df, "suite"), _unique_label(df, "dataset")
    context = [f"suite `{suite}`" if suite else "", f"dataset `{dataset}`" if dataset else ""]
    if any(context):
        lines += [", ".join(c for c in context if c).capitalize() + ".", ""]

    cell = {(r.scenario, r.harmonizer, r.metric): r for r in board.summary.itertuples(index=False)}
    footnote_no = 0
    used_no_data = any_seeds = False
    for scenario in sorted(board.summary["scenario"].unique(), key=_scenario_key):
        sub = board.summary[board.summary["scenario"] == scenario]
        main = [m for m in main_all if m in set(sub["metric"])]
        order = _row_order(board, scenario)
        tracks = sub.groupby("harmonizer")["track"].first().to_dict()
        lines += [f"## Scenario: {scenario}", ""]
        lines += _axes_section(board, scenario, order, roles)
        lines += _differences_section(board, scenario, order)

        header = ["harmonizer", "n", "seeds"]
        header += [_header(m, meta.at[m, "direction"], meta.at[m, "ideal"]) for m in main]
        table = ["| " + " | ".join(header) + " |", "|:---|---:|---:|" + "---:|" * len(main)]
        notes: list[str] = []
        for h in order:
            row = [cell[(scenario, h, m)] for m in main if (scenario, h, m) in cell]
            n_seeds = max((int(c.n_seeds) for c in row), default=0)
            any_seeds |= n_seeds > 1
            cells = [_name(h, tracks[h], roles.get(h, "method")), str(max((int(c.n) for c in row), default=0))]
            cells.append(str(n_seeds))
            if tracks[h] == "reference":
                reference_roles.add(roles.get(h, "oracle"))
            footnote_for: dict[str, int] = {}
            failed_metrics: dict[int, list[str]] = {}
            for m in main:
                c = cell.get((scenario, h, m))
                if c is None:
                    cells.append(_NO_DATA)
                    used_no_data = True
                elif c.status == "not_applicable":
                    cells.append("n/a")
                elif c.status == "failed":
                    msg = _failure_messages(df, scenario, h, m)
                    if msg not in footnote_for:
                        footnote_no += 1
                        footnote_for[msg] = footnote_no
                    k = footnote_for[msg]
                    failed_metrics.setdefault(k, []).append(m)
                    cells.append(f"failed[^{k}]")
                elif not math.isfinite(c.mean):
                    cells.append(_NO_DATA)
                    used_no_data = True
                else:
                    cells.append(_cell_text(c, with_rank=True))
            table.append("| " + " | ".join(cells) + " |")
            for msg, k in footnote_for.items():
                notes.append(f"[^{k}]: `{h}` failed on {', '.join(failed_metrics[k])}: {msg}")

        lines += ["### All metrics", "", *table, ""]
        if "transductive" in tracks.values():
            lines += [_TRANSDUCTIVE_NOTE, ""]
        for role in sorted(reference_roles & {r for h, r in roles.items() if tracks.get(h) == "reference"}):
            lines += [_REFERENCE_NOTES.get(role, f"‡ {role}, not ranked: a reference row"), ""]
        if notes:
            lines += [*notes, ""]

    lines += ["## Legend", ""]
    lines.append(
        "Cells: mean over test subjects (each subject's scans averaged first) [95 % bootstrap interval over "
        "subjects] (rank; 1 is best). A rank is 1 + the number of methods of the same track whose paired "
        "difference interval lies entirely on the better side: methods whose difference interval covers 0 "
        "share a rank. See docs/statistics.md."
    )
    lines.append("")
    if board.axis_definitions:
        lines.append(
            "- `overall`: mean of the axis ranks the method has; one figure per axis, so correlated metrics "
            "of one axis do not count twice."
        )
    if board.baselines:
        lines.append(
            "- `Δ vs <baseline>`: paired mean difference method − baseline over the subjects both have, with its "
            "subject bootstrap interval; `p … (Holm)`: two-sided sign-flip permutation test on the subject "
            "differences, Holm-adjusted across the methods compared with that baseline on that metric."
        )
    for m in main_all:
        direction = meta.at[m, "direction"]
        unit = meta.at[m, "unit"] or "unitless"
        if direction == "none":
            how = "informational, not ranked"
        elif direction == "ideal":
            how = f"closer to {_fmt_ideal(meta.at[m, 'ideal'])} is better"
        else:
            how = f"{direction} is better"
        axis = f"; axis {meta.at[m, 'axis']}" if meta.at[m, "axis"] else ""
        lines.append(f"- `{_header(m, direction, meta.at[m, 'ideal'])}`: {how}; unit: {unit}{axis}.")
    lines.append("- `n`: test scans behind the row (the most over its main metrics); `seeds`: fit seeds averaged.")
    if any_seeds:
        lines.append("- `±`: between-seed spread, the standard deviation over fit seeds of each seed's mean.")
    lines.append("- `n/a`: not applicable to this scenario; `failed`: the cell raised, see its footnote.")
    if any(str(m).count("@") for m in main_all):
        lines.append("- `metric@device`: timing or memory measured on that device; devices never share a column.")
    if used_no_data:
        lines.append(f"- `{_NO_DATA}`: no finite value.")
    return "\n".join(lines) + "\n"


def render_csv(board: Board) -> str:
    """The per-metric summary as CSV: columns :data:`SUMMARY_COLUMNS`, ``\\n`` line ends, NaN as empty."""
    return board.summary[SUMMARY_COLUMNS].to_csv(index=False, lineterminator="\n", float_format="%.6g", na_rep="")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def render_json(board: Board) -> str:
    """The leaderboard as JSON: sorted keys, indent 2, NaN as ``null``.

    Layout: ``{"format", "seed", "baselines", "summary", "axes", "overall", "differences", "metrics",
    "axis_definitions"}``; lists keep the leaderboard order that sorted keys would lose.
    """
    doc = {
        "format": "harmbench-leaderboard/2",
        "seed": board.seed,
        "baselines": list(board.baselines),
        "summary": _records(board.summary[SUMMARY_COLUMNS]),
        "axes": _records(board.axes[AXIS_COLUMNS]),
        "overall": _records(board.overall[OVERALL_COLUMNS]),
        "differences": _records(board.differences[DIFFERENCE_COLUMNS]),
        "metrics": _records(board.metrics[METRIC_COLUMNS]),
        "axis_definitions": [
            {"axis": d.axis, "metrics": list(d.metrics), "direction": d.direction, "label": d.label}
            for d in board.axis_definitions
        ],
    }
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same directory so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_leaderboards(
    results: pd.DataFrame,
    out_dir: Path,
    *,
    seed: int = 0,
    title: str = "harmbench leaderboard",
    baselines: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` into ``out_dir``.

    Each file is replaced atomically. Returns ``{"md": ..., "csv": ..., "json": ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    board = build_board(results, seed=seed, baselines=baselines)
    texts: Mapping[str, str] = {
        "md": render_markdown(board, title=title),
        "csv": render_csv(board),
        "json": render_json(board),
    }
    paths: dict[str, Path] = {}
    for ext, text in texts.items():
        path = out_dir / f"leaderboard.{ext}"
        _atomic_write(path, text)
        paths[ext] = path
    return paths
