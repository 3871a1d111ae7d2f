"""``harmbench new-plugin NAME``: a ready-to-edit plugin package from the templates in ``harmbench/templates``.

The package is a separate distribution (``harmbench-NAME``) registering its class through the ``harmbench``
entry point, exactly as a published method would, with tests that run the conformance kit. A template is
plain text with ``{{key}}`` placeholders (docs/submitting.md walks through what to edit).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import harmbench
from harmbench.errors import ConfigError

KINDS = ("harmonizer", "evaluator")

#: A plugin name: what `harmbench list` shows and suites name; also the entry-point name.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_SUMMARIES = {
    "harmonizer": "A harmonization method for the harmbench benchmark",
    "evaluator": "An evaluation metric for the harmbench benchmark",
}


def _class_name(name: str, kind: str) -> str:
    return "".join(part.capitalize() for part in name.split("-")) + kind.capitalize()


def _render(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)


def package_files(name: str, kind: str = "harmonizer") -> dict[str, str]:
    """Relative path → content of the package ``harmbench new-plugin`` writes."""
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"plugin name {name!r} must be lower case letters, digits and single dashes, starting with a letter "
            "(e.g. my-method)"
        )
    module = "harmbench_" + name.replace("-", "_")
    values = {
        "name": name,
        "kind": kind,
        "module": module,
        "dist": f"harmbench-{name}",
        "class": _class_name(name, kind),
        "summary": _SUMMARIES[kind],
        "harmbench_version": harmbench.__version__,
    }
    templates = resources.files("harmbench").joinpath("templates")
    sources = {
        "pyproject.toml": templates / "common" / "pyproject.toml.tmpl",
        "README.md": templates / "common" / "README.md.tmpl",
        f"{module}/__init__.py": templates / kind / "module.py.tmpl",
        f"tests/test_{module}.py": templates / kind / "test_module.py.tmpl",
    }
    return {path: _render(source.read_text(encoding="utf-8"), values) for path, source in sources.items()}


def write_plugin_package(name: str, kind: str = "harmonizer", out: str | Path = ".") -> Path:
    """Write the package into ``out/harmbench-NAME`` and return that folder; refuses to overwrite."""
    files = package_files(name, kind)
    folder = Path(out) / f"harmbench-{name}"
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty; choose another --out or name")
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder
