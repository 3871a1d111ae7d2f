"""Plugin discovery: a pluggy manager factory and name → class registries.

Built-in plugins and third-party ones are found the same way: through the
``harmbench`` entry-point group. Nothing is loaded at import time.
"""

from __future__ import annotations

import difflib
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


def get_plugin_manager(
    *, load_entrypoints: bool = True, extra_plugins: Iterable[Any] = (), disabled: Iterable[str] | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager with the hookspecs, entry-point plugins and ``extra_plugins``.

    ``disabled`` defaults to the names in ``$HARMBENCH_DISABLE_PLUGINS``.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    if disabled is None:
        disabled = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
    for name in disabled:
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
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
    return {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}


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

    Two plugins registering the same name is an error naming both sources.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()
        self._entries: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        dists = _distributions(self.pm)
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"harmbench_register_{kind}")
            # hookimpls are called one by one so each class can be traced to its plugin
            for impl in reversed(hook.get_hookimpls()):
                plugin_name = _plugin_label(self.pm, impl.plugin)
                source = dists.get(id(impl.plugin), "(not installed as a distribution)")
                for cls in impl.function() or []:
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

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Registered]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> type:
        try:
            return self._entries[kind][name].cls
        except KeyError:
            close = difflib.get_close_matches(name, self.names(kind), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(self.names(kind)) or "none"
            raise PluginError(f"unknown {kind[:-1]} {name!r}{hint} (known: {known})") from None

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
