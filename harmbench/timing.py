"""Timing and peak-memory measurement for the runner, honest on both CPU and CUDA.

- On the CPU a stage is timed with ``time.perf_counter`` and its memory is the process's peak
  resident set size during the stage (Linux ``VmHWM``, reset before the stage through
  ``/proc/self/clear_refs`` so each stage gets its own peak rather than the process's lifetime peak)
  minus the resident size when the stage began: what the method itself needed, not the cohort or
  the models other plugins left in memory before it ran (which would make the figure depend on the
  order of the suite).
- On CUDA, kernels run asynchronously, so wall clock around a call measures the launch, not the
  work: a stage is timed with CUDA events recorded on the stream and read after synchronising, and
  its memory is ``torch.cuda.max_memory_allocated`` after resetting the peak statistics, minus what
  was allocated when the stage began.

Comparable figures (docs/design.md, throughput):

- Thread budget: `thread_budget` runs a block with the same number of threads for every library —
  BLAS and OpenMP pools (numpy, scipy, scikit-learn, through ``threadpoolctl``) and torch's intra-op
  pool (when torch is loaded) — so that a numpy method and a torch method are timed on the same
  cores. The budget is ``HARMBENCH_TORCH_THREADS`` (default ``THREAD_BUDGET`` = 2), the count
  `harmbench.nn.runtime.deterministic` already gives torch fits.
- Warm-up and repeats: `time_each` calls a function on every item, after ``warmup`` untimed calls
  (one-off costs: lazy imports, allocator growth, kernel selection), and times each call; when there
  are fewer than ``min_timed`` items it times further calls, cycling over the items, until there are
  ``min_timed`` timings, so that a median and a spread are always taken over at least that many.
- Memory floor: a stage's peak memory is reported as at least ``MEMORY_FLOOR_MB``. The resident-set
  high-water mark moves in pages and does not see memory a process reuses from its own heap, so
  figures below about a MiB are not resolved; a figure at the floor means "at most about this much",
  never "nothing".

torch is imported only for a CUDA device, so CPU-only runs never load it here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "MEMORY_FLOOR_MB",
    "MIN_TIMED",
    "THREAD_BUDGET",
    "Measurement",
    "Timed",
    "cuda_available",
    "measure",
    "resolve_run_device",
    "thread_budget",
    "thread_count",
    "time_each",
]

#: Smallest peak memory reported for a stage, in MiB (see the module docstring).
MEMORY_FLOOR_MB = 1.0
#: Threads every library gets inside `thread_budget` unless ``HARMBENCH_TORCH_THREADS`` says otherwise.
THREAD_BUDGET = 2
#: Fewest timed calls `time_each` takes (after warm-up).
MIN_TIMED = 5

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Measurement:
    """Filled in when the :func:`measure` block exits."""

    seconds: float = float("nan")
    peak_mem_mb: float = float("nan")


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (False when torch is absent)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_run_device(requested: str) -> str:
    """The device a run can actually use: ``requested``, or ``"cpu"`` with a warning when CUDA is absent."""
    if requested.split(":")[0] == "cuda" and not cuda_available():
        log.warning("device %r requested but no CUDA device is available; running on the CPU", requested)
        return "cpu"
    return requested


def _read_kib(field: str) -> float | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux ≥ 4.0); False where unsupported."""
    try:
        _PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _rss_mb() -> float:
    rss = _read_kib("VmRSS")
    return math.nan if rss is None else rss / 1024.0


def _rss_peak_mb(reset_worked: bool) -> float:
    if reset_worked:
        hwm = _read_kib("VmHWM")
        if hwm is not None:
            return hwm / 1024.0
    # Fallback (macOS, restricted /proc): the process's lifetime peak, an upper bound for the stage.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@contextlib.contextmanager
def measure(device: str = "cpu") -> Iterator[Measurement]:
    """Time a block and record its peak memory on ``device`` (see the module docstring)."""
    result = Measurement()
    if device.split(":")[0] == "cuda":
        import torch

        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield result
        end.record()
        torch.cuda.synchronize(dev)
        result.seconds = start.elapsed_time(end) / 1000.0
        result.peak_mem_mb = max(MEMORY_FLOOR_MB, (torch.cuda.max_memory_allocated(dev) - baseline) / 2**20)
        return
    reset = _reset_rss_peak()
    baseline = _rss_mb() if reset else 0.0
    t0 = time.perf_counter()
    yield result
    result.seconds = time.perf_counter() - t0
    # Without a resettable peak the fallback is the lifetime peak; subtracting nothing keeps it an upper bound.
    result.peak_mem_mb = max(MEMORY_FLOOR_MB, _rss_peak_mb(reset) - (baseline if math.isfinite(baseline) else 0.0))


def thread_count() -> int:
    """The thread budget: ``HARMBENCH_TORCH_THREADS`` when set (a positive integer), else ``THREAD_BUDGET``."""
    value = os.environ.get("HARMBENCH_TORCH_THREADS", "")
    if not value:
        return THREAD_BUDGET
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"HARMBENCH_TORCH_THREADS must be a positive integer, got {value!r}")
    return threads


@contextlib.contextmanager
def thread_budget(threads: int | None = None) -> Iterator[int]:
    """Run a block with ``threads`` (default `thread_count`) threads for BLAS, OpenMP and torch; yields the count."""
    from threadpoolctl import threadpool_limits

    n = thread_count() if threads is None else int(threads)
    torch = sys.modules.get("torch")  # a method that uses torch has imported it; never import it here
    previous = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if torch is not None and previous is not None:
                torch.set_num_threads(previous)


@dataclass
class Timed:
    """What `time_each` measured: one output and one time per item, the extra timings taken to reach
    ``MIN_TIMED``, and the largest peak memory of any call (MiB)."""

    outputs: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    extra_seconds: list[float] = field(default_factory=list)
    peak_mem_mb: float = MEMORY_FLOOR_MB

    @property
    def all_seconds(self) -> list[float]:
        return [*self.seconds, *self.extra_seconds]


def time_each(
    call: Callable[[Any], Any],
    items: Iterable[Any],
    device: str = "cpu",
    *,
    warmup: int = 1,
    min_timed: int = MIN_TIMED,
) -> Timed:
    """``call(item)`` for every item, each timed, after ``warmup`` untimed calls on the first item; then more
    timed calls cycling over the items until at least ``min_timed`` timings exist (their outputs are dropped)."""
    timed = Timed()
    done: list[Any] = []
    for item in items:
        if not done:
            for _ in range(warmup):
                call(item)
        with measure(device) as one:
            output = call(item)
        done.append(item)
        timed.outputs.append(output)
        timed.seconds.append(one.seconds)
        timed.peak_mem_mb = max(timed.peak_mem_mb, one.peak_mem_mb)
    index = 0
    while done and len(timed.all_seconds) < min_timed:
        with measure(device) as one:
            call(done[index % len(done)])
        timed.extra_seconds.append(one.seconds)
        timed.peak_mem_mb = max(timed.peak_mem_mb, one.peak_mem_mb)
        index += 1
    return timed
