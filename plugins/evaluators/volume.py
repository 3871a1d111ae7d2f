"""Anatomy preservation: relative absolute tissue-volume differences (rAVD) against the true anatomy.

Reference:
    Parida A, et al. Harmonization across imaging locations (HAIL): one-shot
    learning for brain MRI. arXiv:2308.11047, 2023 (rAVD of GM, WM).

One fixed segmenter (`harmbench_plugins.evaluators._tissue`, a per-image
3-class Gaussian mixture, CSF < GM < WM) is applied identically to every image.
Being refitted to each image, it ignores any increasing affine intensity change:
these metrics score anatomy (tissue contrast, boundaries, noise), not intensity
scale. ``V(x)_k`` is the voxel count of tissue ``k`` (the voxel size cancels in
every ratio). For tissue ``k`` in CSF, GM, WM:

- ``ravd_k_gt = |V(seg(pred))_k − V(gt)_k| / V(gt)_k × 100`` (%), against the
  subject's ground-truth labels (``case.input.labels``; a traveling subject's
  anatomy is the same at every site); NaN where the data has no labels. The
  leaderboard's *anatomy* axis is ``ravd_gm_gt`` and ``ravd_wm_gt`` (averaged by
  the board); CSF, a few per cent of a T1w brain and the segmenter's weakest
  class, is shown but not on the axis. Its floor is the segmenter's own error:
  even the target scan itself scores above 0 (the rescan ceiling row shows it).
- ``ravd_k_target = |V(seg(pred))_k − V(seg(target))_k| / V(seg(target))_k × 100``
  (%), against the same segmenter applied to the same subject's target-site scan
  (``case.target``): the anatomy reference for data without labels; a perfect
  harmonization scores 0. NaN without a target scan.
- ``ravd_k = |V(seg(pred))_k − V(seg(input))_k| / V(seg(input))_k × 100`` (%):
  HAIL's figure, how much harmonization changed the *measured* anatomy.
  Informational, never ranked: identity scores 0 by construction, and a correct
  harmonization (to a site whose contrast the segmenter reads differently)
  scores above 0, so it cannot tell good from bad.

A zero reference volume gives NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from joblib import delayed

from harmbench import hookimpl
from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator
from harmbench.data.scan import TISSUES, Scan, array_digest
from harmbench.parallel import check_jobs, worker_pool

from ._tissue import brain_volumes, tissue_volumes

#: Tissues whose ``ravd_<k>_gt`` stands for the anatomy axis (see the module docstring).
AXIS_TISSUES = ("gm", "wm")


def ravd(volume: float, reference_volume: float) -> float:
    """Relative absolute volume difference in percent; NaN when the reference volume is 0."""
    if reference_volume <= 0:
        return math.nan
    return abs(volume - reference_volume) / reference_volume * 100.0


def _specs() -> tuple[MetricSpec, ...]:
    specs = [
        MetricSpec(
            f"ravd_{name}_gt",
            higher_is_better=False,
            unit="%",
            ideal=0.0,
            main=name in AXIS_TISSUES,
            axis="anatomy" if name in AXIS_TISSUES else None,
            description=f"|V(seg(pred)) - V(ground truth)| / V(ground truth) x 100 for {name}, fixed per-image "
            "GMM segmenter",
        )
        for name in TISSUES.values()
    ]
    specs += [
        MetricSpec(
            f"ravd_{name}_target",
            higher_is_better=False,
            unit="%",
            ideal=0.0,
            main=False,
            description=f"|V(seg(pred)) - V(seg(target))| / V(seg(target)) x 100 for {name}: vs the same subject's "
            "target-site scan, same segmenter (for data without labels)",
        )
        for name in TISSUES.values()
    ]
    specs += [
        MetricSpec(
            f"ravd_{name}",
            higher_is_better=None,
            ideal=None,
            unit="%",
            main=False,
            description=f"|V(seg(pred)) - V(seg(input))| / V(seg(input)) x 100 for {name} (HAIL's; informational: "
            "identity = 0 by construction)",
        )
        for name in TISSUES.values()
    ]
    return tuple(specs)


class VolumeEvaluator(PerScanEvaluator):
    """rAVD of CSF, GM, WM against ground truth, the target-site scan and (HAIL's) the input (Parida et al.,
    arXiv 2308.11047), with one fixed per-image GMM segmenter.

    Parameter: ``n_jobs``, worker processes for the per-image tissue fits (`harmbench.parallel.worker_pool`;
    None: the run's thread budget); the scores do not depend on it.
    """

    name = "volume"
    version = "2.0"
    metrics = _specs()

    def __init__(self, n_jobs: int | None = None) -> None:
        self.n_jobs = n_jobs

    def _validate(self) -> None:
        check_jobs(self.name, self.n_jobs)

    def _memo(self) -> dict[str, dict[int, int]]:
        return self.__dict__.setdefault("_volumes", {})

    def _segmented_volumes(self, data: np.ndarray, brain: np.ndarray) -> dict[int, int]:
        """Tissue volumes of one image, remembered by content: every harmonizer's cell of a scenario shares its
        inputs and targets, and identity returns its input (the segmenter is a fixed function of the image)."""
        key = array_digest(data, brain)
        memo = self._memo()
        if key not in memo:
            memo[key] = brain_volumes(data[brain])
        return dict(memo[key])

    def evaluate(self, cases: Sequence[EvalCase]) -> list[dict[str, Any]]:
        # The images not yet segmented are fitted first, in worker processes; the per-scan loop then reads them
        # from the memo.
        self._validate()
        memo = self._memo()
        todo: dict[str, Scan] = {}
        for case in cases:
            for scan in (case.output, case.input, case.target):
                if scan is not None:
                    key = array_digest(scan.data, scan.brain)
                    if key not in memo:
                        todo.setdefault(key, scan)
        # a worker gets the brain's intensities only, about a quarter of the volume at the default profile
        fitted = worker_pool(self.n_jobs, len(todo))(delayed(brain_volumes)(s.data[s.brain]) for s in todo.values())
        memo.update(zip(todo, fitted, strict=True))
        return super().evaluate(cases)

    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        v_pred = self._segmented_volumes(case.output.data, case.output.brain)
        v_in = self._segmented_volumes(case.input.data, case.input.brain)
        gt = case.input.labels
        v_gt = tissue_volumes(np.asarray(gt, dtype=np.uint8)) if gt is not None else None
        target = case.target
        v_target = self._segmented_volumes(target.data, target.brain) if target is not None else None
        values: dict[str, float] = {}
        for label, name in TISSUES.items():
            values[f"ravd_{name}_gt"] = ravd(v_pred[label], v_gt[label]) if v_gt is not None else math.nan
            values[f"ravd_{name}_target"] = ravd(v_pred[label], v_target[label]) if v_target is not None else math.nan
            values[f"ravd_{name}"] = ravd(v_pred[label], v_in[label])
        return values


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [VolumeEvaluator]
