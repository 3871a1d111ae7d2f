"""The tidy results table (one row per metric per test scan) and its on-disk store.

Each finished cell is written as its own Parquet file, atomically (temp file +
rename), so a killed run loses at most the cell in progress and a re-run
computes only the cells that are missing (the mteb model).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harmbench.errors import DataError

#: Column order of the results table; `harmbench.leaderboard` reads these.
COLUMNS: tuple[str, ...] = (
    "suite",
    "dataset",
    "scenario",
    "harmonizer",
    "role",
    "params_hash",
    "evaluator",
    "metric",
    "subject",
    "site",
    "value",
    "status",
    "error",
    "higher_is_better",
    "ideal",
    "unit",
    "main",
    "device_dependent",
    "axis",
    "transductive",
    "seed",
    "device",
    "n_train",
    "n_train_target",
    "fit_info",
    "harmbench_version",
    "harmonizer_version",
    "evaluator_version",
    "cell_id",
    "started",
    "finished",
)
STATUSES = ("ok", "failed", "not_applicable")

#: The per-scan scores file of a run: what the leaderboards are rendered from.
SCORES_FILE = "scores.csv"
#: Its columns: the results' columns that the leaderboard reads, and nothing that changes between two runs of
#: the same suite on the same machine (no timestamps, cell ids, versions or fit provenance).
SCORE_COLUMNS: tuple[str, ...] = (
    "suite",
    "dataset",
    "scenario",
    "harmonizer",
    "role",
    "params_hash",
    "transductive",
    "seed",
    "evaluator",
    "metric",
    "axis",
    "higher_is_better",
    "ideal",
    "unit",
    "main",
    "device_dependent",
    "device",
    "subject",
    "site",
    "status",
    "value",
    "error",
)
_SCORE_SORT = ("scenario", "harmonizer", "params_hash", "seed", "evaluator", "metric", "subject", "site")
_SCORE_BOOLS = ("transductive", "main", "device_dependent")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent, the old file, or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A unique temporary path next to ``path`` for a writer that wants a file name (``np.savez``,
    ``nibabel.save``); it becomes ``path`` in one rename when the block ends, and is removed if it raises.

    The temporary name keeps ``path``'s suffixes (``.npz``, ``.nii.gz``) so writers that pick the format
    from the name still do, and it is unique, so two processes writing one folder never share it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_frame(records: Iterable[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(records))
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    frame = frame[list(COLUMNS)]
    frame["value"] = frame["value"].astype(float)
    frame["ideal"] = frame["ideal"].astype(float)
    frame["main"] = frame["main"].astype(bool)
    frame["transductive"] = frame["transductive"].astype(bool)
    frame["device_dependent"] = frame["device_dependent"].fillna(False).astype(bool)
    frame["role"] = frame["role"].fillna("method").astype(str)
    frame["axis"] = frame["axis"].fillna("").astype(str)
    frame["n_train"] = frame["n_train"].astype(float)
    frame["n_train_target"] = frame["n_train_target"].astype(float)
    frame["fit_info"] = frame["fit_info"].fillna("").astype(str)
    return frame


class ResultStore:
    """Cell files under ``<out>/cells/``; ``results.parquet`` is their concatenation."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.cells_dir = self.out_dir / "cells"

    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.parquet"

    def has(self, cell_id: str) -> bool:
        return self.cell_path(cell_id).exists()

    def write_cell(self, cell_id: str, records: Iterable[dict]) -> None:
        frame = to_frame(records)
        frame["cell_id"] = cell_id
        atomic_write_bytes(self.cell_path(cell_id), parquet_bytes(frame))

    def read_cells(self, cell_ids: Iterable[str]) -> pd.DataFrame:
        frames = [read_parquet(self.cell_path(c)) for c in cell_ids if self.has(c)]
        if not frames:
            return to_frame([])
        return pd.concat(frames, ignore_index=True)

    def write_results(self, frame: pd.DataFrame) -> Path:
        path = self.out_dir / "results.parquet"
        atomic_write_bytes(path, parquet_bytes(frame))
        return path


# Arrow's CPU thread pool can abort the interpreter at exit ("terminate called without an active
# exception", apache/arrow#34314) or hang it when the read went through a Python file object, which is
# what pandas.read_parquet passes (apache/arrow#50482); our tables are small, so read and write them on
# the calling thread, from a path.
def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as Parquet bytes, built without Arrow's thread pool."""
    table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_parquet(path: str | Path) -> pd.DataFrame:
    """A Parquet file written by :func:`parquet_bytes`, read without Arrow's thread pool."""
    return pq.ParquetFile(str(path), pre_buffer=False).read(use_threads=False).to_pandas(use_threads=False)


def scores_csv(results: pd.DataFrame) -> str:
    """The per-scan scores as CSV text, a deterministic function of the rows (not of their order).

    Rows are sorted by scenario, harmonizer, parameters, seed, evaluator, metric, subject and site;
    values are written with 17 significant digits, which reads back to the same float, so a leaderboard
    rendered from this text equals one rendered from the table it came from.
    """
    frame = to_frame(results.to_dict("records")) if set(COLUMNS) - set(results.columns) else results
    frame = frame[list(SCORE_COLUMNS)].copy()
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(0).astype("int64")
    for col in ("subject", "site", "params_hash", "error", "unit", "device", "higher_is_better"):
        frame[col] = frame[col].fillna("").astype(str)
    frame = frame.sort_values(list(_SCORE_SORT), kind="mergesort")
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.17g", na_rep="")


def read_scores(path: str | Path) -> pd.DataFrame:
    """A scores file written by :func:`scores_csv`, with the results' types."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(SCORE_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"{path}: not a scores file (missing columns {sorted(missing)})")
    for col in ("value", "ideal"):
        # Python's float() reads a 17-digit decimal back to the very float that wrote it (pandas' parser may not)
        frame[col] = frame[col].map(lambda text: float(text) if text else math.nan).astype(float)
    frame["seed"] = frame["seed"].astype("int64")
    for col in _SCORE_BOOLS:
        frame[col] = frame[col].map({"True": True, "False": False}).astype(bool)
    return frame


def read_results(out_dir: str | Path) -> pd.DataFrame:
    """The stored results table of a finished (or partial) run."""
    path = Path(out_dir) / "results.parquet"
    if not path.exists():
        raise DataError(f"{path}: no results here; run `harmbench run --out {out_dir}` first")
    try:
        frame = read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"{path}: not a readable results table ({type(exc).__name__}: {first})") from exc
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: not a harmbench results table (missing column(s) {', '.join(missing[:5])}); "
            "rerun `harmbench run` to rebuild it"
        )
    return frame
