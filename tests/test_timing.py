"""harmbench.timing: each stage gets its own wall time and its own peak memory."""

from __future__ import annotations

import mmap
import time

import numpy as np
import pytest

from harmbench.timing import (
    MEMORY_FLOOR_MB,
    THREAD_BUDGET,
    measure,
    resolve_run_device,
    thread_budget,
    thread_count,
    time_each,
)


def test_measure_times_the_block():
    with measure("cpu") as m:
        time.sleep(0.05)
    assert 0.045 < m.seconds < 1.0


def _fresh_pages(nbytes: int) -> tuple[mmap.mmap, np.ndarray]:
    """``nbytes`` of new memory from the kernel, touched. An anonymous mapping, not ``np.ones``: after hundreds of
    tests the allocator may hold a large free chunk whose pages are still resident, and a block served from it
    adds nothing to the resident set (the CI run on kernel 6.18 read 1 MB for a 300 MB ``np.ones``); what
    `measure` promises is to see memory the stage takes from the system."""
    mapping = mmap.mmap(-1, nbytes)
    array = np.frombuffer(mapping, dtype=np.uint8)
    array[:] = 1
    return mapping, array


def test_peak_memory_is_per_stage_not_the_process_lifetime_peak():
    with measure("cpu") as big:
        mapping, array = _fresh_pages(300 * 2**20)
    del array
    mapping.close()
    with measure("cpu") as small:
        np.ones(1000).sum()
    assert big.peak_mem_mb > 250 and small.peak_mem_mb < 50


def test_peak_memory_sees_a_block_freed_inside_the_stage():
    with measure("cpu") as stage:
        mapping, array = _fresh_pages(300 * 2**20)
        del array
        mapping.close()
    assert stage.peak_mem_mb > 250


def test_peak_memory_does_not_count_what_was_resident_before():
    resident = np.ones(300 * 2**20 // 8)  # 300 MB held by someone else before the stage
    with measure("cpu") as stage:
        np.ones(1000).sum()
    assert stage.peak_mem_mb < 50
    del resident


def test_cpu_stays_cpu():
    assert resolve_run_device("cpu") == "cpu"


def test_memory_has_a_floor():
    with measure("cpu") as stage:
        pass
    assert stage.peak_mem_mb >= MEMORY_FLOOR_MB > 0


def test_time_each_warms_up_and_times_at_least_min_timed_calls():
    calls = []
    timed = time_each(lambda x: calls.append(x) or x * 2, [1, 2], "cpu", warmup=1, min_timed=5)
    assert timed.outputs == [2, 4] and len(timed.seconds) == 2 and len(timed.extra_seconds) == 3
    assert calls == [1, 1, 2, 1, 2, 1]  # one warm-up call, the two items, then cycling to five timings
    assert len(timed.all_seconds) == 5 and timed.peak_mem_mb >= MEMORY_FLOOR_MB
    many = time_each(lambda x: x, range(7), "cpu")
    assert len(many.seconds) == 7 and many.extra_seconds == []
    assert time_each(lambda x: x, [], "cpu").all_seconds == []


def test_thread_budget_holds_numpy_and_torch_to_the_same_count(monkeypatch):
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with thread_budget(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert torch.get_num_threads() == before
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "3")
    assert thread_count() == 3
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="HARMBENCH_TORCH_THREADS"):
        thread_count()
    monkeypatch.delenv("HARMBENCH_TORCH_THREADS")
    assert thread_count() == THREAD_BUDGET
