"""Suite files: which dataset, protocol, harmonizers and evaluators a run uses.

A suite is TOML::

    [suite]
    name = "default"
    seed = 0
    harmonizers = ["identity", "histogram", "ssimh"]
    evaluators = ["wasserstein", "paired", "volume"]
    seeds = [0, 1, 2]                 # optional: fit seeds of stochastic methods (default: [seed])
    baselines = ["identity"]          # optional: every method's paired difference against these

    [dataset]            # a registered dataset name, or a path to a BIDS folder / manifest
    name = "harmbench-sim"
    profile = "quick"    # other keys are passed to the dataset as parameters

    [protocol]           # all optional: defaults come from the dataset
    target_site = "siemens-3t-mprage"
    unseen_sites = ["ge-1.5t-spgr"]
    n_test_subjects = 4

    [harmonizers.histogram-site]   # a labelled variant: plugin + parameters
    plugin = "histogram"
    standard = "site"
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from harmbench.errors import ConfigError

DEFAULT_SUITE = "default"


@dataclass(frozen=True)
class Component:
    """A harmonizer or evaluator as the suite names it: label, plugin and parameters."""

    label: str
    plugin: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str = DEFAULT_SUITE
    seed: int = 0
    dataset: str = "harmbench-sim"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    target_site: str | None = None
    unseen_sites: tuple[str, ...] | None = None
    n_test_subjects: int | None = None
    harmonizers: tuple[Component, ...] = ()
    evaluators: tuple[Component, ...] = ()
    device: str = "cpu"
    cell_timeout_s: float | None = None
    #: Add the reference row: the scan-rescan ceiling (each test subject's target-site rescan scored as the
    #: output), or the oracle (the target-site scan itself) where the data has no rescans.
    oracle: bool = True
    #: Fit seeds for stochastic harmonizers (``meta.stochastic``): each is fitted once per seed and the
    #: leaderboard averages them and shows the between-seed spread. Empty: the suite's ``seed`` only.
    seeds: tuple[int, ...] = ()
    #: Harmonizers every method is compared with (paired differences, Holm-corrected tests).
    baselines: tuple[str, ...] = ()
    #: Where the suite came from (a file path, ``<built-in NAME suite>``, or empty); error messages name it.
    source: str = field(default="", compare=False)

    @property
    def fit_seeds(self) -> tuple[int, ...]:
        """The seeds a stochastic harmonizer is fitted with (deterministic ones use ``seed`` alone)."""
        return self.seeds or (self.seed,)

    def replace(self, **changes: Any) -> Suite:
        return dataclasses.replace(self, **changes)

    def to_toml(self) -> str:
        """The resolved suite, byte-stable, loadable by `load_suite`."""
        doc: dict[str, Any] = {
            "suite": {
                "name": self.name,
                "seed": self.seed,
                "harmonizers": [c.label for c in self.harmonizers],
                "evaluators": [c.label for c in self.evaluators],
                "device": self.device,
                "oracle": self.oracle,
                **({"seeds": list(self.seeds)} if self.seeds else {}),
                **({"baselines": list(self.baselines)} if self.baselines else {}),
            },
            "dataset": {"name": self.dataset, **self.dataset_params},
        }
        if self.cell_timeout_s is not None:
            doc["suite"]["cell_timeout_s"] = self.cell_timeout_s
        protocol = {
            k: v
            for k, v in (
                ("target_site", self.target_site),
                ("unseen_sites", list(self.unseen_sites) if self.unseen_sites is not None else None),
                ("n_test_subjects", self.n_test_subjects),
            )
            if v is not None
        }
        if protocol:
            doc["protocol"] = protocol
        for kind in ("harmonizers", "evaluators"):
            tables = {
                c.label: {**({"plugin": c.plugin} if c.plugin != c.label else {}), **c.params}
                for c in getattr(self, kind)
                if c.params or c.plugin != c.label
            }
            if tables:
                doc[kind] = tables
        return tomli_w.dumps(doc)


def _describe(value: Any) -> str:
    kind = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    return f"{kind.get(type(value), type(value).__name__)} ({value!r})"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: [table] → key → (check, what the value must be). Every key a suite may hold is listed here.
_FIELDS: dict[str, dict[str, tuple[Any, str]]] = {
    "suite": {
        "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
        "harmonizers": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
        "evaluators": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
        "device": (lambda v: isinstance(v, str) and v.strip() != "", "a device string such as 'cpu' or 'cuda'"),
        "cell_timeout_s": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
        "oracle": (lambda v: isinstance(v, bool), "true or false"),
        "seeds": (
            lambda v: (
                isinstance(v, list)
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
                and len(set(v)) == len(v)
            ),
            "a list of distinct non-negative integers",
        ),
        "baselines": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    },
    "protocol": {
        "target_site": (lambda v: isinstance(v, str) and v != "", "a site name (string)"),
        "unseen_sites": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of site names"),
        "n_test_subjects": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    },
    "dataset": {
        "name": (lambda v: isinstance(v, str) and v != "", "a dataset name or a path (string)"),
    },
}


def _check_table(doc: dict[str, Any], table: str, where: str, *, open_keys: bool = False) -> dict[str, Any]:
    """The table's contents after checking each known key's type; an unknown key is an error unless
    ``open_keys`` (the dataset table passes its other keys on to the dataset as parameters)."""
    value = doc.get(table, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{table}] must be a table, got {_describe(value)}")
    fields = _FIELDS[table]
    for key, item in value.items():
        if key not in fields:
            if open_keys:
                continue
            raise ConfigError(f"{where}: unknown [{table}] key {key!r} (known: {', '.join(fields)})")
        check, expected = fields[key]
        if not check(item):
            hint = ' (write a list: ["..."])' if isinstance(item, str) and expected.startswith("a list") else ""
            raise ConfigError(f"{where}: [{table}] {key} must be {expected}, got {_describe(item)}{hint}")
    return dict(value)


def _components(kind: str, labels: list[str], tables: Any, where: str) -> tuple[Component, ...]:
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: [{kind}] must be a table of tables, got {_describe(tables)}")
    out = []
    for label, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{kind}] {label} must be a table ([{kind}.{label}]), got {_describe(table)}")
        plugin = table.get("plugin", label)
        if not isinstance(plugin, str) or not plugin:
            raise ConfigError(f"{where}: [{kind}.{label}] plugin must be a name (string), got {_describe(plugin)}")
    for label in labels:
        params = dict(tables.get(label, {}))
        plugin = params.pop("plugin", label)
        out.append(Component(label=label, plugin=plugin, params=params))
    unknown = sorted(set(tables) - set(labels))
    if unknown:
        raise ConfigError(f"{where}: [{kind}.{unknown[0]}] configures a {kind[:-1]} not listed in [suite] {kind}")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"{where}: [suite] {kind} lists {twice[0]!r} twice")
    return tuple(out)


def parse_suite(doc: dict[str, Any], where: str) -> Suite:
    """Check every table and key of a parsed suite file (types, unknown keys) and build the `Suite`.

    Errors are one line naming ``where``, the table and the key; plugin parameters are checked later, by the
    plugins themselves, when the runner instantiates them before any compute (`harmbench.runner.Runner`).
    """
    known = {"suite", "dataset", "protocol", "harmonizers", "evaluators"}
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{where}: unknown table [{extra[0]}] (known: {', '.join(sorted(known))})")
    head = _check_table(doc, "suite", where)
    dataset = _check_table(doc, "dataset", where, open_keys=True)
    protocol = _check_table(doc, "protocol", where)
    unseen = protocol.get("unseen_sites")
    unknown_baselines = [b for b in head.get("baselines", []) if b not in head.get("harmonizers", [])]
    if unknown_baselines:
        raise ConfigError(f"{where}: [suite] baselines names {unknown_baselines[0]!r}, not one of its harmonizers")
    return Suite(
        name=head.get("name", Path(where).stem),
        seed=head.get("seed", 0),
        dataset=dataset.pop("name", "harmbench-sim"),
        dataset_params=dataset,
        target_site=protocol.get("target_site"),
        unseen_sites=tuple(unseen) if unseen is not None else None,
        n_test_subjects=protocol.get("n_test_subjects"),
        harmonizers=_components("harmonizers", head.get("harmonizers", []), doc.get("harmonizers", {}), where),
        evaluators=_components("evaluators", head.get("evaluators", []), doc.get("evaluators", {}), where),
        device=head.get("device", "cpu"),
        cell_timeout_s=float(head["cell_timeout_s"]) if "cell_timeout_s" in head else None,
        oracle=head.get("oracle", True),
        seeds=tuple(head.get("seeds", ())),
        baselines=tuple(head.get("baselines", ())),
        source=where,
    )


def builtin_suites() -> list[str]:
    """Names of the suites shipped with harmbench (``harmbench run <name>`` runs one)."""
    folder = resources.files("harmbench").joinpath("suites")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_suite(path: str | Path | None = None) -> Suite:
    """Read a suite file, or a built-in suite by name; ``None`` gives the built-in default suite."""
    if path is None:
        path_name = DEFAULT_SUITE
    else:
        path_name = str(path)
    if path is None or (not Path(path_name).exists() and path_name in builtin_suites()):
        text = resources.files("harmbench").joinpath("suites", f"{path_name}.toml").read_text()
        where = f"<built-in {path_name} suite>"
    else:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: suite file not found (built-in suites: {', '.join(builtin_suites())})")
        text = path.read_text()
        where = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML ({exc})") from exc
    return parse_suite(doc, where)


def components_from_names(names: str, kind: str) -> tuple[Component, ...]:
    """``"a,b"`` from the command line → components with default parameters."""
    labels = [n.strip() for n in names.split(",") if n.strip()]
    if not labels:
        raise ConfigError(f"--{kind} needs at least one name")
    return tuple(Component(label=n, plugin=n) for n in labels)
