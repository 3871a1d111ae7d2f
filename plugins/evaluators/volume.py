"""Anatomy preservation of HAIL: relative absolute tissue-volume differences (rAVD).

Reference:
    Parida A, et al. Harmonization across imaging locations (HAIL): one-shot
    learning for brain MRI. arXiv:2308.11047, 2023 (rAVD of GM, WM).

One fixed segmenter (`harmbench_plugins.evaluators._tissue`, a per-image
3-class Gaussian mixture, CSF < GM < WM) is applied identically to the input
and to the prediction. For tissue ``k``:

- ``ravd_k = |V(seg(pred))_k − V(seg(input))_k| / V(seg(input))_k × 100`` (%):
  how much harmonization changed the measured anatomy; identity gives 0.
- ``ravd_k_gt = |V(seg(pred))_k − V(gt)_k| / V(gt)_k × 100`` (%), against the
  input's ground-truth labels (1 CSF, 2 GM, 3 WM); NaN when there are none.

Volumes are voxel counts (the voxel size cancels in the ratio). A zero
denominator gives NaN.
"""

from __future__ import annotations

import math

import numpy as np

from harmbench import hookimpl
from harmbench.api import EvalCase, MetricSpec, PerScanEvaluator
from harmbench.data.scan import TISSUES

from ._tissue import segment, tissue_volumes


def ravd(volume: float, reference_volume: float) -> float:
    """Relative absolute volume difference in percent; NaN when the reference volume is 0."""
    if reference_volume <= 0:
        return math.nan
    return abs(volume - reference_volume) / reference_volume * 100.0


def _specs() -> tuple[MetricSpec, ...]:
    specs = [
        MetricSpec(
            f"ravd_{name}",
            higher_is_better=False,
            unit="%",
            ideal=0.0,
            description=f"|V(seg(pred)) - V(seg(input))| / V(seg(input)) x 100 for {name}, fixed GMM segmenter",
        )
        for name in TISSUES.values()
    ]
    specs += [
        MetricSpec(
            f"ravd_{name}_gt",
            higher_is_better=False,
            unit="%",
            ideal=0.0,
            main=False,
            description=f"|V(seg(pred)) - V(ground truth)| / V(ground truth) x 100 for {name}",
        )
        for name in TISSUES.values()
    ]
    return tuple(specs)


class VolumeEvaluator(PerScanEvaluator):
    """HAIL's rAVD for CSF, GM and WM with one fixed per-image GMM segmenter (Parida et al., arXiv 2308.11047)."""

    name = "volume"
    version = "1.0"
    metrics = _specs()

    def __init__(self) -> None:
        pass

    def evaluate_scan(self, case: EvalCase) -> dict[str, float]:
        v_in = tissue_volumes(segment(case.input.data, case.input.brain))
        v_pred = tissue_volumes(segment(case.output.data, case.output.brain))
        gt = case.input.labels
        v_gt = tissue_volumes(np.asarray(gt, dtype=np.uint8)) if gt is not None else None
        values: dict[str, float] = {}
        for label, name in TISSUES.items():
            values[f"ravd_{name}"] = ravd(v_pred[label], v_in[label])
            values[f"ravd_{name}_gt"] = ravd(v_pred[label], v_gt[label]) if v_gt is not None else math.nan
        return values


@hookimpl
def harmbench_register_evaluators() -> list[type]:
    return [VolumeEvaluator]
