from __future__ import annotations

import inspect
import os

import pytest
from joblib import delayed
from threadpoolctl import threadpool_info

from harmbench.errors import ConfigError
from harmbench.parallel import caller_blas_threads, check_jobs, effective_jobs, with_blas_threads, worker_pool
from harmbench.timing import thread_count


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_results_come_back_in_task_order_from_other_processes():
    results = worker_pool(2, 40)(delayed(_square_and_pid)(i) for i in range(40))
    assert [r[0] for r in results] == [i * i for i in range(40)]
    assert {r[1] for r in results} - {os.getpid()}, "two jobs ran every task in the caller's process"


def test_one_job_or_one_task_stays_in_the_callers_process():
    for pool, n in ((worker_pool(1, 10), 10), (worker_pool(4, 1), 1)):
        assert {pid for _, pid in pool(delayed(_square_and_pid)(i) for i in range(n))} == {os.getpid()}


def test_the_default_is_the_runs_thread_budget(monkeypatch):
    monkeypatch.setenv("HARMBENCH_TORCH_THREADS", "3")
    assert thread_count() == 3
    assert effective_jobs(None, 10) == 3
    assert effective_jobs(None, 2) == 2  # never more processes than tasks
    assert effective_jobs(5, 0) == 1
    monkeypatch.delenv("HARMBENCH_TORCH_THREADS")
    assert effective_jobs(None, 10) == thread_count()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_job_count_names_the_owner_and_the_parameter(bad):
    with pytest.raises(ConfigError, match=r"volume: parameter 'n_jobs' must be a positive integer"):
        check_jobs("volume", bad)


def test_none_and_positive_job_counts_are_accepted():
    check_jobs("volume", None)
    check_jobs("volume", 3)


def test_lazy_results_stream_in_task_order():
    stream = worker_pool(2, 12, lazy=True)(delayed(_square_and_pid)(i) for i in range(12))
    assert inspect.isgenerator(stream)
    assert [square for square, _ in stream] == [i * i for i in range(12)]


def _blas_threads() -> dict[str, int]:
    return {info["prefix"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_a_task_can_run_under_the_callers_blas_threads():
    caller = caller_blas_threads()
    assert caller, "no BLAS library found"
    inside, plain, after = worker_pool(2, 3)(
        [delayed(with_blas_threads)(caller, _blas_threads), delayed(_blas_threads)(), delayed(_blas_threads)()]
    )
    # a worker has loaded only the libraries its tasks imported (numpy's, not scipy's)
    assert inside and all(inside[name] == caller[name] for name in inside)
    # only for that task: loky's own setting (cores // jobs) holds for the worker's other tasks
    assert plain == after
    if os.cpu_count() and os.cpu_count() >= 2 and max(caller.values()) > 1:
        assert any(plain[name] != caller[name] for name in plain)
