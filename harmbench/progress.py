"""Progress bars: shown on a terminal, silent in logs and CI, off with ``--quiet``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# None lets tqdm decide (bars only when stderr is a terminal); False silences them.
_ENABLED: ContextVar[bool | None] = ContextVar("harmbench_progress", default=None)


def progress(iterable: Iterable[T], *, enabled: bool | None = None, **kwargs: Any) -> Iterator[T]:
    """``tqdm(iterable)`` that honours `progress_enabled`; ``enabled=False`` silences this bar only."""
    if enabled is not False:
        enabled = _ENABLED.get()
    kwargs.setdefault("leave", False)
    return iter(tqdm(iterable, disable=None if enabled is None else not enabled, **kwargs))


@contextlib.contextmanager
def progress_enabled(enabled: bool | None) -> Iterator[None]:
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)
