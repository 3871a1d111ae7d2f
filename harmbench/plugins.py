"""Plugin discovery: a pluggy manager factory and name → class registries.

Built-in plugins and third-party ones are found the same way: through the
``harmbench`` entry-point group. Nothing is loaded at import time.

A plugin that cannot be imported, or whose registration hook raises, is set
aside as a `BrokenPlugin` (one warning line naming the entry point, its
distribution and the error) while every other plugin keeps working; only a
command that asks for one of its names fails, with that same line.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from harmbench import hookspecs
from harmbench.errors import PluginError

ENTRY_POINT_GROUP = "harmbench"
#: Comma-separated entry-point names that must not be loaded.
DISABLE_ENV = "HARMBENCH_DISABLE_PLUGINS"

KINDS = ("harmonizers", "evaluators", "datasets")

log = logging.getLogger(__name__)

#: Broken-plugin lines already logged by this process, so building several registries warns once.
_warned: set[str] = set()


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin set aside because importing it or calling one of its hooks raised."""

    name: str
    target: str
    distribution: str
    error: str

    def line(self) -> str:
        """The one line a user sees: which entry point, from which distribution, what went wrong, what to do."""
        return (
            f"plugin {self.name!r} (entry point {self.name} = {self.target}, from {self.distribution}) is broken: "
            f"{self.error}; to silence this, set {DISABLE_ENV}={self.name}"
        )


def _error_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class HarmbenchPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each entry-point plugin's distribution and the broken ones."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.sources: dict[int, str] = {}
        self.broken: list[BrokenPlugin] = []

    def load_entrypoints_safely(self, group: str) -> int:
        """Like ``load_setuptools_entrypoints``, but a plugin whose import raises becomes a `BrokenPlugin`."""
        loaded = 0
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != group or self.get_plugin(ep.name) or self.is_blocked(ep.name):
                    continue
                if any(b.name == ep.name for b in self.broken):
                    continue
                source = f"{dist.metadata['name']} {dist.version}"
                try:
                    plugin = ep.load()
                    self.register(plugin, name=ep.name)
                # A third-party import can raise anything (SyntaxError included); the point is to contain it.
                except Exception as exc:
                    self.broken.append(BrokenPlugin(ep.name, ep.value, source, _error_text(exc)))
                    log.debug("plugin %r failed to load", ep.name, exc_info=True)
                    continue
                self.sources[id(plugin)] = source
                loaded += 1
        return loaded


def get_plugin_manager(
    *, load_entrypoints: bool = True, extra_plugins: Iterable[Any] = (), disabled: Iterable[str] | None = None
) -> HarmbenchPluginManager:
    """A fresh plugin manager with the hookspecs, entry-point plugins and ``extra_plugins``.

    ``disabled`` defaults to the names in ``$HARMBENCH_DISABLE_PLUGINS``. Plugins that fail to import are
    listed in the manager's ``broken`` instead of raising.
    """
    pm = HarmbenchPluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    if disabled is None:
        disabled = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
    for name in disabled:
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_entrypoints_safely(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    return pm


@dataclass(frozen=True)
class Registered:
    """A class provided by a plugin, with where it came from."""

    name: str
    cls: type
    plugin: str
    distribution: str


def _distributions(pm: pluggy.PluginManager) -> dict[int, str]:
    out = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    out.update(getattr(pm, "sources", {}))
    return out


def _plugin_label(pm: pluggy.PluginManager, plugin: Any) -> str:
    """The entry-point name, or where the plugin object is defined when it was registered by hand."""
    name = pm.get_name(plugin) or ""
    if name and name != str(id(plugin)):
        return name
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"


def _class_name(kind: str, cls: type) -> str:
    if kind == "harmonizers":
        meta = getattr(cls, "meta", None)
        return getattr(meta, "name", "") or ""
    return getattr(cls, "name", "") or ""


class Registry:
    """Name → class for harmonizers, evaluators and datasets, built from a plugin manager.

    Two plugins registering the same name is an error naming both sources. A plugin whose import or
    registration hook raises is listed in ``broken`` (and logged once as a warning); the others load.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()
        self._entries: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.broken: list[BrokenPlugin] = list(getattr(self.pm, "broken", []))
        dists = _distributions(self.pm)
        collected: list[tuple[str, Any, str, list[type]]] = []
        failed: set[int] = set()
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"harmbench_register_{kind}")
            # hookimpls are called one by one so each class can be traced to its plugin
            for impl in reversed(hook.get_hookimpls()):
                if id(impl.plugin) in failed:
                    continue
                source = dists.get(id(impl.plugin), "(not installed as a distribution)")
                try:
                    classes = list(impl.function() or [])
                # The hook is third-party code: whatever it raises marks only its own plugin as broken.
                except Exception as exc:
                    log.debug("plugin %r: %s hook failed", _plugin_label(self.pm, impl.plugin), kind, exc_info=True)
                    failed.add(id(impl.plugin))
                    self.broken.append(
                        self._broken(impl.plugin, source, f"harmbench_register_{kind}() raised {_error_text(exc)}")
                    )
                    continue
                collected.append((kind, impl.plugin, source, classes))
        for kind, plugin, source, classes in collected:
            if id(plugin) in failed:
                continue  # a plugin broken in one hook contributes nothing, so no half-registered method
            plugin_name = _plugin_label(self.pm, plugin)
            for cls in classes:
                name = _class_name(kind, cls)
                if not name:
                    raise PluginError(f"plugin {plugin_name!r} ({source}) registered {cls!r} without a name")
                entry = Registered(name, cls, plugin_name, source)
                previous = self._entries[kind].get(name)
                if previous is not None and previous.cls is not cls:
                    raise PluginError(
                        f"{kind[:-1]} name {name!r} is registered twice: by plugin {previous.plugin!r} "
                        f"({previous.distribution}) and by plugin {plugin_name!r} ({source})"
                    )
                self._entries[kind][name] = entry
        for broken in self.broken:
            line = broken.line()
            if line not in _warned:
                _warned.add(line)
                log.warning("harmbench: %s", line)

    def _broken(self, plugin: Any, source: str, error: str) -> BrokenPlugin:
        name = _plugin_label(self.pm, plugin)
        target = plugin.__name__ if isinstance(plugin, types.ModuleType) else _plugin_label(self.pm, plugin)
        return BrokenPlugin(name, target, source, error)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Registered]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> type:
        try:
            return self._entries[kind][name].cls
        except KeyError:
            for broken in self.broken:
                if broken.name == name:
                    raise PluginError(broken.line()) from None
            close = difflib.get_close_matches(name, self.names(kind), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(self.names(kind)) or "none"
            # The name may belong to a plugin that did not load: say so rather than only "unknown".
            also = "".join(f"; {b.line()}" for b in self.broken)
            raise PluginError(f"unknown {kind[:-1]} {name!r}{hint} (known: {known}){also}") from None

    def harmonizer(self, name: str) -> type:
        return self.get("harmonizers", name)

    def evaluator(self, name: str) -> type:
        return self.get("evaluators", name)

    def dataset(self, name: str) -> type:
        return self.get("datasets", name)

    def plugins(self) -> list[tuple[str, str]]:
        """(plugin name, distribution and version) for every loaded plugin."""
        dists = _distributions(self.pm)
        out = []
        for _, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            out.append((_plugin_label(self.pm, plugin), dists.get(id(plugin), "(not installed as a distribution)")))
        return sorted(out)
