"""Worker processes for a plugin's independent tasks, sized by the run's thread budget.

A CPU evaluator that loops over many independent pieces of numpy work (per-scan features, tissue
fits, classifier fits) uses one core while the others wait: its loops hold the GIL for much of their
time, so threads do not help, and a process pool does. `worker_pool` gives a `joblib.Parallel` of
``n_jobs`` processes on joblib's ``loky`` backend: its workers start a fresh interpreter and never
re-run the caller's ``__main__`` (an unguarded user script is safe), and they are reused from one
call to the next. The number of processes defaults to the run's thread budget
(`harmbench.timing.thread_count`, ``HARMBENCH_TORCH_THREADS``, 2 by default), the cores a method is
timed on; a plugin exposes it as an ``n_jobs`` parameter and checks it with `check_jobs`.

Results come back in task order, and a task computes the same function of the same arrays in a
worker as in the caller, so a plugin's results must not depend on ``n_jobs``; its tests should say so.
One caveat decides how a task runs in a worker: loky gives each worker ``cores // n_jobs`` BLAS and
OpenMP threads (one on two cores), and a multi-threaded float32 matrix product rounds differently on one
thread than on two (the simulator's smooth fields move by about 1e-6 that way). A task whose results
go through such products runs under the caller's BLAS thread counts (`caller_blas_threads`, handed to
`with_blas_threads`), which keeps them equal; only for that task, because two workers' spinning BLAS
threads then share two cores, and when the setting stayed on for the whole worker the site
classifier's fits took five times as long. With one job, or one task, nothing leaves the process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from joblib import Parallel
from threadpoolctl import threadpool_info, threadpool_limits

from harmbench.errors import ConfigError
from harmbench.timing import thread_count

__all__ = [
    "BATCHES_PER_WORKER",
    "caller_blas_threads",
    "check_jobs",
    "effective_jobs",
    "with_blas_threads",
    "worker_pool",
]

_T = TypeVar("_T")

#: Batches of tasks `worker_pool` deals to each worker (see there).
BATCHES_PER_WORKER = 8


def check_jobs(owner: str, n_jobs: object, parameter: str = "n_jobs") -> None:
    """Raise `ConfigError` naming ``owner`` and ``parameter`` unless ``n_jobs`` is None or a positive integer."""
    if n_jobs is None:
        return
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ConfigError(
            f"{owner}: parameter {parameter!r} must be a positive integer or None (the run's thread budget), "
            f"got {n_jobs!r}"
        )


def effective_jobs(n_jobs: int | None, n_tasks: int) -> int:
    """How many processes `worker_pool` uses for ``n_tasks`` tasks: ``n_jobs`` (None: `thread_count`), at most
    ``n_tasks``, at least 1 (1: the caller's own process)."""
    return max(1, min(thread_count() if n_jobs is None else int(n_jobs), n_tasks))


def worker_pool(n_jobs: int | None, n_tasks: int, *, lazy: bool = False) -> Parallel:
    """A `joblib.Parallel` of `effective_jobs` worker processes for ``n_tasks`` tasks; in-process when that is
    one. ``lazy``: the call returns a generator that yields each result, in task order, as soon as it and
    those before it are done (for a progress bar), instead of a list at the end."""
    jobs = effective_jobs(n_jobs, n_tasks)
    # About eight batches a worker: joblib's automatic batch size starts at one task, and for tasks of tens of
    # milliseconds each task's dispatch then cost as much as the task (measured on the tissue fits: no gain).
    return Parallel(
        n_jobs=jobs,
        backend="loky",
        batch_size=max(1, n_tasks // (BATCHES_PER_WORKER * jobs)),
        return_as="generator" if lazy else "list",
    )


def caller_blas_threads() -> dict[str, int]:
    """This process's BLAS thread count per library (keyed by library prefix), for `with_blas_threads`."""
    return {info["prefix"]: int(info["num_threads"]) for info in threadpool_info() if info["user_api"] == "blas"}


def with_blas_threads(threads: Mapping[str, int], function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``function(*args, **kwargs)`` with the BLAS libraries at ``threads`` (from `caller_blas_threads`), restored
    after: a worker's task then rounds its matrix products as the caller would."""
    with threadpool_limits(limits=dict(threads)):
        return function(*args, **kwargs)
