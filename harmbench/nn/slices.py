"""2-D (and 2.5-D) slice pieces shared by the slice-based deep harmonizers.

Slice-based methods (BlindHarmony, MURD, CycleGAN) train on 2-D slices of the 3-D volumes and harmonize a
volume slice by slice. What they share lives here, so that each plugin only holds its method:

- :func:`volume_slices` cuts a volume into slices along one axis, optionally with ``context`` neighbouring
  slices on each side as extra channels (2.5-D input, as MURD uses three adjacent slices); slices past the
  ends of the volume repeat the edge slice;
- :class:`SliceSampler` draws random training batches of brain-containing slices from a set of volumes,
  from a caller's ``torch.Generator`` (no global random state), optionally restricted to some volumes
  (e.g. one site's);
- :func:`pad_to_multiple_2d` / :func:`crop_2d` zero-pad the two in-plane axes to a multiple of
  ``2**levels`` for an encoder–decoder and crop back;
- :func:`predict_volume` runs a slice-to-slice function over a whole volume in batches and reassembles
  the volume, which is how every slice-based method transforms.

Axis convention: volumes are (x, y, z) arrays in the common space; ``axis=2`` (the default) cuts axial
slices of shape (x, y).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "SliceSampler",
    "crop_2d",
    "pad_to_multiple_2d",
    "predict_volume",
    "volume_slices",
]


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")


def volume_slices(volume: np.ndarray | torch.Tensor, axis: int = 2, context: int = 0) -> torch.Tensor:
    """A (X, Y, Z) volume → (n_slices, 2·context + 1, H, W) float32 slices along ``axis``.

    Channel ``context`` is the slice itself, channels before and after it its neighbours in order; a
    neighbour outside the volume repeats the first / last slice (edge replication).
    """
    _check_axis(axis)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context!r}")
    if isinstance(volume, np.ndarray):
        volume = np.asarray(volume, dtype=np.float32)
        if not volume.flags.writeable:  # a runner-given scan is read-only; torch would warn about sharing it
            volume = volume.copy()
    t = torch.as_tensor(volume)
    if t.dim() != 3:
        raise ValueError(f"expected a 3-D volume, got shape {tuple(t.shape)}")
    t = t.float().movedim(axis, 0)  # (n, H, W)
    n = t.shape[0]
    index = torch.arange(n)[:, None] + torch.arange(-context, context + 1)[None, :]
    return t[index.clamp(0, n - 1)].contiguous()  # (n, C, H, W)


def _stack_volumes(volumes: Sequence[np.ndarray], axis: int, context: int) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in volumes}
    if len(shapes) != 1:
        raise ValueError(f"volumes must share one shape, got {sorted(shapes)}")
    return torch.stack([volume_slices(v, axis, context) for v in volumes])  # (V, n, C, H, W)


class SliceSampler:
    """Random batches of 2-D (2.5-D) slices that contain brain, from a fixed set of volumes.

    ``volumes`` and ``masks`` are equally shaped (X, Y, Z) arrays (already normalised by the caller);
    a slice is eligible when at least ``min_brain_fraction`` of its pixels are brain (the centre slice's
    mask). ``sample`` draws ``batch_size`` eligible slices uniformly (with replacement) from all volumes,
    or from the volumes in ``among`` only, and returns ``(x, mask, volume_index)``: ``x`` is (B, C, H, W)
    with ``C = 2·context + 1``, ``mask`` (B, 1, H, W) the centre slice's brain mask, ``volume_index``
    (B,) which volume each slice came from. With ``multiple`` > 1 both are zero-padded in-plane to
    multiples of it.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        axis: int = 2,
        context: int = 0,
        min_brain_fraction: float = 0.05,
        multiple: int = 1,
    ) -> None:
        if not volumes:
            raise ValueError("SliceSampler needs at least one volume")
        if len(volumes) != len(masks):
            raise ValueError(f"{len(volumes)} volumes but {len(masks)} masks")
        _check_axis(axis)
        self.axis, self.context, self.multiple = axis, context, multiple
        self.slices = _stack_volumes(volumes, axis, context)  # (V, n, C, H, W)
        self.masks = _stack_volumes([np.asarray(m, dtype=np.float32) for m in masks], axis, 0)  # (V, n, 1, H, W)
        fraction = self.masks.mean(dim=(2, 3, 4))  # (V, n)
        self.eligible = fraction >= float(min_brain_fraction)
        empty = [i for i in range(len(volumes)) if not bool(self.eligible[i].any())]
        if empty:
            raise ValueError(
                f"volume(s) {empty} have no slice with a brain fraction >= {min_brain_fraction:g} along axis {axis}"
            )
        self._pairs = [torch.nonzero(self.eligible[i]).flatten() for i in range(len(volumes))]

    @property
    def n_volumes(self) -> int:
        return int(self.slices.shape[0])

    @property
    def channels(self) -> int:
        return int(self.slices.shape[2])

    def sample(
        self, batch_size: int, generator: torch.Generator, among: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool = torch.as_tensor(list(range(self.n_volumes)) if among is None else list(among), dtype=torch.long)
        if pool.numel() == 0:
            raise ValueError("sample(among=...) needs at least one volume")
        vol = pool[torch.randint(0, pool.numel(), (int(batch_size),), generator=generator)]
        picks = []
        for v in vol.tolist():
            candidates = self._pairs[v]
            picks.append(int(candidates[int(torch.randint(0, candidates.numel(), (1,), generator=generator))]))
        index = torch.tensor(picks, dtype=torch.long)
        x, m = self.slices[vol, index], self.masks[vol, index]
        if self.multiple > 1:
            x, _ = pad_to_multiple_2d(x, self.multiple)
            m, _ = pad_to_multiple_2d(m, self.multiple)
        return x, m, vol


def pad_to_multiple_2d(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Zero-pad the last two axes of ``x`` to multiples of ``multiple`` (split evenly, the odd voxel after).

    Returns the padded tensor and the two slices that crop it back (:func:`crop_2d`).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    pads, crops = [], []
    for size in x.shape[-2:]:
        total = (-size) % multiple
        before = total // 2
        pads.append((before, total - before))
        crops.append(slice(before, before + size))
    if any(sum(p) for p in pads):
        x = F.pad(x, (*pads[1], *pads[0]))
    return x, (crops[0], crops[1])


def crop_2d(x: torch.Tensor, crops: tuple[slice, slice]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple_2d` on the last two axes."""
    return x[..., crops[0], crops[1]]


def predict_volume(
    fn: Callable[[torch.Tensor], torch.Tensor],
    volume: np.ndarray,
    *,
    axis: int = 2,
    context: int = 0,
    batch_size: int = 16,
    multiple: int = 1,
    device: torch.device | str = "cpu",
    slice_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``fn`` ((B, C, H, W) → (B, 1, H, W)) to every slice of ``volume`` and reassemble the volume.

    Slices go through ``fn`` in batches of ``batch_size``, padded in-plane to ``multiple`` and cropped
    back. With ``slice_mask`` (a boolean per slice along ``axis``) only those slices are computed and
    the others are returned as the input's centre slice unchanged (e.g. slices without brain). Returns a
    float32 array of the volume's shape. ``fn`` is called under ``torch.no_grad``.
    """
    slices = volume_slices(volume, axis, context)
    n = slices.shape[0]
    out = slices[:, context : context + 1].clone()
    todo = torch.arange(n) if slice_mask is None else torch.nonzero(torch.as_tensor(slice_mask)).flatten()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with torch.no_grad():
        for start in range(0, todo.numel(), int(batch_size)):
            idx = todo[start : start + int(batch_size)]
            x, crops = pad_to_multiple_2d(slices[idx].to(device), multiple)
            y = fn(x)
            if y.dim() != 4 or y.shape[1] != 1:
                raise ValueError(f"the slice function must return (B, 1, H, W), got {tuple(y.shape)}")
            out[idx] = crop_2d(y, crops).float().cpu()
    return out[:, 0].movedim(0, axis).contiguous().numpy().astype(np.float32, copy=False)
