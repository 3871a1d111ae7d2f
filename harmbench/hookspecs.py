"""Hook specifications: what a harmbench plugin can provide.

A plugin is any module or object with functions marked ``@harmbench.hookimpl``
and registered under the ``harmbench`` entry-point group. Each hook returns a
list of classes; names must be unique across all plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("harmbench")


@hookspec
def harmbench_register_harmonizers() -> list[type]:
    """Return `harmbench.api.Harmonizer` subclasses; each is known by ``cls.meta.name``."""


@hookspec
def harmbench_register_evaluators() -> list[type]:
    """Return `harmbench.api.Evaluator` subclasses; each is known by ``cls.name``."""


@hookspec
def harmbench_register_datasets() -> list[type]:
    """Return `harmbench.api.DatasetSource` subclasses; each is known by ``cls.name``."""
