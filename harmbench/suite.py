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


def _components(kind: str, labels: Any, tables: Any, where: str) -> tuple[Component, ...]:
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{where}: [suite] {kind} must be a list of names")
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: [{kind}] must be a table of tables")
    out = []
    for label in labels:
        params = dict(tables.get(label, {}))
        plugin = params.pop("plugin", label)
        out.append(Component(label=label, plugin=plugin, params=params))
    unknown = sorted(set(tables) - set(labels))
    if unknown:
        raise ConfigError(f"{where}: [{kind}.{unknown[0]}] configures a {kind[:-1]} not listed in [suite] {kind}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: [suite] {kind} lists a name twice")
    return tuple(out)


def parse_suite(doc: dict[str, Any], where: str) -> Suite:
    known = {"suite", "dataset", "protocol", "harmonizers", "evaluators"}
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{where}: unknown table [{extra[0]}] (known: {', '.join(sorted(known))})")
    head = dict(doc.get("suite", {}))
    dataset = dict(doc.get("dataset", {}))
    protocol = dict(doc.get("protocol", {}))
    unknown_protocol = sorted(set(protocol) - {"target_site", "unseen_sites", "n_test_subjects"})
    if unknown_protocol:
        raise ConfigError(f"{where}: unknown [protocol] key {unknown_protocol[0]!r}")
    known_head = {
        "name",
        "seed",
        "seeds",
        "baselines",
        "harmonizers",
        "evaluators",
        "device",
        "cell_timeout_s",
        "oracle",
    }
    unknown_head = sorted(set(head) - known_head)
    if unknown_head:
        raise ConfigError(f"{where}: unknown [suite] key {unknown_head[0]!r}")
    seed = head.get("seed", 0)
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{where}: [suite] seed must be a non-negative integer")
    oracle = head.get("oracle", True)
    if not isinstance(oracle, bool):
        raise ConfigError(f"{where}: [suite] oracle must be true or false")
    seeds = head.get("seeds", [])
    if (
        not isinstance(seeds, list)
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{where}: [suite] seeds must be a list of distinct non-negative integers")
    baselines = head.get("baselines", [])
    if not isinstance(baselines, list) or not all(isinstance(x, str) for x in baselines):
        raise ConfigError(f"{where}: [suite] baselines must be a list of harmonizer names")
    unknown_baselines = sorted(set(baselines) - set(head.get("harmonizers", [])))
    if unknown_baselines:
        raise ConfigError(f"{where}: baseline {unknown_baselines[0]!r} is not one of the suite's harmonizers")
    unseen = protocol.get("unseen_sites")
    return Suite(
        name=str(head.get("name", Path(where).stem)),
        seed=seed,
        dataset=str(dataset.pop("name", "harmbench-sim")),
        dataset_params=dataset,
        target_site=protocol.get("target_site"),
        unseen_sites=tuple(unseen) if unseen is not None else None,
        n_test_subjects=protocol.get("n_test_subjects"),
        harmonizers=_components("harmonizers", head.get("harmonizers", []), doc.get("harmonizers", {}), where),
        evaluators=_components("evaluators", head.get("evaluators", []), doc.get("evaluators", {}), where),
        device=str(head.get("device", "cpu")),
        cell_timeout_s=head.get("cell_timeout_s"),
        oracle=oracle,
        seeds=tuple(seeds),
        baselines=tuple(baselines),
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
