"""``harmbench check NAME``: the conformance kit (`harmbench.testing`) on an installed plugin.

What a method author runs before submitting (docs/submitting.md): the plugin is looked up by its
registered name, built with the given parameters, and checked on a small simulated cohort; the result is
a table with one line per check and the reason for each, and the exit status is non-zero when any check
failed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from harmbench.errors import ConfigError, HarmbenchError
from harmbench.plugins import Registry
from harmbench.testing import CheckData, CheckResult, run_checks, simulated_cohort, simulated_split

#: Exit status of ``harmbench check`` when a check failed (2 stays "could not run": unknown name, bad option).
EXIT_CHECKS_FAILED = 1

#: Kinds ``harmbench check`` knows how to check (datasets have no conformance kit yet).
CHECKABLE = ("harmonizers", "evaluators")


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a TOML value (``0.5``, ``true``, ``"site"``, ``[1, 2]``); a bare word
    that is not valid TOML is kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--param {text!r}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def find_plugin(registry: Registry, name: str, kind: str | None = None) -> tuple[str, type]:
    """(kind, class) of the harmonizer or evaluator registered as ``name``."""
    kinds = [kind] if kind else list(CHECKABLE)
    found = [(k, registry.get(k, name)) for k in kinds if name in registry.names(k)]
    if len(found) > 1:
        raise ConfigError(f"{name!r} is both a harmonizer and an evaluator; say which with --kind")
    if found:
        return found[0]
    # Not registered: let the registry word the error (close matches, a broken plugin of that name).
    registry.get(kinds[0], name)
    raise AssertionError("unreachable")  # registry.get raised


def check_plugin(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    kind: str | None = None,
    registry: Registry | None = None,
    data: CheckData | None = None,
    seed: int = 0,
    n_subjects: int = 6,
    voxel_mm: float = 8.0,
) -> tuple[str, list[CheckResult]]:
    """Build the registered plugin ``name`` with ``params`` and run every conformance check on it.

    Returns (kind, results). A constructor that raises is one failing ``construct`` result, not an error:
    it is the plugin's fault, and is reported like any other failed check.
    """
    registry = registry if registry is not None else Registry()
    kind, cls = find_plugin(registry, name, kind)
    try:
        instance = cls(**dict(params or {}))
    except TypeError as exc:
        return kind, [CheckResult("construct", "fail", f"{cls.__name__}(**{dict(params or {})!r}) raised {exc}")]
    # Whatever else a third-party constructor raises is reported as this plugin's failure.
    except Exception as exc:
        return kind, [CheckResult("construct", "fail", f"{cls.__name__}() raised {type(exc).__name__}: {exc}")]
    built = CheckResult("construct", "pass", f"{cls.__name__}(**params) built")
    try:
        instance.validate_params()
    except HarmbenchError as exc:  # the runner would refuse these parameters before computing anything
        return kind, [built, CheckResult("validate_params", "fail", f"{type(exc).__name__}: {exc}")]
    # A validate_params that raises something else is itself broken: reported, not propagated.
    except Exception as exc:
        return kind, [built, CheckResult("validate_params", "fail", f"raised {type(exc).__name__}: {exc}")]
    validated = CheckResult("validate_params", "pass", "the parameters are accepted before any compute")
    if data is None:
        data = simulated_split(simulated_cohort(n_subjects=n_subjects, voxel_mm=voxel_mm, seed=seed), seed=seed)
    return kind, [built, validated, *run_checks(instance, data)]


def format_table(name: str, kind: str, results: Sequence[CheckResult]) -> str:
    """The pass/fail table ``harmbench check`` prints, one line per check, then a summary line."""
    width = max(len(r.check) for r in results)
    lines = [f"{kind[:-1]} {name!r}", f"  {'check':<{width}}  result  {'time':>6}  reason"]
    for r in results:
        reason = " ".join(r.reason.split())  # one line per check, whatever the message held
        lines.append(f"  {r.check:<{width}}  {r.status.upper():<6}  {r.seconds:5.2f}s  {reason}")
    failed = sum(not r.passed for r in results)
    total = len(results)
    lines.append(f"{total - failed} of {total} checks passed" + (f", {failed} failed" if failed else ""))
    return "\n".join(lines) + "\n"
