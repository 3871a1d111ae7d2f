"""`harmbench.parallel`: threads for GIL-releasing array work, results in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator
from harmbench.data.scan import Scan
from harmbench.parallel import thread_map, worker_count


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_results_come_back_in_the_items_order(workers):
    items = list(range(23))
    assert list(thread_map(lambda i: i * i, items, workers=workers)) == [i * i for i in items]


def test_two_workers_run_at_the_same_time():
    # each call waits for the other at a barrier: one thread at a time would time out
    barrier = threading.Barrier(2, timeout=10)
    names = list(
        thread_map(lambda _: barrier.wait() is not None and threading.current_thread().name, [0, 1], workers=2)
    )
    assert len(set(names)) == 2 and all(n.startswith("harmbench") for n in names)


def test_an_items_exception_reaches_the_caller():
    def fail_on_three(i):
        if i == 3:
            raise KeyError(i)
        return i

    results = thread_map(fail_on_three, range(8), workers=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError):
        next(results)


def test_worker_count_follows_the_thread_budget(monkeypatch):
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "1")
    assert worker_count(100) == 1
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "2")
    assert 1 <= worker_count(100) <= 2
    assert worker_count(1) == 1
    assert worker_count(3, workers=8) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            worker_count(4, workers=bad)


class _ThreadRecorder(PerScanEvaluator):
    name = "toy-threads"
    metrics = (MetricSpec("index", higher_is_better=None, ideal=None),)

    def __init__(self) -> None:
        pass

    def evaluate_scan(self, case):
        type(self).seen.add(threading.current_thread().name)
        return {"index": float(case.input.data[0, 0, 0])}


def _cases(n):
    affine = np.eye(4)
    scans = [Scan(np.full((2, 2, 2), float(i), dtype=np.float32), affine, f"sub-{i}", "a") for i in range(n)]
    return [EvalCase(input=s, output=s, target=None) for s in scans]


@pytest.mark.parametrize("thread_safe", [False, True])
def test_per_scan_evaluators_use_threads_only_when_thread_safe(thread_safe, monkeypatch):
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "2")
    monkeypatch.setattr("harmbench.parallel.available_cores", lambda: 2)
    evaluator_cls = type("Recorder", (_ThreadRecorder,), {"thread_safe": thread_safe, "seen": set()})
    records = evaluator_cls().evaluate(_cases(40))
    assert [r["value"] for r in records] == [float(i) for i in range(40)]  # in the cases' order
    assert [r["subject"] for r in records] == [f"sub-{i}" for i in range(40)]
    in_pool = {name for name in evaluator_cls.seen if name.startswith("harmbench")}
    assert bool(in_pool) is thread_safe
    if not thread_safe:
        assert evaluator_cls.seen == {threading.current_thread().name}
