"""harmbench.timing: each stage gets its own wall time and its own peak memory."""

from __future__ import annotations

import time

import numpy as np

from harmbench.timing import measure, resolve_run_device


def test_measure_times_the_block():
    with measure("cpu") as m:
        time.sleep(0.05)
    assert 0.045 < m.seconds < 1.0


def test_peak_memory_is_per_stage_not_the_process_lifetime_peak():
    with measure("cpu") as big:
        block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
        del block
    with measure("cpu") as small:
        np.ones(1000).sum()
    assert big.peak_mem_mb > 250 and small.peak_mem_mb < 50


def test_peak_memory_does_not_count_what_was_resident_before():
    resident = np.ones(300 * 2**20 // 8)  # 300 MB held by someone else before the stage
    with measure("cpu") as stage:
        np.ones(1000).sum()
    assert stage.peak_mem_mb < 50
    del resident


def test_cpu_stays_cpu():
    assert resolve_run_device("cpu") == "cpu"
