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

torch is imported only for a CUDA device, so CPU-only runs never load it here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["Measurement", "cuda_available", "measure", "resolve_run_device"]

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
        result.peak_mem_mb = (torch.cuda.max_memory_allocated(dev) - baseline) / 2**20
        return
    reset = _reset_rss_peak()
    baseline = _rss_mb() if reset else 0.0
    t0 = time.perf_counter()
    yield result
    result.seconds = time.perf_counter() - t0
    # Without a resettable peak the fallback is the lifetime peak; subtracting nothing keeps it an upper bound.
    result.peak_mem_mb = max(0.0, _rss_peak_mb(reset) - (baseline if math.isfinite(baseline) else 0.0))
