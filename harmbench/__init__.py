"""harmbench: an open, plugin-based benchmark suite for MRI harmonization."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@harmbench.hookimpl``.
hookimpl = pluggy.HookimplMarker("harmbench")

from harmbench.api import (  # noqa: E402
    DatasetSource,
    EvalCase,
    Evaluator,
    Harmonizer,
    Meta,
    MetricSpec,
    PerScanEvaluator,
    StatelessHarmonizer,
)
from harmbench.data.scan import Cohort, Scan  # noqa: E402
from harmbench.errors import HarmbenchError  # noqa: E402

__all__ = [
    "Cohort",
    "DatasetSource",
    "EvalCase",
    "Evaluator",
    "HarmbenchError",
    "Harmonizer",
    "Meta",
    "MetricSpec",
    "PerScanEvaluator",
    "Scan",
    "StatelessHarmonizer",
    "__version__",
    "hookimpl",
]
