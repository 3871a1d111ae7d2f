"""Speed and memory of `combat` on the standard profile, against neuroHarmonize's own NIfTI helpers.

Run with ``pytest -m benchmark --benchmark-enable tests/bench/test_bench_combat.py``. Both pipelines
fit on the same training scans (the protocol's unpaired split) and harmonize the same seen-site test
scans. ``combat`` starts from the scans in memory; the neuroHarmonize pipeline is its documented NIfTI
one: ``createMaskNIFTI`` → ``flattenNIFTIs`` → ``harmonizationLearn`` → ``applyModelNIFTIs`` (which
writes a ``*_harmonized.nii.gz`` and a ``*_reference_mean.nii.gz`` per scan). Peak memory is the peak
of Python/numpy allocations during the pipeline (``tracemalloc``, measured in a separate untimed run);
results go into the benchmark's ``extra_info``.

The target site is the alphabetically first seen site: neuroHarmonize 2.5.2's ``applyModelOne`` (used
by ``applyModelNIFTIs``) fails with an ``IndexError`` for any other reference batch.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from harmbench_plugins.harmonizers.combat import ComBatHarmonizer

from harmbench.data.scan import Scan
from harmbench.data.sim import simulate_cohort
from harmbench.protocol import SplitData, make_split

pytestmark = pytest.mark.benchmark

ROUNDS = 3


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cohort = simulate_cohort("standard", seed=0)
    sites = cohort.sites
    unseen = sites[len(sites) - len(sites) // 3 :]
    target = sorted(s for s in sites if s not in unseen)[0]
    data = SplitData(make_split(cohort, target, unseen, seed=0), cohort)
    train, tests = list(data.train), data.scenario_scans("seen")
    root = tmp_path_factory.mktemp("nifti")

    def write(scans: list[Scan], folder: str) -> list[str]:
        (root / folder).mkdir()
        paths = []
        for s in scans:
            path = root / folder / f"{s.key}.nii.gz"
            nib.save(nib.Nifti1Image(s.data, s.affine), path)
            paths.append(str(path))
        return paths

    return {
        "train": data.train,
        "target": target,
        "tests": tests,
        "train_paths": write(train, "train"),
        "test_paths": write(tests, "test"),
        "root": root,
    }


def _covars(scans: list[Scan]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "SITE": [s.site for s in scans],
            "age": [s.covariates["age"] for s in scans],
            "sex": [s.covariates["sex"] for s in scans],
        }
    )


@contextlib.contextmanager
def _peak_mb(into: dict) -> Iterator[None]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        into["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


def _run_plugin(d: dict, timing: dict) -> list[Scan]:
    import time

    start = time.perf_counter()
    h = ComBatHarmonizer().fit(d["train"], d["target"])
    timing["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    out = [h.transform(s) for s in d["tests"]]
    timing["transform_s"] = time.perf_counter() - start
    timing["voxels"] = int(h.combat_mask_.sum())
    return out


def _run_neuroharmonize(d: dict, timing: dict, run: int) -> None:
    import time

    from neuroHarmonize import harmonizationLearn
    from neuroHarmonize.harmonizationNIFTI import applyModelNIFTIs, createMaskNIFTI, flattenNIFTIs

    work: Path = d["root"] / f"nh{run}"
    work.mkdir()
    train_paths = pd.DataFrame({"PATH": d["train_paths"]})
    mask_path = str(work / "mask.nii.gz")
    start = time.perf_counter()
    createMaskNIFTI(train_paths, threshold=0.0, output_path=mask_path)
    data = flattenNIFTIs(train_paths, mask_path, output_path=str(work / "flat.npy"))
    model, _ = harmonizationLearn(data, _covars(list(d["train"])), eb=True, ref_batch=d["target"])
    timing["fit_s"] = time.perf_counter() - start
    timing["voxels"] = int(data.shape[1])
    del data
    test_paths = pd.DataFrame(
        {
            "PATH": d["test_paths"],
            "PATH_NEW": [str(work / Path(p).name.replace(".nii.gz", "_harmonized.nii.gz")) for p in d["test_paths"]],
        }
    )
    start = time.perf_counter()
    applyModelNIFTIs(_covars(d["tests"]), model, test_paths, mask_path)
    timing["transform_s"] = time.perf_counter() - start


def _bench(benchmark, run: Callable[[dict, int], None]) -> dict:
    rounds = iter(range(10**6))
    timings: list[dict] = []

    def once() -> None:
        timing: dict = {}
        run(timing, next(rounds))
        timings.append(timing)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    memory: dict = {}
    with _peak_mb(memory):
        run({}, next(rounds))
    info = {
        "fit_s_median": float(np.median([t["fit_s"] for t in timings])),
        "transform_s_median": float(np.median([t["transform_s"] for t in timings])),
        "peak_mb": memory["peak_mb"],
        "voxels": timings[0]["voxels"],
    }
    benchmark.extra_info.update(info)
    return info


def test_bench_combat_plugin(benchmark, standard):
    info = _bench(benchmark, lambda timing, _: _run_plugin(standard, timing))
    n_train, voxels = len(standard["train"]), info["voxels"]
    one_copy_mb = n_train * voxels * 8 / 2**20
    # the voxel matrix exists once in float64; model arrays and one site's standardized rows come on top
    assert info["peak_mb"] < 4 * one_copy_mb + 64, (info, one_copy_mb)


def test_bench_neuroharmonize_nifti_helpers(benchmark, standard):
    _bench(benchmark, lambda timing, run: _run_neuroharmonize(standard, timing, run))
    written = sorted(p.name for p in (standard["root"] / "nh0").glob("*.nii.gz"))
    assert any(name.endswith("_reference_mean.nii.gz") for name in written)
