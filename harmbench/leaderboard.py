"""Tidy results → leaderboards (Markdown, CSV, JSON), byte-stable for a seed.

The input is the runner's tidy long table (one row per metric per test scan,
see docs/design.md §4). Everything here is a pure function of that table and the
seed: timestamps and other provenance never reach a leaderboard, floats are
rounded to 6 significant digits before they are written, bootstrap generators
are seeded with ``hashlib`` (Python's ``hash`` is salted per process), and all
orderings are explicit, so CI can regenerate a leaderboard and compare bytes.

Pipeline::

    summary = summarize(results, seed=0)   # scenario × harmonizer × metric
    ranks = rank(summary, results)         # per-main-metric ranks
    render_markdown(results, summary, title=...)
    render_csv(summary)
    render_json(summary, ranks, metrics=metric_table(results))
    write_leaderboards(results, out_dir)   # all three, atomically

One call covers one suite on one dataset: ``summarize`` refuses a table that
mixes several, since pooling them would average unrelated scans.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MEAN_RANK_COLUMNS",
    "RANK_COLUMNS",
    "SUMMARY_COLUMNS",
    "mean_rank",
    "metric_table",
    "rank",
    "render_csv",
    "render_json",
    "render_markdown",
    "summarize",
    "write_leaderboards",
]

SUMMARY_COLUMNS: list[str] = ["scenario", "harmonizer", "metric", "mean", "ci_low", "ci_high", "n", "status"]
RANK_COLUMNS: list[str] = ["scenario", "harmonizer", "metric", "rank"]
MEAN_RANK_COLUMNS: list[str] = ["scenario", "harmonizer", "mean_rank", "n_ranked"]
METRIC_COLUMNS: list[str] = ["metric", "direction", "ideal", "unit", "main"]

_SIG_DIGITS = 6
_ERROR_MAX_CHARS = 200
_SCENARIO_ORDER = {"seen": 0, "unseen": 1}
_ARROWS = {"higher": "↑", "lower": "↓"}
_TRANSDUCTIVE_NOTE = "† transductive: sees the unseen site's test scans"
_ORACLE_NOTE = (
    "‡ oracle, not ranked: each test subject's real target-site scan scored as if it were the output — "
    "the ceiling a perfect harmonization reaches on these metrics (for a downstream model trained on the "
    "target site, its own score on target-site scans)"
)
_NO_DATA = "—"


# ---------------------------------------------------------------- helpers


def _round_sig(x: float, digits: int = _SIG_DIGITS) -> float:
    """Round to ``digits`` significant digits; NaN/inf pass through.

    Going through the decimal string makes the result independent of the
    summation order noise in the last bits; ``+ 0.0`` folds ``-0.0`` into
    ``0.0`` so it never prints as ``-0``.
    """
    x = float(x)
    if not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}") + 0.0


def _scenario_key(scenario: str) -> tuple[int, str]:
    return (_SCENARIO_ORDER.get(scenario, len(_SCENARIO_ORDER)), scenario)


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


def _seed_for(seed: int, *keys: str) -> int:
    """Derive a 64-bit generator seed from the run seed and the cell's identity."""
    blob = json.dumps([int(seed), *keys], ensure_ascii=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    n = values.size
    if n == 0:
        return math.nan, math.nan
    if n == 1 or n_boot <= 0:
        # One observation (or no resampling asked): nothing to resample, the
        # interval collapses onto the value rather than inventing spread.
        m = float(values.mean())
        return m, m
    idx = rng.integers(0, n, size=(n_boot, n))
    means = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """Validate the table and give each harmonizer configuration one label.

    A harmonizer run with several parameter sets would otherwise be pooled
    into one row; those get ``name@params_hash`` labels instead.
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
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    if "device_dependent" in df.columns and "device" in df.columns:
        # Timings and memory are only comparable on one device: each device gets its own column.
        # (idempotent: the render functions prepare a table that may already be prepared)
        dep = df["device_dependent"].fillna(False).astype(bool) & ~df["metric"].str.contains("@", regex=False)
        df.loc[dep, "metric"] = df.loc[dep, "metric"] + "@" + df.loc[dep, "device"].astype(str)
    if "params_hash" in df.columns:
        df["params_hash"] = df["params_hash"].astype(str)
        n_params = df.groupby("harmonizer")["params_hash"].nunique()
        multi = set(n_params[n_params > 1].index)
        if multi:
            mask = df["harmonizer"].isin(multi)
            df.loc[mask, "harmonizer"] = df.loc[mask, "harmonizer"] + "@" + df.loc[mask, "params_hash"]
    return df


def _oracle_set(results: pd.DataFrame) -> set[str]:
    """Harmonizer labels of reference rows (role ``oracle``): shown, never ranked."""
    if "role" not in results.columns:
        return set()
    return {str(h) for h in results.loc[results["role"].astype(str) == "oracle", "harmonizer"].unique()}


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _truncate(text: str, limit: int = _ERROR_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ---------------------------------------------------------------- tables


def metric_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per metric: ``metric, direction, ideal, unit, main``, sorted by metric.

    ``direction`` is ``higher``, ``lower``, ``ideal``, or ``none`` for an
    informational metric (no direction and no ideal; never ranked). Metadata is repeated on
    every results row; the first row in (metric, evaluator) order wins, so a
    disagreement between rows cannot make the output depend on row order.
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
        rows.append(
            {
                "metric": metric,
                "direction": direction,
                "ideal": ideal,
                "unit": str(first["unit"]) if "unit" in grp.columns and pd.notna(first["unit"]) else "",
                "main": bool(first["main"]) if "main" in grp.columns else True,
            }
        )
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def summarize(results: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """Aggregate the tidy results to one row per scenario × harmonizer × metric.

    Columns are exactly :data:`SUMMARY_COLUMNS`. ``mean`` and ``n`` use rows
    with status ``ok`` and a finite value; ``ci_low``/``ci_high`` are the 95 %
    percentile bootstrap interval of that mean over ``n_boot`` resamples, from
    a generator seeded by (seed, scenario, harmonizer, metric) so adding or
    removing another cell never shifts this one's interval. ``status`` is
    ``failed`` if any row failed, else ``not_applicable`` if every row is, else
    ``ok`` (``ok`` with ``n == 0`` has a NaN mean). Rows are sorted by scenario
    (``seen``, ``unseen``, then the rest alphabetically), harmonizer, metric;
    floats are rounded to 6 significant digits.
    """
    df = _prepare(results)
    rows = []
    groups = {key: grp for key, grp in df.groupby(["scenario", "harmonizer", "metric"], sort=False)}
    for scenario, harmonizer, metric in sorted(groups, key=lambda k: (_scenario_key(k[0]), k[1], k[2])):
        grp = groups[(scenario, harmonizer, metric)]
        statuses = set(grp["status"])
        if "failed" in statuses:
            status = "failed"
        elif statuses == {"not_applicable"}:
            status = "not_applicable"
        else:
            status = "ok"
        # Ordered by test scan and resampled with a generator that does not depend on the harmonizer: every
        # harmonizer of a scenario draws the same test scans (a paired bootstrap), and the interval does not
        # depend on the order the runner happened to write (or resume) rows in.
        ok = grp[grp["status"] == "ok"].sort_values(["subject", "site"], kind="mergesort")
        vals = ok["value"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        rng = np.random.default_rng(_seed_for(seed, scenario, metric))
        low, high = _bootstrap_ci(vals, rng, n_boot)
        mean = float(vals.mean()) if vals.size else math.nan
        rows.append(
            {
                "scenario": scenario,
                "harmonizer": harmonizer,
                "metric": metric,
                "mean": _round_sig(mean),
                "ci_low": _round_sig(low),
                "ci_high": _round_sig(high),
                "n": int(vals.size),
                "status": status,
            }
        )
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    out["n"] = out["n"].astype("int64")
    for col in ("mean", "ci_low", "ci_high"):
        out[col] = out[col].astype(float)
    return out


def rank(summary: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Rank harmonizers per scenario and main metric; columns :data:`RANK_COLUMNS`.

    Rank 1 is best: largest mean for ``higher``, smallest for ``lower``, and
    smallest ``|mean − ideal|`` for ``ideal`` metrics. Ties share the average
    rank. Cells that failed, are not applicable or have no finite mean get a
    NaN rank and do not push the others down. Ranks are computed on the
    6-significant-digit means (and distances), so float noise cannot break a
    tie. Oracle rows (role ``oracle``) and informational metrics are not
    ranked. Rows follow the summary's order, main metrics only.
    """
    metrics = metric_table(results).set_index("metric")
    main = [m for m in metrics.index if bool(metrics.at[m, "main"])]
    oracles = _oracle_set(results)
    sub = summary[summary["metric"].isin(main)].copy()
    sub["rank"] = math.nan
    for (_, metric), grp in sub.groupby(["scenario", "metric"], sort=False):
        direction = metrics.at[metric, "direction"]
        ideal = float(metrics.at[metric, "ideal"])
        ok = grp[(grp["status"] == "ok") & np.isfinite(grp["mean"].astype(float)) & ~grp["harmonizer"].isin(oracles)]
        if ok.empty:
            continue
        means = ok["mean"].astype(float)
        if direction == "higher":
            key = -means
        elif direction == "lower":
            key = means
        elif math.isfinite(ideal):
            key = (means - ideal).abs().map(_round_sig)
        else:
            # No ideal to measure distance to: there is no defensible order.
            continue
        sub.loc[ok.index, "rank"] = key.rank(method="average").astype(float)
    return sub[RANK_COLUMNS].reset_index(drop=True)


def mean_rank(ranks: pd.DataFrame) -> pd.DataFrame:
    """Mean rank per scenario × harmonizer over the main metrics it was ranked on.

    Columns :data:`MEAN_RANK_COLUMNS`; ``mean_rank`` is NaN (and ``n_ranked``
    0) for a harmonizer with no ranked metric. Rows are in leaderboard order:
    scenario, then mean rank (unranked last), then harmonizer name.
    """
    rows = []
    for (scenario, harmonizer), grp in ranks.groupby(["scenario", "harmonizer"], sort=False):
        r = grp["rank"].astype(float)
        r = r[np.isfinite(r)]
        rows.append(
            {
                "scenario": scenario,
                "harmonizer": harmonizer,
                "mean_rank": _round_sig(float(r.mean())) if len(r) else math.nan,
                "n_ranked": len(r),
            }
        )
    rows.sort(
        key=lambda r: (
            _scenario_key(r["scenario"]),
            math.isnan(r["mean_rank"]),
            0.0 if math.isnan(r["mean_rank"]) else r["mean_rank"],
            r["harmonizer"],
        )
    )
    out = pd.DataFrame(rows, columns=MEAN_RANK_COLUMNS)
    out["n_ranked"] = out["n_ranked"].astype("int64")
    out["mean_rank"] = out["mean_rank"].astype(float)
    return out


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


def _transductive_set(results: pd.DataFrame) -> set[str]:
    if "transductive" not in results.columns:
        return set()
    flags = results.groupby("harmonizer")["transductive"].agg(lambda s: bool(s.fillna(False).astype(bool).any()))
    return {str(h) for h, t in flags.items() if t}


def _unique_label(results: pd.DataFrame, col: str) -> str | None:
    if col not in results.columns:
        return None
    values = results[col].dropna().astype(str).unique()
    return values[0] if len(values) == 1 else None


def render_markdown(results: pd.DataFrame, summary: pd.DataFrame, *, title: str) -> str:
    """Render the Markdown leaderboard.

    One ``## Scenario: <name>`` section per scenario with one table: rows are
    harmonizers by mean rank (unranked last, then by name); columns are ``n``,
    each main metric as ``mean [ci_low, ci_high] (rank)`` with a direction
    arrow in the header, and ``mean rank``. ``n/a`` marks cells not applicable,
    ``failed[^k]`` failed cells with a footnote (harmonizer, metrics, first
    line of the error) under the table; ``†`` marks transductive harmonizers.
    A legend of the main metrics closes the document.
    """
    df = _prepare(results)
    metrics = metric_table(df)
    meta = metrics.set_index("metric")
    main_all = [m for m in metrics["metric"] if bool(meta.at[m, "main"])]
    ranks = rank(summary, df)
    means = mean_rank(ranks)
    transductive = _transductive_set(df)
    oracles = _oracle_set(df)

    lines: list[str] = [f"# {title}", ""]
    suite, dataset = _unique_label(df, "suite"), _unique_label(df, "dataset")
    context = [f"suite `{suite}`" if suite else "", f"dataset `{dataset}`" if dataset else ""]
    if any(context):
        lines += [", ".join(c for c in context if c).capitalize() + ".", ""]

    cell = {(r.scenario, r.harmonizer, r.metric): r for r in summary.itertuples(index=False)}
    rank_of = {(r.scenario, r.harmonizer, r.metric): float(r.rank) for r in ranks.itertuples(index=False)}
    footnote_no = 0
    used_no_data = False
    scenarios = sorted(summary["scenario"].unique(), key=_scenario_key)
    for scenario in scenarios:
        sub = summary[summary["scenario"] == scenario]
        main = [m for m in main_all if m in set(sub["metric"])]
        order = means[means["scenario"] == scenario]
        harmonizers = list(order["harmonizer"])
        # Harmonizers without any main metric still belong on the board.
        harmonizers += sorted(set(sub["harmonizer"]) - set(harmonizers))
        # Reference rows close the table: they bound the methods, they do not compete with them.
        harmonizers = [h for h in harmonizers if h not in oracles] + [h for h in harmonizers if h in oracles]
        mr = dict(zip(order["harmonizer"], order["mean_rank"], strict=True))

        header = ["harmonizer", "n"] + [_header(m, meta.at[m, "direction"], meta.at[m, "ideal"]) for m in main]
        header.append("mean rank")
        table = ["| " + " | ".join(header) + " |", "|:---|---:|" + "---:|" * len(main) + "---:|"]
        notes: list[str] = []
        any_transductive = any_oracle = False
        for h in harmonizers:
            name = _md_escape(h)
            if h in transductive:
                name += " †"
                any_transductive = True
            if h in oracles:
                name += " ‡"
                any_oracle = True
            row_ns = [int(cell[(scenario, h, m)].n) for m in main if (scenario, h, m) in cell]
            cells = [name, str(max(row_ns)) if row_ns else "0"]
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
                    text = f"{_fmt_num(c.mean)} [{_fmt_num(c.ci_low)}, {_fmt_num(c.ci_high)}]"
                    r = rank_of.get((scenario, h, m), math.nan)
                    if math.isfinite(r):
                        text += f" ({_fmt_rank(r)})"
                    cells.append(text)
            m_rank = mr.get(h, math.nan)
            cells.append(f"{m_rank:.2f}" if math.isfinite(m_rank) else _NO_DATA)
            table.append("| " + " | ".join(cells) + " |")
            for msg, k in footnote_for.items():
                notes.append(f"[^{k}]: `{h}` failed on {', '.join(failed_metrics[k])}: {msg}")

        lines += [f"## Scenario: {scenario}", "", *table, ""]
        if any_transductive:
            lines += [_TRANSDUCTIVE_NOTE, ""]
        if any_oracle:
            lines += [_ORACLE_NOTE, ""]
        if notes:
            lines += [*notes, ""]

    lines += ["## Legend", ""]
    lines.append("Cells: mean over test scans [95 % percentile bootstrap interval of the mean] (rank; 1 is best).")
    lines.append("")
    for m in main_all:
        direction = meta.at[m, "direction"]
        unit = meta.at[m, "unit"] or "unitless"
        if direction == "none":
            how = "informational, not ranked"
        elif direction == "ideal":
            how = f"closer to {_fmt_ideal(meta.at[m, 'ideal'])} is better"
        else:
            how = f"{direction} is better"
        lines.append(f"- `{_header(m, direction, meta.at[m, 'ideal'])}`: {how}; unit: {unit}.")
    lines.append(
        "- `n`: number of test scans (the most behind any main metric of the row; a scenario-level metric counts 1)."
    )
    lines.append("- `mean rank`: mean of the per-metric ranks over the main metrics the harmonizer was ranked on.")
    lines.append("- `n/a`: not applicable to this scenario; `failed`: the cell raised, see its footnote.")
    if any(str(m).count("@") for m in main_all):
        lines.append("- `metric@device`: timing or memory measured on that device; devices never share a column.")
    if used_no_data:
        lines.append(f"- `{_NO_DATA}`: no finite value.")
    return "\n".join(lines) + "\n"


def render_csv(summary: pd.DataFrame) -> str:
    """The summary as CSV: columns :data:`SUMMARY_COLUMNS`, ``\\n`` line ends, NaN as empty."""
    return summary[SUMMARY_COLUMNS].to_csv(index=False, lineterminator="\n", float_format="%.6g", na_rep="")


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


def render_json(summary: pd.DataFrame, ranks: pd.DataFrame, *, metrics: pd.DataFrame | None = None) -> str:
    """The leaderboard as JSON: sorted keys, indent 2, NaN as ``null``.

    Layout: ``{"format", "summary": [...], "mean_ranks": [...], "metrics": [...]}``.
    ``summary`` rows are the summary's rows (same order) with a ``rank`` key
    (``null`` for unranked or non-main metrics); ``mean_ranks`` come from
    :func:`mean_rank`; ``metrics`` (from :func:`metric_table`) is ``[]`` when
    not given. Lists keep the leaderboard order that sorted keys would lose.
    """
    merged = summary[SUMMARY_COLUMNS].merge(
        ranks[RANK_COLUMNS], on=["scenario", "harmonizer", "metric"], how="left", validate="one_to_one"
    )
    doc = {
        "format": "harmbench-leaderboard/1",
        "summary": _records(merged),
        "mean_ranks": _records(mean_rank(ranks)),
        "metrics": _records(metrics[METRIC_COLUMNS]) if metrics is not None else [],
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
    results: pd.DataFrame, out_dir: Path, *, seed: int = 0, title: str = "harmbench leaderboard"
) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.json`` into ``out_dir``.

    Each file is replaced atomically. Returns ``{"md": ..., "csv": ..., "json": ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(results)
    summary = summarize(prepared, seed=seed)
    ranks = rank(summary, prepared)
    texts: Mapping[str, str] = {
        "md": render_markdown(prepared, summary, title=title),
        "csv": render_csv(summary),
        "json": render_json(summary, ranks, metrics=metric_table(prepared)),
    }
    paths: dict[str, Path] = {}
    for ext, text in texts.items():
        path = out_dir / f"leaderboard.{ext}"
        _atomic_write(path, text)
        paths[ext] = path
    return paths
