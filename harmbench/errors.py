"""Errors a user can act on. The CLI prints them as one line (no traceback unless --debug)."""

from __future__ import annotations


class HarmbenchError(Exception):
    """Base class: the message names the file, parameter or plugin at fault."""


class DataError(HarmbenchError):
    """Input data is unreadable or violates the data contract (docs/design.md §3)."""


class PluginError(HarmbenchError):
    """A plugin is unknown, duplicated, or broke its contract."""


class NotFittedError(HarmbenchError):
    """A harmonizer was asked to transform before it was fitted."""


class ConfigError(HarmbenchError):
    """A suite file or command-line option is invalid."""
