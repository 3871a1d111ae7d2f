"""Shared fixtures: tiny simulated data (seeded) and a third-party plugin package built on the fly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from harmbench.data.scan import Cohort, Scan
from harmbench.data.sim import simulate_cohort
from harmbench.protocol import SplitData, make_split
from harmbench.suite import Component, Suite

#: Small enough that a whole suite runs in seconds: 8 mm voxels, 8 subjects at every default site.
TINY_DATASET = {"profile": "quick", "n_subjects": 8, "voxel_mm": 8}


@pytest.fixture(scope="session")
def tiny_cohort() -> Cohort:
    """Six subjects, each at every simulated site, 8 mm voxels; read-only, as the runner hands scans to plugins,
    so a plugin test fails where the plugin writes into its input."""
    return simulate_cohort("quick", seed=0, n_subjects=6, voxel_mm=8).read_only()


class TinySplit(NamedTuple):
    train: Cohort
    target: str
    reference: Scan
    tests: list[Scan]


@pytest.fixture(scope="session")
def tiny_split(tiny_cohort: Cohort) -> TinySplit:
    """The protocol applied to `tiny_cohort`: unpaired training scans, the reference, seen-site test scans."""
    sites = tiny_cohort.sites
    data = SplitData(make_split(tiny_cohort, sites[0], sites[-2:], n_test_subjects=2, seed=0), tiny_cohort)
    return TinySplit(data.train, data.target_site, data.reference, data.scenario_scans("seen"))


def tiny_suite(harmonizers=("identity", "histogram", "ssimh"), evaluators=("wasserstein", "paired", "volume"), **kw):
    return Suite(
        name="tiny",
        seed=0,
        dataset="harmbench-sim",
        dataset_params=dict(TINY_DATASET),
        harmonizers=tuple(Component(h, h) for h in harmonizers),
        evaluators=tuple(Component(e, e) for e in evaluators),
        **kw,
    )


THIRDPARTY_MODULE = '''
"""A method published outside harmbench, found through its `harmbench` entry point."""
import time

import numpy as np

from harmbench import Harmonizer, Meta, hookimpl


class MedianScale(Harmonizer):
    """Scales brain intensities so their median matches the target site's training median."""

    meta = Meta(name="thirdparty-scale", version="1.0", citation="none")

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def fit(self, train, target_site, reference=None, *, rng=None):
        values = np.concatenate([s.brain_values() for s in train.by_site(target_site)])
        self.target_median_ = np.array(np.median(values))
        self.fitted_ = True
        return self

    def transform(self, scan, reference=None):
        self.check_is_fitted()
        time.sleep(self.delay_s)
        factor = float(self.target_median_) / float(np.median(scan.brain_values()))
        return scan.with_data(scan.data * factor)

    def get_state(self):
        return {"target_median": self.target_median_}

    def set_state(self, state):
        self.target_median_ = np.asarray(state["target_median"])
        return self


class Slow(MedianScale):
    meta = Meta(name="thirdparty-slow", version="1.0", citation="none")

    def __init__(self, delay_s: float = 0.4):
        self.delay_s = delay_s


@hookimpl
def harmbench_register_harmonizers():
    return [MedianScale, Slow]
'''


@pytest.fixture(scope="session")
def thirdparty_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build and install (``pip install --target``) a separate distribution with a ``harmbench`` entry point.

    Returns the folder to put on PYTHONPATH; nothing in this repository names the package.
    """
    root = tmp_path_factory.mktemp("thirdparty")
    pkg = root / "src"
    (pkg / "harmbench_thirdparty_demo").mkdir(parents=True)
    (pkg / "harmbench_thirdparty_demo" / "__init__.py").write_text(THIRDPARTY_MODULE)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "harmbench-thirdparty-demo"
            version = "0.3.1"

            [project.entry-points.harmbench]
            thirdparty-demo = "harmbench_thirdparty_demo"

            [tool.setuptools]
            packages = ["harmbench_thirdparty_demo"]
            """
        )
    )
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(pkg),
        ],
        check=True,
        capture_output=True,
    )
    return site


def write_distribution(
    site: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]
) -> Path:
    """Lay out an installed distribution by hand in ``site`` (a folder for sys.path / PYTHONPATH): its modules
    and a ``.dist-info`` with METADATA and ``entry_points.txt``, which is all ``importlib.metadata`` and
    harmbench's plugin loader read. Much faster than a pip build, for tests that need many small packages."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[harmbench]\n{lines}")
    return site
